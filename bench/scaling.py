"""Weak scaling of DDP under each of its overlap options and communication hooks, side by side in
one run, with the real CLI in subprocesses.

CPU (default): 1 rank vs 2 ranks over gloo, one thread per rank, the same per-rank batch: ideal
weak scaling doubles the samples/s. Efficiency = samples/s(2 ranks) / (2 x samples/s(1 rank)),
from the steady-state steps of each run (the first two steps, with their start-up costs,
excluded). The ceiling this machine allows is measured too: two independent 1-rank runs at the
same time (no communication) share memory bandwidth and caches as two DDP ranks do; DDP's own
cost is a variant's efficiency relative to that ("vs ceiling"). Every round runs the 1-rank
baseline, the ceiling and each variant once (the order reversed every other round, so a drift in
the machine's load spreads over all of them).

Each variant also reports its training loss at the last logged step beside the default's (same
seed, same data order): 0 for the options that only reschedule the all-reduce, the accuracy
cost of compression for the hooks.

GPU (--gpu): 1 GPU vs all of this machine's GPUs over NCCL (ResNet-18, CIFAR-10-format data,
bf16-mixed, per-GPU batch 256; the ceiling is taken as 1: GPUs share nothing but the host). With
fewer than 2 GPUs it says so and measures nothing.

On CPU each round also runs hand-written loops (bench/plain_ddp.py, torchrun, the same model,
data and optimizer): 1 rank, and 2 ranks in three modes: torch's DistributedDataParallel at its
defaults (what lightdist's DDP is compared with, in samples/s side by side), the ranks meeting
once a step with nothing to all-reduce (the best synchronous data-parallel training can do where
the ranks' step times scatter), and no communication at all (the ceiling, in the same processes).
`--no-plain` leaves them out.

The time from command to first optimizer step is measured by bench/startup.py.

    python bench/scaling.py                  # CPU, every variant, 2 rounds
    python bench/scaling.py --variants default bf16 --rounds 3
    python bench/scaling.py --gpu [--cifar-root /path/with/cifar-10-batches-py]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, write_result  # noqa: E402

# Each variant changes one thing of strategy=ddp (conf/strategy/ddp.yaml) on the default.
VARIANTS = {
    "default": [],
    "bucket_1mb": ["strategy.bucket_cap_mb=1"],
    # a set cap also sizes DDP's first bucket, so the benchmark's model (3.5 MB of gradients) is one
    # bucket, all-reduced after the whole backward pass: what null gives on gloo (the CPU default);
    # under NCCL null is torch's default (a first bucket of 1 MB, then 25 MB), which this differs from
    "bucket_25mb": ["strategy.bucket_cap_mb=25"],
    "bucket_100mb": ["strategy.bucket_cap_mb=100"],
    "no_bucket_view": ["strategy.gradient_as_bucket_view=false"],
    "static_graph": ["strategy.static_graph=true"],
    "bf16": ["strategy.comm_hook=bf16"],
    "fp16": ["strategy.comm_hook=fp16"],
    "powersgd": ["strategy.comm_hook=powersgd", "strategy.powersgd_start_step=10"],
    # collectives every step: the BatchNorm buffers' broadcast before each forward (torch's default,
    # lightdist's before it copied them only before evaluations), and the ranks agreeing on a
    # preemption signal before each step
    "broadcast_buffers": ["strategy.broadcast_buffers=true"],
    "preemption_check_20": ["preemption.check_every_n_steps=20"],
}


def env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline")
    env.setdefault("LIGHTDIST_DATA", str(DATA))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(args: list[str], cwd: Path) -> tuple[float, Path]:
    """Runs the CLI in `cwd`; (when it started, its run directory)."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "lightdist", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lightdist {' '.join(args)} failed:\n{proc.stderr[-5000:]}")
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("summary.json")]
    return started, run_dir


def run_pair(args: list[str]) -> list[Path]:
    """Two independent runs started together: what two busy cores give without any communication."""
    tmps = [tempfile.mkdtemp() for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "lightdist", *args], cwd=t, env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for t in tmps]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"lightdist {' '.join(args)} failed:\n{err[-5000:]}")
    return [next(Path(t).rglob("summary.json")).parent for t in tmps]


def run_plain(ranks: int, modes: list[str], steps: int, overrides: list[str], cwd: Path) -> dict:
    """bench/plain_ddp.py on `ranks` processes (torchrun) in `modes`: its JSON (rank 0's step rates)."""
    out = cwd / "plain.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(Path(__file__).with_name("plain_ddp.py")), f"--steps={steps}", "--modes", *modes,
               f"--out={out}", "--", *overrides]
    proc = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain_ddp.py on {ranks} ranks failed:\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def samples_per_s(run_dir: Path, per_rank_batch: int) -> float:
    """Steady samples/s of all ranks: the summary's step rate (first two steps excluded) x global batch."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["train_steps_per_s"] * per_rank_batch * summary["world_size"]


def last_loss(run_dir: Path) -> tuple[int, float]:
    """(step, train/loss) of the last logged training step."""
    with open(run_dir / "metrics.csv") as f:
        rows = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return max(rows)


def gpu_setup(args: argparse.Namespace, tmp: Path) -> tuple[list[str], list[str], list[str], int] | None:
    """(common overrides, 1-device overrides, N-device overrides, N), or None when there is no second GPU."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"scaling --gpu: weak scaling needs 2 or more GPUs; this machine has {gpus}. Nothing measured "
              "(run it on a multi-GPU node).")
        return None
    root = args.cifar_root
    if root is None:  # CIFAR-10's exact on-disk format, random pixels: speed only
        from tests.helpers.image_files import write_cifar10

        write_cifar10(tmp / "data", per_batch=4000)
        root = str(tmp / "data")
    common = ["+experiment=cifar_resnet", f"data.root={root}", "data.val_size=1000", f"data.batch_size={args.batch}",
              "data.num_workers=4", "trainer=gpu"]
    return common, ["trainer.devices=1"], ["strategy=ddp", f"trainer.devices={gpus}"], gpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="NCCL: 1 GPU vs all GPUs of this machine")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (CPU 120, GPU 300)")
    parser.add_argument("--batch", type=int, default=None, help="per-rank batch size (CPU 64, GPU 256)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-plain", action="store_true", help="CPU: leave out the hand-written loops")
    parser.add_argument("--cifar-root", help="GPU mode: a folder holding cifar-10-batches-py (else synthetic files)")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in ["default", *args.variants]}  # default: the loss reference

    tmp_root = Path(tempfile.mkdtemp())
    if args.gpu:
        args.steps, args.batch = args.steps or 300, args.batch or 256
        setup = gpu_setup(args, tmp_root)
        if setup is None:
            return
        common, one_rank, n_ranks, ranks = setup
    else:
        args.steps, args.batch = args.steps or 120, args.batch or 64
        common = ["+experiment=fashion_mnist_cnn", "data.augment=null", "data.train_subset=20000",
                  f"data.batch_size={args.batch}", "threads_per_rank=1"]
        one_rank, n_ranks, ranks = ["trainer=cpu"], ["trainer=cpu_ddp", "trainer.devices=2", "strategy=ddp"], 2
    common += [f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
               "test_after_fit=false", "trainer.enable_progress_bar=false", "callbacks.throughput=null",
               "callbacks.model_checkpoint=null", "logger=csv",
               f"trainer.log_every_n_steps={max(1, args.steps // 4)}"]  # the last step's loss is logged

    one: list[float] = []
    pair: list[float] = []
    speed: dict[str, list[float]] = {name: [] for name in variants}
    loss: dict[str, tuple[int, float]] = {}
    plain_modes = ["ddp", "meet", "none"]
    plain: dict[str, list[float]] = {name: [] for name in ["1 rank", *plain_modes]}
    plain_loss: dict[str, float] = {}
    with_plain = not (args.gpu or args.no_plain)
    for r in range(args.rounds):
        order = ["1 rank", "ceiling", *variants, *(["plain 1 rank", "plain 2 ranks"] if with_plain else [])]
        for name in order if r % 2 == 0 else order[::-1]:
            if name.startswith("plain"):
                cwd = tmp_root / f"{r}_{name.replace(' ', '_')}"
                cwd.mkdir()
                one_plain = name == "plain 1 rank"
                modes = ["none"] if one_plain else (plain_modes if r % 2 == 0 else plain_modes[::-1])
                measured = run_plain(1 if one_plain else ranks, modes, args.steps, [*one_rank, *common], cwd)
                for mode in modes:
                    rate = measured[mode]["train_steps_per_s"] * args.batch * measured["world_size"]
                    plain["1 rank" if one_plain else mode].append(rate)
                    if not one_plain:
                        plain_loss[mode] = measured[mode]["loss"]
                    print(f"round {r + 1}: {name}{'' if one_plain else ' ' + mode} {rate:.1f} samples/s", flush=True)
                continue
            if name == "ceiling":
                if not args.gpu:
                    pair.append(sum(samples_per_s(d, args.batch) for d in run_pair([*one_rank, *common])))
                    print(f"round {r + 1}: two independent 1-rank runs {pair[-1]:.1f} samples/s", flush=True)
                continue
            cwd = tmp_root / f"{r}_{name.replace(' ', '_')}"
            cwd.mkdir()
            _, run_dir = run([*(one_rank if name == "1 rank" else n_ranks), *common, *variants.get(name, [])], cwd)
            rate = samples_per_s(run_dir, args.batch)
            if name == "1 rank":
                one.append(rate)
            else:
                speed[name].append(rate)
                loss[name] = last_loss(run_dir)
            print(f"round {r + 1}: {name} {rate:.1f} samples/s", flush=True)

    s1 = sum(one) / len(one)
    ceiling = sum(pair) / len(pair) / (ranks * s1) if pair else 1.0
    print(f"\nweak scaling, per-rank batch {args.batch}, {args.steps} steps, {args.rounds} round(s): 1 rank "
          f"{s1:.1f} samples/s; ceiling (two independent 1-rank runs at once) {ceiling:.3f}")
    print(f"{'variant':22} {'samples/s':>10} {'efficiency':>10} {'vs ceiling':>10} {'loss@step':>16} {'vs default':>11}")
    results = {}
    for name, rates in speed.items():
        mean = sum(rates) / len(rates)
        step, value = loss[name]
        results[name] = {"overrides": variants[name], "samples_per_s": rates, "efficiency": mean / (ranks * s1),
                         "relative_to_ceiling": mean / (ranks * s1) / ceiling, "loss_step": step, "loss": value,
                         "loss_minus_default": value - loss["default"][1]}
        row = results[name]
        print(f"{name:22} {mean:10.1f} {row['efficiency']:10.3f} {row['relative_to_ceiling']:10.3f} "
              f"{value:10.5f}@{step:<5} {row['loss_minus_default']:+11.5f}")
    references = {}
    if with_plain:
        p1 = sum(plain["1 rank"]) / len(plain["1 rank"])
        lightdist = sum(speed["default"]) / len(speed["default"])
        described = {"ddp": "torch DDP, its defaults", "meet": "meet once a step, no bytes",
                     "none": "no communication"}
        print(f"\nhand-written loops (bench/plain_ddp.py): 1 rank {p1:.1f} samples/s")
        print(f"{'2 ranks':34} {'samples/s':>10} {'efficiency':>10} {'lightdist default / this':>25}")
        for mode in plain_modes:
            mean = sum(plain[mode]) / len(plain[mode])
            references[mode] = {"samples_per_s": plain[mode], "efficiency": mean / (ranks * p1),
                                "lightdist_default_samples_per_s_ratio": lightdist / mean, "loss": plain_loss[mode]}
            print(f"{described[mode]:34} {mean:10.1f} {mean / (ranks * p1):10.3f} {lightdist / mean:25.3f}")
    path = write_result("scaling_gpu" if args.gpu else "scaling", {
        "mode": "gpu" if args.gpu else "cpu", "ranks": ranks, "per_rank_batch": args.batch, "steps": args.steps,
        "rounds": args.rounds, "common": common, "samples_per_s_1_rank": one,
        "samples_per_s_two_independent": pair, "ceiling_efficiency": ceiling, "variants": results,
        **({"plain": {"samples_per_s_1_rank": plain["1 rank"], "modes": references}} if references else {})})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
