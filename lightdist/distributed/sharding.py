"""FSDP and DeepSpeed ZeRO from config, on GPUs and, for testing, on CPUs over gloo.

On GPUs these return Lightning's own FSDPStrategy / DeepSpeedStrategy. Lightning refuses
both on CPU by design, although PyTorch's FSDP and DeepSpeed's engine (its CPU
accelerator, torch optimizers, no compiled ops) both run on CPU over gloo. The CPU
variants below are the whole adaptation, kept to the two refusals themselves, so that the
sharding code paths that run on GPUs are also exercised by the CPU test suite:

- CPUFSDPStrategy: Lightning's accelerator connector rejects FSDP on CPU with an exact
  `type(strategy) is FSDPStrategy` check, which a subclass passes; and Lightning gives FSDP
  `device_id=None` on CPU, from which FSDP concludes that an accelerator is missing, so
  the subclass wraps the model with `device_id=cpu` itself (Lightning's own wrapping call
  otherwise) and lets Lightning do the rest.
- CPUDeepSpeedStrategy: DeepSpeedStrategy raises unless the accelerator is CUDA
  (setup_environment) and unless each rank's device index equals its local rank
  (setup_distributed; CPU devices have no index), and hands DeepSpeed that index as its
  device rank. The subclass skips the two checks and names its device `cpu:<local rank>`
  (the same CPU to torch, the index DeepSpeed expects); everything else is Lightning's.
"""

from collections import Counter
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from hydra.utils import get_class
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch.nn import Module, ModuleDict, ModuleList, Sequential

from lightdist.compat import WrapBeforeFSDP, init_deepspeed_distributed
from lightdist.distributed.zero_universal import UniversalResume
from lightdist.errors import ConfigError


class CPUFSDPStrategy(WrapBeforeFSDP, FSDPStrategy):
    """FSDPStrategy with the CPU named as FSDP's device."""

    def wrap_model(self, model: Module) -> Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn it is ignored
        return model


class ZeroStrategy(UniversalResume, DeepSpeedStrategy):
    """DeepSpeedStrategy that resumes a checkpoint saved at another world size (zero_universal.py)."""


class CPUDeepSpeedStrategy(ZeroStrategy):
    """DeepSpeedStrategy without the CUDA-only check; DeepSpeed itself picks its CPU accelerator."""

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own adds only the CUDA check

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy.setup_distributed without its device-index check.
        reset_seed()
        self.set_world_ranks()
        init_deepspeed_distributed(self)


# The word in auto_wrap_modules that asks for the model's own blocks (block_classes) as wrap units.
BLOCKS = "blocks"
_CONTAINERS = (Sequential, ModuleList, ModuleDict)


def block_classes(model: Module) -> set[type[Module]]:
    """The classes of a model's repeated blocks, found by structure rather than by name.

    A block class has instances that are children of a container (Sequential, ModuleList,
    ModuleDict) at least twice, and modules of its own inside (layers are not blocks); of
    these, the outermost are kept (a block class whose instances also sit inside another's is
    dropped). So torchvision's ResNet gives BasicBlock/Bottleneck (its layer1..4), ViT
    EncoderBlock, EfficientNet MBConv; timm's ViT Block (model.blocks), ResNet BasicBlock,
    ConvNeXt its stages; lightdist's ResNets BasicBlock. None for a model without repeats.
    """
    counts: Counter[type[Module]] = Counter()
    for parent in model.modules():
        if isinstance(parent, _CONTAINERS):
            for child in parent.children():
                if not isinstance(child, _CONTAINERS) and next(child.children(), None) is not None:
                    counts[type(child)] += 1
    repeated = {cls for cls, n in counts.items() if n >= 2}
    inner = {type(sub) for m in model.modules() if type(m) in repeated
             for sub in m.modules() if sub is not m and type(sub) in repeated}
    return repeated - inner


def _classes(paths: list[str] | None) -> set[type] | None:
    paths = [p for p in paths or [] if p != BLOCKS]
    if not paths:
        return None
    try:
        return {get_class(p) for p in paths}
    except Exception as exc:
        raise ConfigError(f"cannot import module class for FSDP ({exc})",
                          hint="give full class paths, e.g. lightdist.vision.models.resnet.BasicBlock") from exc


def fsdp(
    device_type: Literal["cpu", "gpu", "cuda", "auto"] = "auto",
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
    auto_wrap_modules: list[str] | None = None,
    auto_wrap_min_params: int = 0,
    activation_checkpointing_modules: list[str] | None = None,
    cpu_offload: bool = False,
    state_dict_type: Literal["full", "sharded"] = "sharded",
    limit_all_gathers: bool = True,
    timeout: timedelta | None = None,
) -> FSDPStrategy:
    """Fully Sharded Data Parallel.

    Wrapping: each module of a class in `auto_wrap_modules` becomes its own FSDP unit (the
    entry `blocks`: the classes of the model's repeated blocks, see block_classes, decided by
    check_module once the model exists), or (when none are named) every submodule holding at
    least `auto_wrap_min_params` parameters; 0 and no classes wraps only the whole model (one unit).
    """
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    policy: Any = _classes(auto_wrap_modules)
    if policy is None and auto_wrap_min_params > 0:
        policy = partial(size_based_auto_wrap_policy, min_num_params=int(auto_wrap_min_params))
    cls = CPUFSDPStrategy if device_type == "cpu" else FSDPStrategy
    strategy = cls(
        sharding_strategy=sharding_strategy,
        auto_wrap_policy=policy,
        activation_checkpointing_policy=_classes(activation_checkpointing_modules),
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
        limit_all_gathers=limit_all_gathers,
        **_timeout(timeout),
    )
    # the named classes, to which check_module adds the model's blocks; None: no `blocks` asked for
    blocks = BLOCKS in (auto_wrap_modules or [])
    strategy.wrap_blocks = (_classes(auto_wrap_modules) or set()) if blocks else None  # type: ignore[attr-defined]
    return strategy


def load_deepspeed_config(path: str) -> dict:
    """A full DeepSpeed config from a JSON or YAML file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"DeepSpeed config {file} does not exist", hint="strategy.config=<path to .json/.yaml>")
    try:
        data = yaml.safe_load(file.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"DeepSpeed config {file} is not valid JSON/YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {file} must hold a mapping, got {type(data).__name__}")
    return data


def deepspeed(
    device_type: Literal["cpu", "gpu", "cuda", "auto"] = "auto",
    precision: str = "32-true",
    stage: Literal[0, 1, 2, 3] = 2,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    allgather_bucket_size: int = 200_000_000,
    reduce_bucket_size: int = 200_000_000,
    contiguous_gradients: bool = True,
    overlap_comm: bool = True,
    param_persistence_threshold: int = 100_000,
    config: str | None = None,
    timeout: timedelta | None = None,
) -> DeepSpeedStrategy:
    """DeepSpeed ZeRO. `config` (a JSON/YAML file) replaces every other option when given,
    as Lightning does with DeepSpeedStrategy(config=...).

    ZeRO-3 keeps parameters smaller than `param_persistence_threshold` elements whole on every
    rank (gathering them each step would cost more than it saves); 0 partitions all of them.
    A checkpoint saved by another number of processes resumes through DeepSpeed's universal
    checkpoint (zero_universal.py).
    """
    cls = CPUDeepSpeedStrategy if device_type == "cpu" else ZeroStrategy
    if config:
        return cls(config=load_deepspeed_config(config), **_timeout(timeout))
    strategy = cls(
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_parameters=offload_parameters,
        allgather_bucket_size=allgather_bucket_size,
        reduce_bucket_size=reduce_bucket_size,
        contiguous_gradients=contiguous_gradients,
        overlap_comm=overlap_comm,
        **_timeout(timeout),
    )
    # Settings DeepSpeedStrategy has no argument for go into the DeepSpeed config it built.
    strategy.config["zero_optimization"]["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
    if precision.startswith("bf16"):
        # DeepSpeed casts parameters to bf16 but leaves buffers as they are; batch norm then
        # meets bf16 weights with fp32 running statistics and fails. Buffers follow the
        # parameters, as they did when DeepSpeed cast whole modules.
        strategy.config.setdefault("data_types", {})["buffer_dtype"] = "bf16"
    if offload_optimizer or offload_parameters:
        # DeepSpeed refuses offloading with a torch optimizer unless told otherwise; the torch
        # optimizer is what the config chose (optimizer=deepspeed_cpu_adam is faster on GPU nodes).
        strategy.config["zero_force_ds_cpu_optimizer"] = False
    return strategy


def _timeout(timeout: timedelta | None) -> dict:
    """The process-group timeout (distributed.timeout_s, given by build_strategy), else Lightning's default."""
    return {"timeout": timeout} if timeout is not None else {}


def needs_consolidated_weights(strategy: Any) -> bool:
    """ZeRO-3 cannot evaluate from its own sharded checkpoint: DeepSpeed's evaluation-only engine
    has no `_restore_from_bit16_weights`, which its checkpoint loading calls. The weights are
    consolidated (zero_to_fp32) and loaded into the module before DeepSpeed wraps it instead."""
    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def check_module(strategy: Any, module: Module) -> None:
    """What can only be checked or decided once the model exists, before any process is launched.

    DeepSpeed broadcasts parameters as flat byte views, which needs contiguous parameters:
    channels_last convolution weights are not. FSDP with auto_wrap_modules=[blocks, ...] gets
    the model's block classes (block_classes) added to its wrap classes here.
    """
    named = getattr(strategy, "wrap_blocks", None)
    if isinstance(strategy, FSDPStrategy) and named is not None:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = block_classes(module) | named
        if classes:
            strategy.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
    if isinstance(strategy, DeepSpeedStrategy) and not all(p.is_contiguous() for p in module.parameters()):
        raise ConfigError("DeepSpeed needs contiguous parameters, but this model has non-contiguous ones "
                          "(channels_last convolution weights)", hint="set channels_last=false with DeepSpeed")
