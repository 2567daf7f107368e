"""Export to ONNX and to a Python-free PyTorch graph, with loaders that run the exported files, so
that each export is checked against the PyTorch model on real test batches.

Each format tries PyTorch's current path first and falls back to the TorchScript-based one:
- onnx: `torch.onnx.export(dynamo=True)` (captures with torch.export); else the TorchScript
  exporter (`dynamo=False`).
- torch_export: `torch.export` to model.pt2; else TorchScript (`torch.jit.script`, else
  `torch.jit.trace`) to model.torchscript.pt.
torch.export refuses shapes that depend on the data, such as packed sequences (the BiLSTM) or
slicing to the longest text (the transformer); tracing records such a shape as a constant of
the example, which is why every export is compared with the PyTorch model on test batches of
other sizes and lengths, and the command fails when they differ. The report names the exporter
that was used (and why the first failed).
"""

import json
import os
import pickle
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lightdist.errors import ConfigError
from lightdist.optimize.quantize import batch_dynamic_shapes, example

Format = Literal["onnx", "torch_export"]
FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
TORCHSCRIPT_SUFFIX = ".torchscript.pt"
TORCHSCRIPT_FILE = "model" + TORCHSCRIPT_SUFFIX
PICKLED_DYNAMIC_FILE = "model_int8_dynamic.pt"  # a pickled module: loaded only when trusted explicitly
SIDECAR = "model.json"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load reads it on every call
SAMPLES = "samples.npz"


@dataclass
class ExportOptions:
    """`formats`: onnx and/or torch_export. An export passes its check when no logit of the test batches
    differs from the PyTorch model's by more than `atol` (float32 rounding of a reordered graph)."""

    formats: list[str] = field(default_factory=lambda: ["onnx", "torch_export"])
    atol: float = 1e-4
    opset: int | None = None

    def __post_init__(self):
        self.formats = list(self.formats)
        unknown = [f for f in self.formats if f not in FILES]
        if unknown or not self.formats:
            raise ConfigError(f"export.formats={self.formats}: choose from {', '.join(FILES)}")


def input_names(args: tuple) -> list[str]:
    return ["input"] if len(args) == 1 else [f"input{i}" for i in range(len(args))]


@dataclass
class Exported:
    path: Path
    exporter: str
    fallback_reason: str | None = None


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def export_onnx(model: nn.Module, args: tuple, path: Path, opset: int | None = None) -> Exported:
    args, names = example(args), input_names(args)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"],
                              dynamic_shapes=batch_dynamic_shapes(args), opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)
            return Exported(path, "torch.onnx (dynamo)")
        except Exception as exc:  # torch.export cannot capture the model: the TorchScript-based exporter can
            reason = _reason(exc)
        dynamic_axes = {n: {d: f"{n}_dim{d}" for d in dims} for n, dims in zip(names, batch_dynamic_shapes(args))}
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    return Exported(path, "torch.onnx (torchscript)", reason)


def export_program(model: nn.Module, args: tuple, folder: Path, stem: str = "model") -> Exported:
    """<stem>.pt2 (torch.export), else <stem>.torchscript.pt (scripted, else traced)."""
    args = example(args)
    model = model.eval()
    try:
        with warnings.catch_warnings():  # a model torch.export cannot capture warns on its way to the error
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, dynamic_shapes=batch_dynamic_shapes(args))
        path = folder / f"{stem}.pt2"
        torch.export.save(program, str(path))
        return Exported(path, "torch.export")
    except Exception as exc:
        reason = _reason(exc)
    path = folder / f"{stem}{TORCHSCRIPT_SUFFIX}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted, how = torch.jit.script(model), "torchscript (script)"
        except Exception:  # scripting needs type-annotatable Python; tracing records one run's operations
            scripted, how = torch.jit.trace(model, args, check_trace=False), "torchscript (trace)"
    torch.jit.save(scripted, str(path))
    return Exported(path, how, reason)


class OnnxModel:
    """An ONNX file run by onnxruntime on CPU, called like the PyTorch model (tensors in, logits out)."""

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args: Any) -> torch.Tensor:
        # by name: the TorchScript-based exporter drops inputs the graph does not read
        feed = {name: (a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
                for name, a in zip(input_names(args), args) if name in self.names}
        return torch.from_numpy(self.session.run(None, feed)[0])


@contextmanager
def _weights_only_loads():
    """Every torch.load inside unpickles weights-only, also those that ask for weights_only=False."""
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def _load_program(path: Path):
    """torch.export.load, which unpickles some payloads (weights saved by pickle, opaque constants) without
    restriction: forced weights-only, and archives with opaque pickled objects refused."""
    from lightdist.checkpoints import UnsafeCheckpoint, refused_global

    hint = "an exported model must hold a graph and tensors only; export it again from the run you trust"
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not a torch.export archive (corrupt or truncated)")
    with zipfile.ZipFile(path) as archive:
        opaque = [n for n in archive.namelist() if "/constants/opaque_obj" in n]
    if opaque:
        raise UnsafeCheckpoint(path, f"an opaque Python object ({opaque[0]})", hint)
    try:
        with _weights_only_loads():
            return torch.export.load(str(path)).module()
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(path, refused_global(exc), hint) from None


def load_exported(path: str | Path, threads: int = 1, trust_pickle: bool = False):
    """A callable for model.onnx (onnxruntime), model.pt2 (torch.export.load) or model.torchscript.pt;
    with `trust_pickle`, also for a pickled module (.pt, as optimize saves dynamic int8 recurrent models).

    Only the last unpickles Python objects (and so can run any code the file names): ONNX is a
    protobuf graph, a .pt2 file a serialized graph whose tensors are loaded weights-only,
    TorchScript code that runs TorchScript operators only.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    if path.suffix == ".pt2":
        return _load_program(path)
    if path.name.endswith(TORCHSCRIPT_SUFFIX):
        return torch.jit.load(str(path), map_location="cpu").eval()
    if path.suffix == ".pt":
        if not trust_pickle:
            raise ConfigError(f"{path} is a pickled module: loading it runs whatever code it names",
                              hint="pass --trust-pickle only if you made it yourself (lightdist optimize)")
        return torch.load(path, map_location="cpu", weights_only=False).eval()
    raise ConfigError(f"{path}: not an exported model (.onnx, .pt2 or .torchscript.pt)")


def write_sidecar(folder: Path, args: tuple, expected: torch.Tensor, facts: dict[str, Any],
                  normalize: dict[str, list[float]] | None) -> None:
    """What running an exported file needs besides it: input layout, class names, the normalisation the
    data module applies, and sample inputs with the PyTorch model's logits to check a runtime against."""
    spec = {
        "inputs": [{"name": n, "shape": [-1, *a.shape[1:]], "dtype": str(a.dtype).removeprefix("torch.")}
                   for n, a in zip(input_names(args), args)],
        "output": "logits",
        "class_names": [str(c) for c in facts.get("class_names") or range(facts.get("num_classes", 0))],
        "normalize": normalize,
    }
    (folder / SIDECAR).write_text(json.dumps(spec, indent=2) + "\n")
    np.savez(folder / SAMPLES, logits=expected.numpy(), **{n: a.numpy() for n, a in zip(input_names(args), args)})
