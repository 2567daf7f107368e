"""Framework overhead: the same model, data and steps trained by lightdist and by a plain loop.

Both run in this process, alternating (plain, lightdist, plain, lightdist, ...), on the same
images, the same model init, optimizer, schedule and batch size. Steps/s is measured over the
steady-state window (after `--warmup` steps) from the end of one optimizer step to the end of
another, so start-up (imports, data loading, process spawn) is excluded for both. The lightdist
side runs the default configuration: CSV logger, checkpoint/LR-monitor/throughput callbacks,
train accuracy metric, exactly resumable loaders and generators.

Before timing, a parity check: in float64 (trainer.precision=64-true), from the same initial
weights and generator state, on the same batches in the same order, lightdist and the plain loop
must give the same loss at every step (`--parity-steps`; it fails, exit 1, if any step differs
by more than 1e-12). Speed counts only where the work is the same. After timing, one more
lightdist run under Lightning's SimpleProfiler gives the host time per step of each hook and
callback (steady-state steps), printed and stored in the result JSON.

    python bench/overhead.py                                 # the quickstart CNN (overhead_cnn.json)
    python bench/overhead.py --model tiny                    # a small model: fixed per-step costs show
    python bench/overhead.py --model tiny --paired           # the same, steps alternating (a drifting machine)
    python bench/overhead.py --gpu                           # ResNet-18, CIFAR-10 format, bf16, 1 GPU
    python bench/overhead.py --gpu --model resnet50          # timm ResNet-50, 224 px image folder, bf16
    python bench/overhead.py --gpu --model resnet50 --smoke  # the same code paths on the CPU, tiny sizes

--paired (CPU modes) alternates the two within each round: at the end of every lightdist step the
plain loop takes one step, timed on its own, so both sides are measured at the same moments; on a
machine whose speed drifts from second to second (shared cores) separate runs scatter by more than
the overhead measured. Its results go to overhead_<model>_paired.json.

The --gpu modes (written data: CIFAR-10 batches, or PNG class folders of 256 px for ResNet-50)
also time the data loader alone (the ceiling the input pipeline sets) and report images/s of the
loader, the plain loop and lightdist; their parity check runs in float64 on the CPU (a few steps
of the same data and model), since the timed runs are bf16. --smoke runs every path with tiny
sizes on the CPU and writes no result.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bench.common import compose_resolved, loader_only, step_times, steps_per_second, write_result  # noqa: E402

MODELS = {
    "cnn": ["model=simple_cnn"],
    "tiny": ["model=simple_cnn", "model.channels=[8,16]", "model.hidden=64"],
}
GPU_MODELS = ("resnet18", "resnet50")
PARITY_TOLERANCE = 1e-12
FLOAT64 = ["trainer.precision=64-true", "trainer.accelerator=cpu", "matmul_precision=null"]


# wall: steps/s as a user sees them; cpu: this process's CPU time (time.process_time, all its threads),
# which other jobs on the machine barely change: for loaded machines, with --threads 1 and no loader workers
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def lightdist_run(overrides: list[str], steps: int, warmup: int, clock=time.perf_counter) -> float:
    return steps_per_second(step_times(overrides, steps, clock=clock), warmup)


class FirstStep(L.Callback):
    """Keeps what the plain loop needs to start where lightdist's first step starts (the model's
    weights, torch's generator: dropout draws from it) and every step's loss."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] | None = None
        self.rng: torch.Tensor | None = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            self.rng = torch.get_rng_state()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args) -> None:
        self.losses.append(float(outputs["loss"]))


class HookProfile(L.Callback):
    """Lightning's SimpleProfiler durations (trainer.profiler=simple), read before its teardown resets them."""

    def __init__(self) -> None:
        self.durations: dict[str, list[float]] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.durations = {k: list(v) for k, v in trainer.profiler.recorded_durations.items()}


def plain_loader(dm, batch_size: int, seed: int):
    """What a user writes: a DataLoader over the training set, shuffled by a seeded DistributedSampler
    (of one replica, or of this process group's ranks: the order lightdist's loader takes), with the
    data module's loader options."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    ranks, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    sampler = DistributedSampler(dm.train_set, num_replicas=ranks, rank=rank, shuffle=dm.shuffle, seed=seed,
                                 drop_last=dm.drop_last)
    loader = DataLoader(dm.train_set, batch_size=batch_size, sampler=sampler, drop_last=dm.drop_last,
                        num_workers=dm.num_workers, pin_memory=dm.pin_memory,
                        persistent_workers=dm.persistent_workers, prefetch_factor=dm.prefetch_factor,
                        collate_fn=dm.collate_fn(), generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def plain_steps(overrides: list[str], steps: int, start: FirstStep | None = None, ddp: bool = True,
                built=None):
    """What a user writes by hand, one step at a time (a generator: each step's loss once its optimizer
    and schedule steps are done): a DataLoader, the model, the same optimizer groups and schedule (of
    `steps` steps), the same on-device normalisation/augmentation, autocast for bf16-mixed,
    channels_last if set. With `start` (a parity run): lightdist's initial weights and generator
    state, and float64. In a process group (bench/plain_ddp.py) each rank takes its shard, and with
    `ddp` the model is in torch's DistributedDataParallel with its defaults. `built` is called with
    the model once it is built."""
    from hydra.utils import instantiate

    from lightdist.config.building import instantiate_with_facts
    from lightdist.tasks.optim import build_optimizer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_resolved(overrides, Path(tmp))
        L.seed_everything(cfg.seed, verbose=False)
        dm = instantiate(cfg.data)
        facts = dm.facts()
        dm.setup("fit")
        device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        channels_last = cfg.get("channels_last", False)
        model = instantiate_with_facts(cfg.model, facts).to(device)
        float64 = str(cfg.trainer.precision) in ("64-true", "64")
        if float64:
            model = model.double()
        if start is not None:
            model.load_state_dict(start.weights)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(instantiate(cfg.optimizer), model)
        if ddp and torch.distributed.is_initialized():
            model = torch.nn.parallel.DistributedDataParallel(model)
        if built is not None:
            built(model)
        loader, sampler = plain_loader(dm, cfg.data.batch_size, cfg.seed)
        schedule = instantiate(cfg.scheduler)(optimizer, total_steps=steps, steps_per_epoch=len(loader))["scheduler"]
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=(cfg.get("task") or {}).get("label_smoothing", 0.0))
        augment = getattr(dm, "augment", None)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=str(cfg.trainer.precision) == "bf16-mixed")
        if start is not None:
            torch.set_rng_state(start.rng)
        model.train()
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                x = dm.normalize(images)
                if augment is not None:
                    x = augment(x)
                if float64:
                    x = x.double()
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    loss = criterion(model(x), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                yield loss
            epoch += 1


def plain_run(overrides: list[str], steps: int, warmup: int, start: FirstStep | None = None,
              clock=time.perf_counter) -> tuple[float, list]:
    """The plain loop alone for `steps` steps: its steady-state steps/s and (with `start`, a parity
    run) every step's loss."""
    times, losses = [], []
    loop = plain_steps(overrides, steps, start)
    for _, loss in zip(range(steps), loop):  # range first: no step beyond `steps` is taken
        times.append(clock())
        if start is not None:
            losses.append(loss.item())
    loop.close()
    return steps_per_second(times, warmup) if steps > warmup + 1 else 0.0, losses


def paired_run(overrides: list[str], steps: int, warmup: int, clock=time.perf_counter) -> tuple[float, float]:
    """Steps/s of the plain loop and of lightdist, their steps alternating in one lightdist run: at each
    lightdist step's end (after lightdist's callbacks, before the rest of Lightning's step-end work,
    which falls into the next lightdist step) the plain loop takes one step, timed on its own. Each
    pair of steps is taken at the same moment, so a machine whose speed drifts by more than the
    difference measured (shared cores, frequency changes) slows both sides alike."""
    loop = plain_steps(overrides, steps)
    marks: list[tuple[float, float]] = []  # (lightdist step ended, plain step ended)

    class Interleave(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            ended = clock()
            next(loop)
            marks.append((ended, clock()))

    step_times(overrides, steps, callbacks=(Interleave(),), clock=clock)
    loop.close()
    steady = marks[warmup:]
    plain = [done - began for began, done in steady[1:]]
    framework = [began - previous_done for (_, previous_done), (began, _) in zip(steady, steady[1:])]
    return len(plain) / sum(plain), len(framework) / sum(framework)


def lightdist_start(overrides: list[str], steps: int) -> FirstStep:
    """A float64 lightdist run of `steps` steps: its start and its losses."""
    start = FirstStep()
    step_times([*overrides, *FLOAT64], steps, callbacks=(start,))
    return start


def plain_losses(overrides: list[str], steps: int, start: FirstStep) -> list[float]:
    """The plain loop's losses in float64, started where `start` says."""
    return plain_run([*overrides, *FLOAT64], steps, 0, start=start)[1]


def parity(overrides: list[str], steps: int) -> dict[str, Any]:
    """lightdist and the plain loop in float64 from the same start: the loss of every step, compared."""
    start = lightdist_start(overrides, steps)
    plain = plain_losses(overrides, steps, start)
    if len(plain) != len(start.losses):
        raise SystemExit(f"parity: lightdist ran {len(start.losses)} steps, the plain loop {len(plain)}")
    differences = [abs(a - b) for a, b in zip(start.losses, plain)]
    return {"steps": steps, "max_abs_difference": max(differences), "lightdist_losses": start.losses,
            "plain_losses": plain}


def check_parity(result: dict[str, Any]) -> None:
    worst = result["max_abs_difference"]
    print(f"parity (float64, {result['steps']} steps): max |loss difference| {worst:.3e}", flush=True)
    if not worst <= PARITY_TOLERANCE:  # also fails on NaN
        for i, (a, b) in enumerate(zip(result["lightdist_losses"], result["plain_losses"])):
            print(f"  step {i}: lightdist {a!r} plain {b!r}")
        raise SystemExit(f"parity failed: the losses differ by {worst:.3e} > {PARITY_TOLERANCE:g}, "
                         "so lightdist and the plain loop do not do the same work")


def profile(overrides: list[str], steps: int, warmup: int) -> list[dict[str, Any]]:
    """Host time per step of every profiled action of a lightdist run (Lightning's SimpleProfiler):
    the steady-state steps of actions run once a step, the whole run's total of the others. Actions nest
    (run_training_batch holds training_step, ...), so the rows are not to be summed."""
    hooks = HookProfile()
    step_times([*overrides, "trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,filename:profile}"],
               steps, callbacks=(hooks,))
    rows = []
    for action, durations in hooks.durations.items():
        per_step = len(durations) >= steps
        steady = durations[warmup:steps] if per_step else durations
        rows.append({"action": action, "calls": len(durations), "per_step": per_step,
                     "ms": 1000 * (statistics.fmean(steady) if per_step else sum(durations))})
    rows.sort(key=lambda r: (not r["per_step"], -r["ms"]))
    return rows


def print_profile(rows: list[dict[str, Any]], limit: int = 40) -> None:
    print("\nlightdist host time per step (SimpleProfiler, steady-state steps; nested actions overlap):")
    print(f"{'ms/step':>9}  action")
    for r in [r for r in rows if r["per_step"]][:limit]:
        print(f"{r['ms']:9.3f}  {r['action']}")
    once = [r for r in rows if not r["per_step"]]
    print(f"and {len(once)} actions run less often than every step (start-up, epoch ends; in the JSON, total ms)")


def write_images(root: Path, smoke: bool) -> Path:
    """PNG class folders (data=image_folder) of 256 px images, so that RandomResizedCrop(224) crops."""
    from tests.helpers.image_files import write_class_folders

    colours = {f"c{i}": (40 * i, 255 - 40 * i, 120) for i in range(4)}
    return write_class_folders(root, colours, per_class=4 if smoke else 160, size=36 if smoke else 256)


def gpu_overrides(model: str, root: Path, smoke: bool) -> list[str]:
    from tests.helpers.image_files import write_cifar10

    cpu = ["trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "data.num_workers=0",
           "data.pin_memory=false", "data.persistent_workers=false"] if smoke else []
    if model == "resnet18":
        write_cifar10(root, per_batch=20 if smoke else 4000)
        return ["+experiment=cifar_resnet", f"data.root={root}", f"data.val_size={20 if smoke else 1000}",
                f"data.batch_size={4 if smoke else 256}", "trainer.devices=1", "strategy=auto",
                "callbacks.throughput=null", *cpu]
    write_images(root / "images", smoke)
    return ["data=image_folder", f"data.path={root / 'images'}", f"data.image_size={32 if smoke else 224}",
            "data.val_size=0.1", "data.test_size=0.1", f"data.batch_size={4 if smoke else 128}",
            f"data.num_workers={min(8, len(os.sched_getaffinity(0)))}", "data.pin_memory=true",
            "data.persistent_workers=true", "model=timm", "model.name=resnet50", "optimizer=sgd",
            "optimizer.lr=0.1", "optimizer.momentum=0.9", "scheduler=cosine", "trainer=gpu",
            "trainer.devices=1", "strategy=auto", "channels_last=true", "matmul_precision=high",
            "callbacks.throughput=null", *cpu]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS) + list(GPU_MODELS), default=None,
                        help="cnn (default), tiny; with --gpu: resnet18 (default), resnet50")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parity-steps", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this process's CPU time per step, for a loaded machine (use --threads 1)")
    parser.add_argument("--paired", action="store_true",
                        help="CPU: plain and lightdist steps alternate within each lightdist run (a drifting machine)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, nothing written")
    args = parser.parse_args()
    model = args.model or ("resnet18" if args.gpu else "cnn")
    if (model in GPU_MODELS) != args.gpu:
        parser.error(f"--model {model} {'needs' if model in GPU_MODELS else 'is not for'} --gpu")
    if args.paired and args.gpu:
        parser.error("--paired is for the CPU modes")
    if args.smoke:
        args.steps, args.warmup, args.rounds = 6, 2, 1
        args.parity_steps = min(args.parity_steps, 3)

    common = ["trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "test_after_fit=false", f"threads_per_rank={args.threads}",
              "trainer.log_every_n_steps=50"]
    if args.gpu:
        overrides = [*gpu_overrides(model, Path(tempfile.mkdtemp()), args.smoke), *common]
        # the bf16 GPU run's work, checked in float64 on the CPU with a small batch and a few steps, its
        # random augmentation off (the plain loop's loader draws from another generator)
        fixed = ["data.augment=null"] if model == "resnet18" else ["data.crop_scale=[1.0,1.0]",
                                                                    "data.horizontal_flip=false"]
        parity_overrides = [*overrides, *fixed, "data.batch_size=4", "channels_last=false", "data.num_workers=0",
                            "data.pin_memory=false", "data.persistent_workers=false"]
        args.parity_steps = min(args.parity_steps, 4)
        name = f"overhead_{model}_gpu"
    else:
        overrides = [*MODELS[model], "data=fashion_mnist", "data.augment=null", "data.train_subset=20000",
                     "data.batch_size=128", "optimizer=adamw", "scheduler=cosine", *common]
        parity_overrides = overrides
        name = f"overhead_{model}" + ("_paired" if args.paired else "")
    torch.set_num_threads(args.threads)

    checked = parity(parity_overrides, args.parity_steps)
    check_parity(checked)

    batch = int(next(o.split("=")[1] for o in reversed(overrides) if o.startswith("data.batch_size=")))
    loader_rate = None
    if args.gpu:
        loader_rate = loader_only(overrides, args.steps, args.warmup)
        print(f"data loader alone: {loader_rate:.2f} batches/s, {loader_rate * batch:.0f} images/s", flush=True)
    plain, framework = [], []
    for r in range(args.rounds):
        if args.paired:
            rates = paired_run(overrides, args.steps, args.warmup, clock=CLOCKS[args.clock])
            plain.append(rates[0])
            framework.append(rates[1])
        else:
            plain.append(plain_run(overrides, args.steps, args.warmup, clock=CLOCKS[args.clock])[0])
            framework.append(lightdist_run(overrides, args.steps, args.warmup, clock=CLOCKS[args.clock]))
        print(f"round {r + 1}: plain {plain[-1]:.2f} steps/s, lightdist {framework[-1]:.2f} steps/s", flush=True)
    p, f = statistics.median(plain), statistics.median(framework)
    # paired: each round's two rates were measured at the same moments, so their ratio is what counts
    ratio = statistics.median(b / a for a, b in zip(plain, framework)) if args.paired else f / p
    extra_ms = (statistics.median(1000 * (1 / b - 1 / a) for a, b in zip(plain, framework)) if args.paired
                else 1000 * (1 / f - 1 / p))
    print(f"\nmodel={model} steps={args.steps} threads={args.threads} clock={args.clock} paired={args.paired}: median plain {p:.2f} steps/s "
          f"({p * batch:.0f} images/s), lightdist {f:.2f} steps/s ({f * batch:.0f} images/s), ratio {ratio:.3f} "
          f"(overhead {100 * (1 - ratio):.1f}%, {extra_ms:.2f} ms per step)")

    rows = profile(overrides, args.profile_steps or args.steps, args.warmup)
    print_profile(rows)
    if args.smoke:
        print("smoke run: nothing written")
        return
    path = write_result(name, {
        "model": model, "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "batch_size": batch,
        "clock": args.clock, "paired": args.paired, "load_average": os.getloadavg(),
        "parity": {k: v for k, v in checked.items() if k != "plain_losses"},
        "plain_steps_per_s": plain, "lightdist_steps_per_s": framework,
        "median_plain": p, "median_lightdist": f, "ratio": ratio, "overhead_pct": 100 * (1 - ratio),
        "overhead_ms_per_step": extra_ms,
        "images_per_s": {"plain": p * batch, "lightdist": f * batch,
                         "loader_alone": loader_rate * batch if loader_rate else None},
        "loader_alone_batches_per_s": loader_rate,
        "profile_ms_per_step": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
