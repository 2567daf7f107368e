"""FSDP2 (torch.distributed.fsdp.fully_shard: per-parameter DTensor shards) as a Lightning strategy.

Lightning 2.6 reaches FSDP2 through ModelParallelStrategy, which leaves the sharding to the
LightningModule's `configure_model`. Here the strategy does it itself, so every task and model
runs under `strategy=fsdp2` unchanged: in `setup`, before Lightning's own, each network of the
task (`Task.networks()`) is sharded block by block, then as a whole, then the task (only when it
holds parameters outside its networks). Which modules are blocks is the model family's word: a
`parallelize.py` beside the model's module with `blocks(model) -> list | None`, found by
convention so that this package imports no family; models it does not know fall back to the
structural detection of repeated blocks (sharding.block_classes: torchvision, timm, HF models).

The same code runs on GPUs (NCCL) and on CPUs (gloo), one process or several; HSDP (`replicas`
> 1) shards within groups of world/replicas ranks and replicates across the groups.
"""

import importlib
import warnings
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from lightdist.distributed.sharding import block_classes
from lightdist.errors import ConfigError

Dtype = Literal["bfloat16", "float16", "float32", "float64"]


def network_blocks(network: nn.Module) -> list[nn.Module]:
    """The blocks of `network`, each sharded on its own: its family's `parallelize.blocks(network)`,
    else the modules of its repeated block classes (block_classes); [] when it has none."""
    package = type(network).__module__.rpartition(".")[0]
    try:
        plan = importlib.import_module(f"{package}.parallelize") if package else None
    except ModuleNotFoundError as exc:
        if exc.name != f"{package}.parallelize":
            raise
        plan = None
    declared = plan.blocks(network) if plan is not None else None
    if declared is not None:
        return list(declared)
    classes = tuple(block_classes(network))
    return [m for m in network.modules() if classes and isinstance(m, classes)]


def checkpoint_activations(block: nn.Module) -> None:
    """Recompute the block's activations in backward instead of keeping them (non-reentrant
    torch.utils.checkpoint around its forward; the module and its state-dict keys stay as they are)."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed


def _own_parameters(module: nn.Module, inner: Iterable[nn.Module]) -> bool:
    """Whether `module` holds parameters outside the modules `inner`."""
    covered = {id(p) for m in inner for p in m.parameters()}
    return any(id(p) not in covered for p in module.parameters())


def shard_task(task: nn.Module, networks: list[nn.Module], mesh: Any, *, reshard_after_forward: bool = True,
               mp_policy: Any = None, offload_policy: Any = None, activation_checkpointing: bool = False,
               compile: bool | str = False) -> None:
    """Shard in place, per network: each block (checkpointed, then compiled, when asked), the network
    itself, then the task when it holds parameters outside its networks."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "mp_policy": mp_policy or MixedPrecisionPolicy(), "offload_policy": offload_policy or OffloadPolicy()}
    for network in networks:
        for block in network_blocks(network):
            if block is network:
                continue
            if activation_checkpointing:
                checkpoint_activations(block)
            if compile:
                # The forward, not the module's call: fully_shard's hooks in the call are hidden from
                # dynamo, which then runs a block of torch's own modules (a Sequential) uncompiled.
                backend = compile if isinstance(compile, str) else "inductor"
                block.forward = torch.compile(block.forward, backend=backend)
            fully_shard(block, **options)
        fully_shard(network, **options)
    if _own_parameters(task, networks):
        # The root is only sharded when it has parameters of its own: a task whose forward never
        # runs (DQN calls its networks directly) must leave its networks to be roots themselves.
        fully_shard(task, **options)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with data parallelism over every rank (no tensor parallelism) and the
    sharding applied by the strategy (see the module docstring); options as `fsdp2` documents them."""

    def __init__(self, reshard_after_forward: bool = True, param_dtype: Dtype | None = None,
                 reduce_dtype: Dtype | None = None, cpu_offload: bool = False, activation_checkpointing: bool = False,
                 replicas: int | str = 1, save_distributed_checkpoint: bool = True, async_save: bool = False,
                 compile: bool | str = False, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype, self.reduce_dtype = _dtype(param_dtype), _dtype(reduce_dtype)
        self.cpu_offload = cpu_offload
        self.activation_checkpointing = activation_checkpointing
        self.replicas = replicas
        self.async_save = async_save
        self.compile = compile
        # Read by the model-options callback: the blocks are compiled here, the whole model is not.
        self.compiles_blocks = bool(compile)
        self.shard_mesh: Any = None
        self._offload_warned = False

    def setup_environment(self) -> None:
        # Data parallel over every rank; the world size is known once the accelerator connector ran.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
        self.shard_mesh = self._shard_mesh()

    def _shard_mesh(self) -> Any:
        """1-D over every rank; HSDP: (replicate, shard), shards within groups of world/replicas ranks."""
        from torch.distributed.device_mesh import init_device_mesh

        replicas = self.num_nodes if self.replicas == "nodes" else int(self.replicas)
        world = self.world_size
        if replicas < 1 or world % replicas:
            raise ConfigError(f"strategy.replicas={self.replicas} does not divide the {world} ranks",
                              hint="use a divisor of trainer.devices x trainer.num_nodes (1: no replication)")
        if replicas == 1:
            return self.device_mesh["data_parallel"]
        return init_device_mesh(self.root_device.type, (replicas, world // replicas),
                                mesh_dim_names=("replicate", "shard"))

    def _offload_policy(self) -> Any:
        if not self.cpu_offload:
            return None
        if self.root_device.type == "cpu":
            if self.global_rank == 0 and not self._offload_warned:
                warnings.warn("strategy.cpu_offload=true ignored: the model already lives in CPU memory",
                              stacklevel=2)
            self._offload_warned = True
            return None
        from torch.distributed.fsdp import CPUOffloadPolicy

        return CPUOffloadPolicy()

    def setup(self, trainer: Any) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        task = self.lightning_module
        if trainer.state.fn != TrainerFn.FITTING:
            # fit's optimizers belong to the task fit trained; a test loads weights only
            self._reset_optimizers_and_schedulers()
        if not is_sharded(task):
            # the precision's dtype before sharding (Lightning converts after; then a no-op)
            self.model = self.precision_plugin.convert_module(self.model)
            networks = task.networks() if hasattr(task, "networks") else [task]
            shard_task(task, networks, self.shard_mesh, reshard_after_forward=self.reshard_after_forward,
                       mp_policy=MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype),
                       offload_policy=self._offload_policy(), activation_checkpointing=self.activation_checkpointing,
                       compile=self.compile)
        super().setup(trainer)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Sharded: every rank's shard to a DCP directory, atomically and, with async_save, in the
        background (lightdist.distributed.dcp); else Lightning's one full file from rank 0."""
        if not self._save_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        from lightdist.distributed.dcp import save_sharded

        path = Path(self.broadcast(filepath))  # rank 0's path everywhere
        state = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        save_sharded(state, checkpoint, path, async_save=self.async_save)

    def teardown(self) -> None:
        from lightdist.distributed.dcp import wait_for_saves

        wait_for_saves()
        super().teardown()


def fsdp2(
    reshard_after_forward: bool = True,
    param_dtype: Dtype | None = None,
    reduce_dtype: Dtype | None = None,
    cpu_offload: bool = False,
    activation_checkpointing: bool = False,
    replicas: int | Literal["nodes"] = 1,
    save_distributed_checkpoint: bool = True,
    async_save: bool = False,
    compile: bool | str = False,
    timeout: timedelta | None = None,
) -> FSDP2Strategy:
    """FSDP2 on GPUs (NCCL) or CPUs (gloo); see conf/strategy/fsdp2.yaml for the options."""
    if not (replicas == "nodes" or (isinstance(replicas, int) and replicas >= 1)):
        raise ConfigError(f"strategy.replicas={replicas!r} must be a count >= 1 or 'nodes'",
                          hint="strategy.replicas=1 (plain FSDP2) or strategy.replicas=nodes (HSDP)")
    return FSDP2Strategy(
        reshard_after_forward=reshard_after_forward, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
        cpu_offload=cpu_offload, activation_checkpointing=activation_checkpointing, replicas=replicas,
        save_distributed_checkpoint=save_distributed_checkpoint, async_save=async_save, compile=compile,
        **({"timeout": timeout} if timeout is not None else {}),
    )
