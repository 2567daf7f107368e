"""How many bytes of model state (parameters, gradients, optimizer state) each rank holds.

The point of sharding is this number: under DDP every rank holds everything; ZeRO-1 shards
the optimizer state, ZeRO-2 also the gradients, ZeRO-3 and FSDP full-shard also the
parameters. Strategies keep these tensors in different places (flat buffers, fp32 master
partitions, `ds_tensor` shards, FSDP2's DTensors); this counts what the module and the
optimizer(s) hold on this rank (a DTensor's local shard), each distinct storage once (views of one
flat buffer count as the buffer).
"""

from collections.abc import Iterable, Iterator
from typing import Any

import torch


def _optimizer_tensors(optimizer: Any) -> Iterator[torch.Tensor]:
    """The tensors an optimizer holds: its (master) parameters and their state, through wrappers.

    DeepSpeed's ZeRO optimizers wrap the torch optimizer (`.optimizer`) that steps the rank's
    fp32 partitions; those partitions and their Adam moments are the sharded optimizer state.
    Communication buckets and prefetch buffers are not model state and are not counted.
    """
    while optimizer is not None:
        if isinstance(optimizer, torch.optim.Optimizer):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    yield p
                    if p.grad is not None:
                        yield p.grad
            for state in optimizer.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        optimizer = getattr(optimizer, "optimizer", None)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (FSDP2 parameters, gradients and optimizer state); else itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for t in map(_local, tensors):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def model_state_bytes(module: torch.nn.Module, optimizers: list) -> dict[str, int]:
    """Bytes this rank holds: parameters, their gradients, then anything else the optimizer holds."""
    seen: set[int] = set()
    params = list(module.parameters())
    shards = [p.ds_tensor for p in params if getattr(p, "ds_tensor", None) is not None]
    counted = {
        "parameters": _bytes(params + shards, seen),
        "gradients": _bytes((p.grad for p in params + shards if p.grad is not None), seen),
    }
    counted["optimizer"] = _bytes((t for opt in optimizers for t in _optimizer_tensors(opt)), seen)
    counted["total"] = sum(counted.values())
    return counted

