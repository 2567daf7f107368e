"""Hyperparameter sweeps: the Optuna search behind `hydra/sweeper=optuna`, k-fold runs, sweep summaries."""

# The override that picks a fold of k-fold cross-validation (a run's data.kfold.fold).
FOLD_KEY = "data.kfold.fold"
