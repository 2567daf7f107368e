"""Size and CPU latency, measured the same way for every form of a model."""

import gzip
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lightdist.errors import ConfigError


@dataclass
class LatencyOptions:
    """Latency of one batch of `batch_size` test inputs and of a single input, on `threads` CPU threads:
    the median of `runs` timed calls after `warmup` untimed ones. `compile`: also time torch.compile'd
    forms (Inductor; the static int8 model's int8 kernels need it) and measure the static int8 model's
    accuracy compiled."""

    batch_size: int = 64
    runs: int = 30
    warmup: int = 5
    threads: int = 1
    compile: bool = True

    def __post_init__(self):
        if min(self.batch_size, self.runs, self.threads) < 1 or self.warmup < 0:
            raise ConfigError("latency.batch_size, runs and threads must be >= 1 and warmup >= 0")


def state_bytes(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of the saved state dict, raw and gzip-compressed (where pruning's zeros show)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    raw = buffer.getvalue()
    return {"size_bytes": len(raw), "size_gzip_bytes": len(gzip.compress(raw, compresslevel=6))}


def file_bytes(path: Path) -> int:
    return path.stat().st_size


def single(args: tuple) -> tuple:
    """The first input of a batch, as a batch of one (a text keeps its batch's padding)."""
    return tuple(a[:1].clone() for a in args)


def latencies(fn: Callable, args: tuple, options: LatencyOptions, prefix: str = "") -> dict[str, float]:
    """{prefix}batch and {prefix}single latency in milliseconds."""
    return {f"{prefix}batch": latency_ms(fn, args, options), f"{prefix}single": latency_ms(fn, single(args), options)}


@torch.inference_mode()
def latency_ms(fn: Callable, args: tuple, options: LatencyOptions) -> float:
    """Median wall time of fn(*args) in milliseconds, on options.threads threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        for _ in range(options.warmup):
            fn(*args)
        times = []
        for _ in range(options.runs):
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) * 1000, 3)
    finally:
        torch.set_num_threads(threads)
