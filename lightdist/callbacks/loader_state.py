"""Resumed training loaders start where the checkpoint says, even when Lightning set the data up early."""

import lightning as L

from lightdist.compat import load_train_loader_states


class LoaderState(L.Callback):
    """Hands a resumed fit's saved loader states (lightdist.data.resumable) to the training loaders at
    on_train_start, before the first batch is fetched, where Lightning skipped it: it does so only
    when it sets the training data up after restoring its loops, and a learning-rate schedule that
    reads trainer.estimated_stepping_batches sets it up before (lightdist.compat)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        load_train_loader_states(trainer)
