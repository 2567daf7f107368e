"""Post-training int8 quantisation on CPU.

Which PyTorch path, and why (torch 2.13):
- static (CNNs, calibrated activations): PT2E quantization, now maintained in torchao
  (`torchao.quantization.pt2e`) with the X86InductorQuantizer. torch.ao's eager and FX
  modes are deprecated and eager mode cannot quantize a residual `out + shortcut(x)`
  without rewriting the model. The converted graph holds int8 weights and
  quantize/dequantize pairs; it runs int8 kernels once torch.compile (Inductor, with
  freezing) lowers those pairs, and in eager mode as a numerically equivalent reference.
- dynamic (Linear/LSTM/GRU, activations quantized per batch at run time):
  `torch.ao.quantization.quantize_dynamic`. It is deprecated too, but it is the only
  PyTorch implementation with int8 CPU kernels for nn.LSTM; torchao's replacement
  (Int8DynamicActivationInt8WeightConfig) has no fast CPU kernel (20x slower than float
  on the development machine) and PT2E dynamic quantization leaves nn.LSTM in float and
  gave no speed-up there. The deprecation warning is silenced where it is called.
"""

import copy
import logging
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from lightdist import compat
from lightdist.errors import ConfigError

Method = Literal["auto", "static", "dynamic"]
_DYNAMIC_LAYERS = (nn.Linear, nn.LSTM, nn.GRU)


@dataclass
class QuantizeOptions:
    """`auto`: static for models with convolutions, dynamic for Linear/LSTM models.
    `calibration_batches`: training batches that set the activation ranges (static)."""

    method: Method = "auto"
    calibration_batches: int = 32

    def __post_init__(self):
        if self.method not in get_args(Method):
            raise ConfigError(f"quantize.method={self.method}: choose from {', '.join(get_args(Method))}")
        if self.calibration_batches < 1:
            raise ConfigError(f"quantize.calibration_batches={self.calibration_batches} must be at least 1")


def resolve_method(model: nn.Module, method: Method) -> Literal["static", "dynamic"]:
    """auto: static for convolutional models without recurrent layers, dynamic for the rest."""
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    recurrent = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)})
    has_dynamic = any(isinstance(m, _DYNAMIC_LAYERS) for m in model.modules())
    if method == "auto":
        method = "static" if has_conv and not recurrent else "dynamic"
    if method == "static" and recurrent:
        raise ConfigError(f"static int8 quantisation has no {'/'.join(recurrent)} kernels (only convolutions and "
                          "linear layers get calibrated int8 versions)", hint="use quantize.method=dynamic")
    if method == "dynamic" and not has_dynamic:
        raise ConfigError("quantize.method=dynamic needs Linear, LSTM or GRU layers; the model has none",
                          hint="use quantize.method=static")
    return method


def batch_dynamic_shapes(args: tuple) -> tuple:
    """Every dimension of size > 1 left for torch.export to decide: batch and sequence lengths stay dynamic,
    what the model fixes (an image size before a linear layer) is specialised. Size-1 dimensions (one
    colour channel) are static anyway."""
    return tuple({d: torch.export.Dim.AUTO for d in range(a.ndim) if a.shape[d] > 1}
                 if isinstance(a, torch.Tensor) else None for a in args)


def example(args: tuple, n: int = 2) -> tuple:
    """A small copy of a batch to trace with: exported files store their example inputs."""
    return tuple(a[:n].clone() for a in args)


def quiet_logs() -> None:
    """Warnings that say nothing about the user's model: torchao's failed loads of its CUDA-only libraries
    on a CPU build, its pytree registrations, the ONNX exporter's missing torchvision ops."""
    for name in ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration",
                 "torch._export.non_strict_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quantize_static(model: nn.Module, example_args: tuple, calibration: Iterable[tuple]) -> torch.fx.GraphModule:
    """int8 weights (per channel) and activations (per tensor, ranges from the calibration batches)."""
    quiet_logs()
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    traced = example(example_args)
    exported = torch.export.export(copy.deepcopy(model).eval(), traced, dynamic_shapes=batch_dynamic_shapes(traced)).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    seen = 0
    with torch.no_grad():
        for args in calibration:
            prepared(*args)
            seen += 1
    if not seen:
        raise ConfigError("no calibration batches: the training split is empty")
    converted = convert_pt2e(prepared)
    _drop_unused_tensors(converted)
    return converted


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """convert_pt2e keeps the float weights it replaced by int8 constants; they are never read."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """int8 weights of Linear/LSTM/GRU layers; activations quantized on the fly per batch."""
    api = getattr(torch.ao.quantization, "quantize_dynamic", None)
    if api is None:
        raise ConfigError("this PyTorch has no torch.ao.quantization.quantize_dynamic",
                          hint="use quantize.method=static, or torch<=2.13")
    with warnings.catch_warnings():
        # deliberate use of the deprecated API (module docstring)
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return api(copy.deepcopy(model).eval(), set(_DYNAMIC_LAYERS), dtype=torch.qint8)


@contextmanager
def inductor_freezing():
    """Inductor's freezing (weights as constants: int8 weights prepacked for the CPU kernels), for every
    compilation inside the block, later recompilations for new batch sizes included."""
    with compat.inductor_freezing(), torch.no_grad(), warnings.catch_warnings():
        # Inductor's int8 lowering copies tensors with torch.tensor(tensor): a warning about its own code
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        yield
