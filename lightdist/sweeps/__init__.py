"""Hyperparameter sweeps: the Optuna search behind `hydra/sweeper=optuna`, k-fold runs, sweep summaries."""
