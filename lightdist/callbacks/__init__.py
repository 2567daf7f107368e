"""Callback helpers for what Lightning lacks. Lightning's own callbacks are configured in conf/callbacks."""

from typing import Any

import torch


def batch_size(batch: Any) -> int:
    """Samples in a batch, for ThroughputMonitor: the leading dimension of its first tensor."""
    while isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) else len(batch)
