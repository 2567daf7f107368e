"""Hand-written data-parallel loops that bench/scaling.py measures lightdist's DDP against.

One process per rank, started by torchrun (`python -m torch.distributed.run`): gloo, one thread
per rank, bench/overhead.py's plain loop (the model, data, optimizer and schedule that the
overrides compose for lightdist) with each rank on its DistributedSampler shard, in one or more
of these modes, run one after the other in the same processes:

- ddp: the model in torch's DistributedDataParallel at its defaults, what a torchrun script does;
- meet: no gradient all-reduce, but the ranks all-reduce one number after every step: what
  meeting once a step costs where the ranks' step times scatter, with no bytes to move (the
  best any synchronous data-parallel training can do on the machine);
- none: no communication at all, each rank trains its own model on its shard (the ceiling of
  the machine's cores running side by side, measured in the same processes).

Rank 0 writes, for each mode, its steady step rate (from the end of the second step to the end of
the last, as lightdist's summary counts it), its last loss, and whether the ranks' weights are
equal at the end (ddp: they must be; none: they must not), to --out as JSON.

    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/plain_ddp.py \\
        --steps 120 --modes ddp meet none --out rates.json -- +experiment=fashion_mnist_cnn
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.common import steps_per_second  # noqa: E402
from bench.overhead import plain_steps  # noqa: E402

MODES = ("ddp", "meet", "none")


def weights_equal_across_ranks(model: torch.nn.Module) -> bool:
    """Whether every rank holds rank 0's weights, bit for bit."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    mine = flat.clone()
    dist.broadcast(flat, src=0)
    same = torch.tensor([float(torch.equal(flat, mine))])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


def train(overrides: list[str], steps: int, mode: str) -> dict:
    """`steps` steps of the plain loop in `mode`: this rank's step rate, last loss, equal weights."""
    times, loss = [], float("nan")
    models = []
    loop = plain_steps(overrides, steps, ddp=mode == "ddp", built=models.append)
    meeting = torch.zeros(1)
    for _, step_loss in zip(range(steps), loop):
        if mode == "meet":
            dist.all_reduce(meeting)
        times.append(time.time())
        loss = step_loss.item()
    equal = weights_equal_across_ranks(models[0])
    loop.close()
    return {"train_steps_per_s": steps_per_second(times, 1), "loss": loss, "weights_equal_across_ranks": equal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["ddp"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="lightdist overrides that compose the run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as threads_per_rank=1 gives the lightdist ranks
    dist.init_process_group("gloo")
    try:
        results = {mode: train(args.overrides, args.steps, mode) for mode in args.modes}
        if dist.get_rank() == 0:
            args.out.write_text(json.dumps({"world_size": dist.get_world_size(), "steps": args.steps, **results}))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
