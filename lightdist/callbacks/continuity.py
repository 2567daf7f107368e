"""Keep logs continuous across a resume: what was logged after the checkpoint is logged again."""

import lightning as L

from lightdist.loggers import ContinuingCSVLogger


class LogContinuity(L.Callback):
    """After a checkpoint is restored, tell the loggers which step training continues from.

    Lightning has no logger hook for "resumed at step N"; the restored step is known
    once the checkpoint is loaded, i.e. at on_train_start.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, ContinuingCSVLogger):
                logger.resume_from_step(step)
