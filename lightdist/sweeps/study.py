"""Where an Optuna study lives, shared by the sweeper (which asks and tells) and the pruning callback
inside each trial's run (which reports), possibly in another process or on another node."""

from pathlib import Path
from typing import Any


def open_storage(spec: str) -> Any:
    """A database URL (sqlite:///..., postgresql://...) or a journal file path (append-only, file-locked)."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    Path(spec).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(spec).expanduser())))


PRUNER_ATTR = "lightdist_pruner"


def make_pruner(spec: dict[str, Any] | None) -> Any:
    """{"name": none|median|hyperband, "n_startup_trials": .., "n_warmup_steps": ..} -> an Optuna pruner."""
    import optuna

    spec = spec or {}
    name = spec.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.get("n_startup_trials", 5),
                                           n_warmup_steps=spec.get("n_warmup_steps", 0))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def load_trial(storage: str, study: str, trial_id: int) -> Any:
    """The running trial `trial_id` of `study`, to report intermediate values to.

    Storages keep no pruner, so the sweeper records its pruner in the study's user attributes
    and the trial's run rebuilds the same one here.
    """
    import optuna

    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    loaded.pruner = make_pruner(loaded.user_attrs.get(PRUNER_ATTR))
    return optuna.trial.Trial(loaded, trial_id)
