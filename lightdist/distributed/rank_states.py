"""State that differs from rank to rank, kept in the one checkpoint rank 0 writes.

Lightning builds the checkpoint on every rank but writes rank 0's dict: whatever a callback or
a data module holds on another rank (its random generators, its RL environments and replay
buffer) would be lost, and a resumed rank 1 would continue with rank 0's state. Each rank
hands in its own part; the checkpoint holds the list (one entry per rank) and on resume each
rank takes its own entry back.

Gathering is a collective: call `gather` where Lightning calls every rank (state_dict,
on_save_checkpoint), never from rank 0 alone.
"""

import logging
from typing import Any

import torch.distributed as dist

log = logging.getLogger(__name__)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(state: Any) -> list[Any]:
    """Every rank's `state`, in rank order (on every rank; plain values and tensors only)."""
    rank, world = rank_and_world()
    if world == 1:
        return [state]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return states


def own(states: list[Any] | None, what: str) -> Any | None:
    """This rank's entry of a gathered list; None when there is none or the world size changed
    (then the caller starts that state afresh: the resume is exact to the step, not to the sample)."""
    if not states:
        return None
    rank, world = rank_and_world()
    if len(states) != world:
        if rank == 0:
            log.warning(f"{what} was saved by {len(states)} ranks and is resumed on {world}: each rank "
                        "starts it afresh, so the resumed run does not repeat the interrupted one exactly")
        return None
    return states[rank]
