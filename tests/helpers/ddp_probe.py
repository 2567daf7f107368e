"""A callback that end-to-end tests add by override (+callbacks.rank_sync._target_=tests.helpers.ddp_probe.RankSync)
to see inside a multi-process run: after each training epoch rank 0 records whether every
rank holds the same model weights."""

import json

import lightning as L
import torch


class RankSync(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])
        gathered = pl_module.all_gather(flat)
        if trainer.is_global_zero:
            spread = float((gathered - gathered[0]).abs().max())
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch, "max_difference": spread}) + "\n")
