"""A callback that end-to-end tests add by override
(+callbacks.buckets._target_=tests.helpers.bucket_probe.BucketCaps +callbacks.buckets.path=<file>):
rank 0 writes the process group's backend and DistributedDataParallel's bucket size limits (the
cap, and whether a smaller first bucket comes before the others: torch's default)."""

import json

import lightning as L
import torch.distributed as dist


class BucketCaps(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ddp = trainer.strategy.model
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump({"backend": dist.get_backend(), "bucket_bytes_cap": ddp.bucket_bytes_cap,
                           "small_first_bucket": ddp.bucket_bytes_cap_default}, f)
