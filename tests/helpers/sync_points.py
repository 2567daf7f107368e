"""Count what a training step does that makes the host wait for the GPU, on any machine.

On a GPU, reading a value of a device tensor on the host (`.item()`, `.tolist()`, `bool(t)`,
`float(t)`, `f"{t:.3f}"`, `.cpu()`, `.numpy()`), an operator whose output size depends on the
data (`nonzero`, boolean-mask indexing, `unique`, ...), a blocking copy of Python data to the
device (`torch.tensor(x, device=...)`) and `torch.cuda.synchronize` each stop the Python thread
until the GPU has run everything queued before: the host can no longer queue the next step while
the GPU works on this one. On the CPU nothing waits, so these calls are counted instead:

- a TorchFunctionMode sees the Tensor methods and factory calls,
- a TorchDispatchMode sees what they end in at the operator level (`aten._local_scalar_dense`,
  data-dependent shapes), including what torch's own C++ code calls, once per call,
- torch.cuda.synchronize is wrapped.

Some of these calls touch tensors that live on the host on a GPU as well, and cost nothing
there; they are kept apart (`host`), by where they come from:

- the data loader (its dataset and collate run on host tensors before the batch is moved),
- optimizers' step counters (torch keeps `state["step"]` on the CPU unless capturable or fused),
- Lightning's batch transfer (on a GPU it copies with non_blocking=True).

SyncProbe is a callback that end-to-end tests add by override
(+callbacks.sync_probe._target_=tests.helpers.sync_points.SyncProbe +callbacks.sync_probe.path=<file>).
It counts from the start of training to its end, and attributes each call to a batch: from that
batch's first on_train_batch_start hook to the next batch's, i.e. its step, its logging, the
checkpoints and validation that follow it, and the fetch and transfer of the next batch.
tests/performance/test_sync_points.py reads the file; bench/sync_check.py does the same on a GPU
with torch.cuda.set_sync_debug_mode.
"""

import json
import sys
from collections import Counter
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods that read a device tensor on the host.
READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__",
         "__format__", "__repr__", "__str__", "__array__"}
# Operators that make the host wait: a value on the host, or an output whose size depends on the data.
WAITING_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
               "unique_dim", "unique_consecutive", "bincount", "equal", "is_nonzero", "allclose"}
INDEXING_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}  # waits with a boolean mask
# Where a counted call touches host tensors on a GPU too (see the module docstring).
HOST_SITES = {
    "data loading": ("torch/utils/data/", "torchdata/stateful_dataloader/"),
    "optimizer step counter": ("torch/optim/optimizer.py:_get_value",),
    "batch transfer (non_blocking on a GPU)": ("lightning/fabric/utilities/apply_func.py:batch_to",),
}
THIS_FILE = __file__.replace("\\", "/")


def _is_cpu(device: Any) -> bool:
    return str(device).startswith("cpu")


def _frames(limit: int = 40) -> list[str]:
    """'path:function:line' of the callers, innermost first, without this file's frames."""
    out, frame = [], sys._getframe(2)
    while frame is not None and len(out) < limit:
        path = frame.f_code.co_filename.replace("\\", "/")
        if path != THIS_FILE:
            out.append(f"{path}:{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return out


def _short(frame: str) -> str:
    for marker in ("site-packages/", "/lightdist/", "/tests/", "/bench/"):
        if marker in frame:
            keep = frame.split(marker, 1)[1]
            return keep if marker == "site-packages/" else marker.strip("/") + "/" + keep
    return frame


class SyncCounter:
    """`with SyncCounter() as counter:` records every counted call in counter.events, as
    {"what", "site", "stack", "host"} ("host": why it costs nothing on a GPU, or None)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._inside = 0  # depth of counted Tensor-method calls: the operators they end in are theirs
        counter = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                what = counter._function_wait(func, args, kwargs)
                if what is None:
                    return func(*args, **kwargs)
                counter._record(what)
                counter._inside += 1
                try:
                    return func(*args, **kwargs)
                finally:
                    counter._inside -= 1

        class Operators(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if not counter._inside:
                    name = func.overloadpacket.__name__
                    if name in WAITING_OPS or (name in INDEXING_OPS and _boolean_index(args)):
                        counter._record(f"aten.{name}")
                return func(*args, **kwargs)

        self._modes = [Functions(), Operators()]
        self._synchronize = None

    @staticmethod
    def _function_wait(func: Any, args: tuple, kwargs: dict) -> str | None:
        name = getattr(func, "__name__", "")
        if name in READS and args and isinstance(args[0], torch.Tensor):
            return f"Tensor.{name}"
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            tensor = args[0]
            target = next((a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
            if name == "cuda":
                target = torch.device("cuda")
            if target is None:
                return None
            # A move to the tensor's own device is no copy (on a GPU: `norm.to(first_device)`); on the
            # CPU every device is the CPU, so a move to the host counts where it says so: .to("cpu").
            host = isinstance(target, str) and _is_cpu(target)
            moved = torch.device(target) != tensor.device and not (_is_cpu(target) and tensor.device.type == "cpu")
            if host or (moved and not kwargs.get("non_blocking", False)):
                return f"Tensor.{name}({target})"
            return None
        if name in ("tensor", "as_tensor", "scalar_tensor") and args and not isinstance(args[0], torch.Tensor):
            device = kwargs.get("device")
            # Python data copied to a device that is not spelled as the host: on a GPU, the training
            # device (self.device, root_device), a blocking copy from pageable memory
            if device is not None and not (isinstance(device, str) and _is_cpu(device)):
                return f"torch.{name}(<python data>, device={device})"
        return None

    def _record(self, what: str) -> None:
        stack = _frames()
        joined = "\n".join(stack)
        host = next((why for why, sites in HOST_SITES.items()
                     if any(site in joined for site in sites)), None)
        site = next((f for f in stack if "site-packages/torch/" not in f), stack[0] if stack else "?")
        self.events.append({"what": what, "site": _short(site), "host": host,
                            "stack": [_short(f) for f in stack if "site-packages/torch/" not in f][:8]})

    def __enter__(self) -> "SyncCounter":
        for mode in self._modes:
            mode.__enter__()
        self._synchronize = torch.cuda.synchronize

        def synchronize(*args: Any, **kwargs: Any) -> None:
            self._record("torch.cuda.synchronize")
            if torch.cuda.is_available():
                self._synchronize(*args, **kwargs)

        torch.cuda.synchronize = synchronize
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.synchronize = self._synchronize
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def device_waits(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["host"] is None]


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or ()))


class SyncProbe(L.Callback):
    """Counts the calls of every training batch (see the module docstring) and writes, at the end
    of training, {"log_every_n_steps", "batches": [{"batch", "step", "logging", "epoch_end",
    "waits": [...], "host": {why: n}}], "before_first_batch": [...]} to `path` (rank 0)."""

    def __init__(self, path: str):
        self.path = path
        self.counter: SyncCounter | None = None
        self.batches: list[dict[str, Any]] = []
        self.before: dict[str, Any] = {}  # what happened before the first batch (its fetch and transfer)
        self._mark = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # first among the callbacks: a batch's events start with its first on_train_batch_start hook
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter = SyncCounter().__enter__()

    def _close_batch(self) -> None:
        assert self.counter is not None
        events = self.counter.events[self._mark:]
        self._mark = len(self.counter.events)
        entry = self.batches[-1] if self.batches else self.before
        entry["waits"] = [e for e in events if e["host"] is None]
        entry["host"] = dict(Counter(e["host"] for e in events if e["host"]))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._close_batch()
        every = trainer.log_every_n_steps
        self.batches.append({"batch": len(self.batches), "step": trainer.global_step + 1,
                             "logging": bool(every) and (trainer.global_step + 1) % every == 0,
                             "epoch_end": batch_idx + 1 == trainer.num_training_batches})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_batch()
        self.counter.__exit__(None, None, None)
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump({"log_every_n_steps": trainer.log_every_n_steps, "batches": self.batches,
                           "before_first_batch": self.before}, f, indent=1)
