"""Hydra only instantiates plugins defined under the `hydra_plugins` package: this is where lightdist's
Optuna sweeper is registered. The search itself is lightdist.sweeps.optuna_search."""

from lightdist.sweeps.optuna_search import OptunaSearch


class OptunaSweeper(OptunaSearch):
    """`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml)."""
