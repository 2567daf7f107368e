"""Turn the `strategy` config group into what Lightning's Trainer takes."""

import atexit
import inspect
import os
import sys
from datetime import timedelta
from typing import Any, NoReturn

import torch
from hydra.utils import get_object, instantiate
from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from omegaconf import DictConfig, OmegaConf

from lightdist.compat import EndSpawnedRanks, ddp_arguments, precision_plugin_for, run_exit_handlers
from lightdist.config.validate import signature_of
from lightdist.distributed.cluster import cluster_plugins
from lightdist.errors import ConfigError
from lightdist.no_profiler import NoProfiler

RELEASE_TIMEOUT_S = 10.0


def release_process_group() -> None:
    import faulthandler

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    # Destroying waits for the group's running collectives. One stuck on a peer that never joins it
    # (an error path) must not hang the exit: the process then ends after the timeout, tracebacks shown.
    faulthandler.dump_traceback_later(RELEASE_TIMEOUT_S, exit=True)
    try:
        dist.destroy_process_group()
    finally:
        faulthandler.cancel_dump_traceback_later()


def release_process_group_at_exit() -> None:
    """Destroy this process's process group when it exits, while the interpreter is still whole.

    A process that exits with its gloo group alive can abort ("terminate called without an
    active exception", SIGABRT): a gloo worker thread that drops the last reference to a
    finished collective's tensors needs the GIL, which it cannot take once the interpreter is
    being torn down. Destroying the group first joins those threads, unless something else still
    holds it (hence exit_rank for the ranks lightdist starts). Registered once.
    """
    atexit.unregister(release_process_group)
    atexit.register(release_process_group)


def exit_rank(code: int = 0) -> NoReturn:
    """End a rank's process once its work is done, without interpreter finalization.

    Destroying the process group at exit is not enough: other references (the DDP reducer,
    Work objects, modules that copy torch.distributed's group tables) can keep the C++ gloo
    group, and so its worker threads, alive into finalization, where one that drops a
    tensor aborts the process. Ending with os._exit leaves no finalization to race with:
    the atexit handlers run first, while the interpreter is whole.
    """
    run_exit_handlers()  # logging's flush, loggers' hooks, the group release
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


GLOO_BUCKET_CAP_MB = 25  # torch's own cap, for the first bucket as well


class DDPStrategy(EndSpawnedRanks, LightningDDPStrategy):
    """Lightning's DDPStrategy whose ranks cannot abort at exit over a live gloo group.

    That matters under ddp_spawn: every fit() and test() runs in fresh processes that end as
    soon as it returns, with the group still alive (Lightning's teardown keeps it). Spawned
    children end with exit_rank once their result is handed over (fork and forkserver children
    already end with os._exit); every rank also releases its group at exit.
    """

    end_spawned_rank = staticmethod(exit_rank)

    def __init__(self, *args: Any, comm_hook: str | None = None, powersgd_rank: int = 1,
                 powersgd_start_step: int = 1000, bucket_cap_mb: float | None = None, **kwargs: Any) -> None:
        """`comm_hook` (null | fp16 | bf16 | powersgd) becomes Lightning's ddp_comm_state/ddp_comm_hook;
        `bucket_cap_mb` null is decided by the backend (see configure_ddp); the other keys
        (gradient_as_bucket_view, static_graph...) go to DistributedDataParallel."""
        from lightdist.distributed.comm_hooks import comm_hook_arguments

        hook = comm_hook_arguments(comm_hook, powersgd_rank, powersgd_start_step)
        cap = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
        buffers = kwargs.pop("broadcast_buffers", None)
        if buffers is not None:
            kwargs[BUFFERS_ARGUMENT] = buffers
        super().__init__(*args, **hook, **cap, **kwargs)
        self.comm_hook = hook
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = True if buffers is None else buffers  # DistributedDataParallel's default

    def setup_environment(self) -> None:
        super().setup_environment()
        release_process_group_at_exit()

    def configure_ddp(self) -> None:
        if self.bucket_cap_mb is None and torch.distributed.get_backend() == "gloo":
            # gloo (CPU ranks): each all-reduce has a fixed cost of 1-2 ms on top of its bytes (2 ranks,
            # one machine: 1 MB 2.2 ms, 2.5 MB 3.1 ms, 3.5 MB 3.6 ms), and the cores that run the
            # backward pass also move the bytes, so torch's small first bucket buys no overlap, only
            # one more all-reduce: the first bucket is as large as the others (25 MB). NCCL keeps
            # torch's default (a 1 MB first bucket, whose all-reduce overlaps the rest of the backward).
            ddp_arguments(self)["bucket_cap_mb"] = GLOO_BUCKET_CAP_MB
        super().configure_ddp()
        # Lightning registers the hook on CUDA only; torch's hooks run on gloo as well (CPU ranks).
        if self.comm_hook and self.root_device.type != "cuda":
            self.model.register_comm_hook(state=self.comm_hook["ddp_comm_state"], hook=self.comm_hook["ddp_comm_hook"])

    # broadcast_buffers=false (lightdist's default): DDP no longer copies rank 0's buffers (BatchNorm's
    # running statistics) to every rank before each training forward, a collective that waits for
    # every rank at each step. Training does not read them (BatchNorm normalises with the batch's own
    # statistics), and rank 0's buffers, which the checkpoints hold, are the same either way (a
    # broadcast from rank 0 never changes rank 0's); they are copied to the other ranks here, before
    # anything reads them: every validation, test and prediction, where each rank evaluates its shard.
    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._buffers_from_rank_zero()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._buffers_from_rank_zero()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._buffers_from_rank_zero()

    def _buffers_from_rank_zero(self) -> None:
        if self.broadcast_buffers or self.world_size < 2 or self.lightning_module is None:
            return
        broadcast_from_rank_zero(list(self.lightning_module.buffers()))


# torch 2.14 renamed DDP's broadcast of the buffers before each forward `forward_sync_buffers` and warns,
# on every rank, when the old name is passed; the new one also copies rank 0's buffers once when DDP
# wraps the model, which the old `broadcast_buffers=False` skipped (the ranks start from one model either way).
BUFFERS_ARGUMENT = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
    torch.nn.parallel.DistributedDataParallel.__init__).parameters else "broadcast_buffers")


def broadcast_from_rank_zero(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of `tensors` on every rank: one broadcast per dtype and device (flattened)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        torch.distributed.broadcast(flat, src=0)
        for t, value in zip(group, flat.split([t.numel() for t in group])):
            t.data.copy_(value.view_as(t))


def build_strategy(cfg: DictConfig | None, trainer: DictConfig, batch_size: int | None = None,
                   timeout_s: float | None = None, compile: bool | str | None = None) -> Any:
    """A Strategy object for groups with a `_target_` (ddp, fsdp, deepspeed...), else a registry name.

    lightdist's own factories (fsdp, deepspeed) are told the device type (to pick their CPU
    variant) and the precision; Lightning's classes are built as configured, its DDPStrategy as
    lightdist's DDPStrategy (the same, with ranks that release their process group at exit).
    `batch_size` (the data's, per rank) is what DeepSpeed is told its micro-batch is.
    `timeout_s` (distributed.timeout_s) is every strategy's process-group timeout.
    `compile` (the top-level key) goes to factories that compile parts of the model themselves (fsdp2).
    """
    timeout = collective_timeout(timeout_s)
    if cfg is None or "_target_" not in cfg:
        return (cfg or {}).get("name", "auto")
    params, _, _ = signature_of(cfg._target_)  # Lightning's, for DDP: lightdist's hides them in **kwargs
    if get_object(cfg._target_) is LightningDDPStrategy:
        cfg = OmegaConf.merge(cfg, {"_target_": f"{DDPStrategy.__module__}.{DDPStrategy.__qualname__}"})
    context = {"device_type": trainer.get("accelerator", "auto"), "precision": str(trainer.get("precision")),
               "timeout": timeout, "compile": compile or None}
    return _with_micro_batch(instantiate(cfg, **{k: v for k, v in context.items() if k in params and v is not None}), batch_size)


def collective_timeout(timeout_s: float | None) -> Any:
    """distributed.timeout_s as a timedelta, also given to the strategies Lightning builds from a
    name ("auto" picks "ddp" for several processes) through its strategy registry."""
    from lightning.pytorch.strategies import StrategyRegistry

    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ConfigError(f"distributed.timeout_s must be a positive number of seconds, got {timeout_s!r}",
                          hint="e.g. distributed.timeout_s=1800")
    timeout = timedelta(seconds=timeout_s)
    for name, entry in list(StrategyRegistry.items()):
        if "timeout" in inspect.signature(entry["strategy"]).parameters:
            StrategyRegistry.register(name, entry["strategy"], entry["description"], override=True,
                                      **{**entry["init_params"], "timeout": timeout})
    return timeout


def _with_micro_batch(strategy: Any, batch_size: int | None) -> Any:
    """DeepSpeed reads the per-rank batch size (for its throughput logs) from the train loader's
    batch_sampler, which loaders built on a sampler of whole batches (length-bucketed text) do not
    have: it is told the data config's batch size instead."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(strategy, DeepSpeedStrategy) and batch_size:
        strategy.config.setdefault("train_micro_batch_size_per_gpu", int(batch_size))
    return strategy


def trainer_arguments(cfg: DictConfig, strategy: Any, *plugins: Any) -> dict[str, Any]:
    """What a Trainer made from cfg.trainer takes besides it, for training and evaluation alike: the
    strategy, the cluster's plugins and `plugins`, the precision as a plugin where Lightning
    refuses it as a flag (64-true under fsdp2; the flag is then left unset), and NoProfiler where
    no profiler is configured (lightdist.no_profiler)."""
    precision = precision_plugin_for(strategy, cfg.trainer.get("precision"))
    every = [*cluster_plugins(cfg), *plugins, *([precision] if precision else [])]
    return {"strategy": strategy, "plugins": every or None, **({"precision": None} if precision else {}),
            **({} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()})}
