"""Stop an Optuna trial early when the study's pruner finds it unpromising."""

import lightning as L


class OptunaPruning(L.Callback):
    """After each validation, rank 0 reports the optimised metric to the trial and asks the pruner;
    every rank receives the verdict, so all DDP ranks stop at the same step.

    Written here rather than taken from optuna-integration: its callback raises TrialPruned out of
    fit (the run then writes no summary and keeps no record of why it ended) and supports DDP only
    with database storage. Here a pruned run stops like an early-stopped one and says so in its
    summary, which the sweeper reads to tell the study.
    """

    def __init__(self, storage: str, study: str, trial_id: int, monitor: str):
        self.storage, self.study, self.trial_id, self.monitor = storage, study, trial_id, monitor
        self.pruned_at_step: int | None = None
        self._trial = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                if self._trial is None:
                    from lightdist.sweeps.study import load_trial

                    self._trial = load_trial(self.storage, self.study, self.trial_id)
                self._trial.report(float(value), step=trainer.global_step)
                prune = self._trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_step = trainer.global_step
            trainer.should_stop = True
