"""Framework overhead: the same model, data and steps trained by lightdist and by a plain loop.

Both run in this process, alternating (plain, lightdist, plain, lightdist, ...), on the same
Fashion-MNIST images in memory, the same model init, optimizer, schedule and batch size.
Steps/s is measured over the steady-state window (after `--warmup` steps) from the end of
one optimizer step to the end of another, so start-up (imports, data loading, process
spawn) is excluded for both. The lightdist side runs the default configuration: CSV
logger, checkpoint/LR-monitor/throughput callbacks, train accuracy metric.

    python bench/overhead.py                      # the quickstart CNN
    python bench/overhead.py --model tiny         # a small model: fixed per-step costs show
    python bench/overhead.py --gpu                # ResNet-18, CIFAR-10 format, bf16, 1 GPU

In --gpu mode it also times the data loader alone (the ceiling the input pipeline sets).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bench.common import compose_resolved, step_times, write_result  # noqa: E402

MODELS = {
    "cnn": ["model=simple_cnn"],
    "tiny": ["model=simple_cnn", "model.channels=[8,16]", "model.hidden=64"],
}


def steps_per_second(times: list[float], warmup: int) -> float:
    window = times[warmup:]
    return (len(window) - 1) / (window[-1] - window[0])


def lightdist_run(overrides: list[str], steps: int, warmup: int) -> float:
    return steps_per_second(step_times(overrides, steps), warmup)


def loader_only(overrides: list[str], steps: int, warmup: int) -> float:
    """Batches/s of the training data loader alone, moved to the device."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_resolved(overrides, Path(tmp))
    dm = instantiate(cfg.data)
    dm.setup("fit")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times = []
    while len(times) < steps:
        for images, labels in dm.train_dataloader():
            images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            times.append(time.perf_counter())
            if len(times) == steps:
                break
    return steps_per_second(times, warmup)


def plain_run(overrides: list[str], steps: int, warmup: int) -> float:
    """What a user writes by hand: a DataLoader, the model, the same optimizer groups and schedule,
    the same on-device normalisation/augmentation, autocast for bf16-mixed, channels_last if set."""
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
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(instantiate(cfg.optimizer), model)
    schedule = instantiate(cfg.scheduler)(optimizer, total_steps=steps, steps_per_epoch=steps)["scheduler"]
    loader = dm.train_dataloader()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=str(cfg.trainer.precision) == "bf16-mixed")
    times, step = [], 0
    model.train()
    while step < steps:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            x = dm.normalize(images)
            if dm.augment is not None:
                x = dm.augment(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            times.append(time.perf_counter())
            step += 1
            if step == steps:
                break
    return steps_per_second(times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(__import__("os").sched_getaffinity(0)))
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()

    common = ["trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false", "test_after_fit=false", f"threads_per_rank={args.threads}",
              "trainer.log_every_n_steps=50"]
    if args.gpu:
        from tests.helpers.image_files import write_cifar10

        root = Path(tempfile.mkdtemp())
        write_cifar10(root, per_batch=4000)
        args.model = "resnet18_gpu"
        overrides = ["+experiment=cifar_resnet", f"data.root={root}", "data.val_size=1000", "data.batch_size=256",
                     "trainer.devices=1", "strategy=auto", "callbacks.throughput=null", *common]
    else:
        overrides = [*MODELS[args.model], "data=fashion_mnist", "data.augment=null", "data.train_subset=20000",
                     "data.batch_size=128", "optimizer=adamw", "scheduler=cosine", *common]
    torch.set_num_threads(args.threads)
    loader_rate = None
    if args.gpu:
        loader_rate = loader_only(overrides, args.steps, args.warmup)
        print(f"data loader alone: {loader_rate:.2f} batches/s", flush=True)
    plain, framework = [], []
    for r in range(args.rounds):
        plain.append(plain_run(overrides, args.steps, args.warmup))
        framework.append(lightdist_run(overrides, args.steps, args.warmup))
        print(f"round {r + 1}: plain {plain[-1]:.2f} steps/s, lightdist {framework[-1]:.2f} steps/s", flush=True)
    p, f = statistics.median(plain), statistics.median(framework)
    ratio = f / p
    print(f"\nmodel={args.model} steps={args.steps} threads={args.threads}: median plain {p:.2f} steps/s, "
          f"lightdist {f:.2f} steps/s, ratio {ratio:.3f} (overhead {100 * (1 - ratio):.1f}%)")
    path = write_result(f"overhead_{args.model}", {
        "model": args.model, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "plain_steps_per_s": plain, "lightdist_steps_per_s": framework,
        "median_plain": p, "median_lightdist": f, "ratio": ratio, "overhead_pct": 100 * (1 - ratio),
        "loader_alone_batches_per_s": loader_rate})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
