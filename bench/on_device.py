"""Training steps/s with the dataset on the device (data.on_device=true) against the ordinary loader.

Both sides are lightdist runs of the same config, model and data, differing only in data.on_device;
they run alternately, --rounds times each, in this process, and the median steps/s of each side is
reported with their ratio (so a loaded machine slows both alike). Each run's first --warmup steps
are not timed. The loaders alone (batches/s of the training loader, moved to the run's device) are
measured the same way: that is where on_device saves host time.

    python bench/on_device.py                 # CPU: Fashion-MNIST ($LIGHTDIST_DATA), a tiny CNN
    python bench/on_device.py --gpu           # CIFAR-10 format (written here), ResNet-18, bf16, 1 GPU
    python bench/on_device.py --gpu --smoke   # the --gpu code path on the CPU, tiny sizes, nothing written

The ordinary side keeps each config's own loader settings: no workers for the CPU run (the
default config), two pinned persistent workers for cifar_resnet.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DATA,
    compose_resolved,
    loader_only,
    step_times,
    steps_per_second,
    write_result,
)

CPU = ["model=simple_cnn", "model.channels=[8,16]", "model.hidden=64", "data.batch_size=128", "data.train_subset=20000",
       "trainer.limit_val_batches=0",
       f"data.root={DATA}", "data.download=false", "trainer.accelerator=cpu", "trainer.devices=1", "strategy=auto"]


def gpu_overrides(root: Path, smoke: bool) -> list[str]:
    from tests.helpers.image_files import write_cifar10

    write_cifar10(root, per_batch=20 if smoke else 4000)
    cpu = ["trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "data.num_workers=0", "data.pin_memory=false",
           "data.persistent_workers=false", "channels_last=false"] if smoke else []
    return ["+experiment=cifar_resnet", f"data.root={root}", f"data.val_size={20 if smoke else 1000}",
            f"data.batch_size={4 if smoke else 256}", "trainer.devices=1", "strategy=auto",
            "callbacks.throughput=null", *cpu]


def side_by_side(what: str, measure, overrides: list[str], rounds: int) -> dict:
    """measure(overrides + data.on_device=...) alternately, `rounds` times each: medians and their ratio."""
    runs: dict[str, list[float]] = {"loader": [], "on_device": []}
    for round_ in range(rounds):
        for side, flag in (("loader", "false"), ("on_device", "true")):
            runs[side].append(measure([*overrides, f"data.on_device={flag}"]))
            print(f"round {round_ + 1}  {what}  {side}: {runs[side][-1]:.2f}", flush=True)
    medians = {side: statistics.median(values) for side, values in runs.items()}
    return {"runs": runs, "median": medians, "ratio_on_device": medians["on_device"] / medians["loader"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="with --gpu: tiny sizes on the CPU, nothing written")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (120)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (10 CPU, 20 GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.smoke and not args.gpu:
        parser.error("--smoke is for --gpu")
    steps = args.steps or (8 if args.smoke else 120)
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 20 if args.gpu else 10)
    if args.gpu:
        import torch

        if not args.smoke and not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA device (--gpu --smoke runs its code path on the CPU)")
        overrides = gpu_overrides(Path(tempfile.mkdtemp()), args.smoke)
    else:
        overrides = CPU
    overrides = [*overrides, "test_after_fit=false", "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                 "trainer.enable_progress_bar=false"]

    loaders = side_by_side("loader batches/s", lambda o: loader_only(o, steps, warmup), overrides, args.rounds)
    training = side_by_side("training steps/s", lambda o: steps_per_second(step_times(o, steps), warmup),
                            overrides, args.rounds)
    cfg = compose_resolved(overrides, Path(tempfile.mkdtemp()))
    batch = int(cfg.data.batch_size)
    result = {
        "config": overrides, "steps": steps, "warmup": warmup, "rounds": args.rounds, "batch_size": batch,
        "training_steps_per_s": training, "loader_batches_per_s": loaders,
        "training_images_per_s": {side: v * batch for side, v in training["median"].items()},
    }
    if args.gpu and not args.smoke:
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    print(f"training steps/s  loader {training['median']['loader']:.1f}  on_device {training['median']['on_device']:.1f}"
          f"  ratio {training['ratio_on_device']:.3f}")
    print(f"loader batches/s  loader {loaders['median']['loader']:.1f}  on_device {loaders['median']['on_device']:.1f}"
          f"  ratio {loaders['ratio_on_device']:.3f}")
    if not args.smoke:
        print(f"wrote {write_result('on_device_gpu' if args.gpu else 'on_device_cpu', result)}")


if __name__ == "__main__":
    main()
