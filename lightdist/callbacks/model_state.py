"""Model-state bytes per rank during training (what sharding saves); the counting is in lightdist.distributed.memory."""

from typing import Any

import lightning as L
import torch.distributed as dist

from lightdist.distributed.memory import model_state_bytes


class ModelStateSize(L.Callback):
    """Measures model-state bytes on every rank after `after_steps` optimizer steps; rank 0 keeps all ranks'."""

    def __init__(self, after_steps: int = 1):
        self.after_steps = after_steps
        self.per_rank: list[dict[str, int]] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.per_rank is not None or trainer.global_step < self.after_steps:
            return
        mine = model_state_bytes(pl_module, trainer.optimizers)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, mine)
            self.per_rank = gathered
        else:
            self.per_rank = [mine]
