"""Keep a run continuous across resumes and requeues: logs without duplicated steps, and a
record of where each segment of the run started and what it last saved."""

import socket
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from lightdist import run_dir as rd
from lightdist.compat import reopen_tensorboard
from lightdist.distributed.rank_states import gather
from lightdist.loggers import ContinuingCSVLogger


class RunContinuity(L.Callback):
    """After a checkpoint is restored, tell the loggers that training continues from it,
    and note where (and every checkpoint saved) in run.json's current segment.

    Lightning has no hook for "resumed at step N"; the restored state is known once the
    checkpoint is loaded, i.e. at on_train_start.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed = trainer.ckpt_path is not None
        step = trainer.global_step
        if resumed:
            for logger in trainer.loggers:
                if isinstance(logger, ContinuingCSVLogger):
                    logger.resumed()
                elif isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                    # TensorBoard's own mechanism: a writer opened with purge_step hides the
                    # events at or after that step that earlier files of this run hold.
                    reopen_tensorboard(logger, purge_step=step)
        # every rank's host, in rank order: which node each rank of a multi-node job ran on
        hosts = gather(socket.gethostname())
        if trainer.is_global_zero:
            rd.update_segment(Path(trainer.default_root_dir), start_step=step,
                              resumed_from=str(trainer.ckpt_path) if resumed else None, hosts=hosts)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            rd.update_segment(Path(trainer.default_root_dir), last_checkpoint_step=trainer.global_step)
