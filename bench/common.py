"""Helpers shared by the benchmarks: composing a lightdist config in-process, timing steps and the
training loader alone, writing results."""

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATA = Path(os.environ.get("LIGHTDIST_DATA") or REPO.parent / "shared" / "data").resolve()


def compose_resolved(overrides: list[str], run_dir: Path):
    """A fully resolved config for an in-process run in `run_dir` (no Hydra run directory)."""
    from omegaconf import OmegaConf

    from lightdist.config import resolvers
    from lightdist.config.compose import compose

    resolvers.register()
    os.environ.setdefault("LIGHTDIST_DATA", str(DATA))
    cfg = compose([*overrides, f"paths.output_dir={run_dir}"])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
              "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def step_times(overrides: list[str], steps: int, sync_cuda: bool = False, callbacks: tuple = (),
               clock=time.perf_counter) -> list[float]:
    """The end time of every training step of an in-process lightdist run of `steps` steps.

    The run is lightdist's own (train.run with the composed config); a callback (and `callbacks`,
    which observe the run: parity, profile) is added to the ones it builds, so what is timed is
    exactly what a user's run does. `clock`: time.process_time counts this process's CPU time only,
    what a step costs on a machine whose other jobs take the cores."""
    import tempfile

    import lightning as L
    import torch

    from lightdist import train

    times: list[float] = []

    class StepTimes(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            if sync_cuda:
                torch.cuda.synchronize()
            times.append(clock())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_resolved([*overrides, f"trainer.max_steps={steps}"], Path(tmp))
        original = train.build_callbacks
        train.build_callbacks = lambda c, has_logger: [*original(c, has_logger), StepTimes(), *callbacks]
        try:
            train.run(cfg, Path(tmp))
        finally:
            train.build_callbacks = original
    return times


def steps_per_second(times: list[float], warmup: int) -> float:
    """Steady-state rate of the end times of steps (step_times): the first `warmup` steps left out."""
    window = times[warmup:]
    return (len(window) - 1) / (window[-1] - window[0])


def loader_only(overrides: list[str], steps: int, warmup: int) -> float:
    """Batches/s of the training loader alone, each batch on the run's device (a no-op copy when it is there)."""
    import torch
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_resolved(overrides, Path(tmp))
        device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        dm = instantiate(cfg.data)
        if getattr(dm, "on_device", False):  # what setup() does under a trainer: the splits go to its device
            from types import SimpleNamespace

            dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device), world_size=1, global_rank=0,
                                         overfit_batches=0)
        dm.setup("fit")
        times: list[float] = []
        epoch = 0
        while len(times) < steps:
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            for images, labels in loader:
                images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
                if len(times) == steps:
                    break
            epoch += 1
    return steps_per_second(times, warmup)
