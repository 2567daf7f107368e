"""Weak scaling of CPU DDP and start-up time, with the real CLI in subprocesses.

1 rank vs 2 ranks over gloo, one thread per rank, the same per-rank batch: ideal weak
scaling doubles the samples/s. Efficiency = samples/s(2 ranks) / (2 x samples/s(1 rank)),
from the steady-state steps of each run (the first step, with its start-up costs, excluded).
The ceiling this machine allows is measured too: two independent 1-rank runs at the same
time (no communication) share memory bandwidth and caches as two DDP ranks do; DDP's own
cost is its efficiency relative to that. Also: seconds from starting the command to the end of the first optimizer step of a
2-process run (imports, launching rank 1, data loading, DDP set-up, first step).

    python bench/scaling.py
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, write_result  # noqa: E402


def run(args: list[str], cwd: Path) -> tuple[float, Path]:
    env = dict(os.environ, LIGHTDIST_DATA=str(DATA), WANDB_MODE="offline")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "lightdist", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lightdist {' '.join(args)} failed:\n{proc.stderr[-5000:]}")
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("summary.json")]
    return started, run_dir


def run_pair(args: list[str]) -> list[Path]:
    """Two independent runs started together: what two busy cores give without any communication."""
    env = dict(os.environ, LIGHTDIST_DATA=str(DATA), WANDB_MODE="offline")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmps = [tempfile.mkdtemp() for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "lightdist", *args], cwd=t, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for t in tmps]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"lightdist {' '.join(args)} failed:\n{err[-5000:]}")
    return [next(Path(t).rglob("summary.json")).parent for t in tmps]


def samples_per_s(run_dir: Path, per_rank_batch: int) -> float:
    """Steady samples/s of all ranks: the summary's step rate (first two steps excluded) x global batch."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["train_steps_per_s"] * per_rank_batch * summary["world_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    common = ["+experiment=fashion_mnist_cnn", "data.augment=null", "data.train_subset=20000",
              f"data.batch_size={args.batch}", f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0",
              "trainer.num_sanity_val_steps=0", "test_after_fit=false", "threads_per_rank=1",
              "trainer.enable_progress_bar=false", "callbacks.throughput=null", "callbacks.model_checkpoint=null"]
    one, two, pair, startup = [], [], [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            _, run_dir = run(["trainer=cpu", *common], Path(tmp))
            one.append(samples_per_s(run_dir, args.batch))
        with tempfile.TemporaryDirectory() as tmp:
            started, run_dir = run(["trainer=cpu_ddp", "trainer.devices=2", *common], Path(tmp))
            two.append(samples_per_s(run_dir, args.batch))
            first = json.loads((run_dir / "summary.json").read_text())["first_step_at"]
            startup.append(first - started)
        pair.append(sum(samples_per_s(d, args.batch) for d in run_pair(["trainer=cpu", *common])))
        print(f"round {r + 1}: 1 rank {one[-1]:.1f} samples/s, 2 ranks {two[-1]:.1f} samples/s, "
              f"efficiency {two[-1] / (2 * one[-1]):.3f}, two independent 1-rank runs {pair[-1]:.1f} samples/s "
              f"(ceiling {pair[-1] / (2 * one[-1]):.3f}), command to first step {startup[-1]:.1f} s", flush=True)
    s1, s2, sp = sum(one) / len(one), sum(two) / len(two), sum(pair) / len(pair)
    efficiency = s2 / (2 * s1)
    print(f"two independent 1-rank runs at once: {sp:.1f} samples/s, ceiling {sp / (2 * s1):.3f}; "
          f"DDP relative to it: {s2 / sp:.3f}")
    print(f"\nweak scaling, per-rank batch {args.batch}, 1 thread per rank: 1 rank {s1:.1f} samples/s, "
          f"2 ranks {s2:.1f} samples/s, efficiency {efficiency:.3f}; "
          f"command to first optimizer step (2 processes) {min(startup):.1f} s (best of {len(startup)})")
    path = write_result("scaling", {"per_rank_batch": args.batch, "steps": args.steps,
                                    "samples_per_s_1_rank": one, "samples_per_s_2_ranks": two,
                                    "efficiency": efficiency, "samples_per_s_two_independent": pair,
                                    "ceiling_efficiency": sp / (2 * s1), "ddp_relative_to_ceiling": s2 / sp,
                                    "startup_to_first_step_s": startup})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
