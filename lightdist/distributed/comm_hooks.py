"""strategy.comm_hook: the name of a torch DDP communication hook, as Lightning's DDPStrategy arguments.

A hook decides what a gradient bucket's all-reduce sends: fp16/bf16 halve the bytes (each rank's
gradients are rounded to 16 bits before they are summed, the mean is cast back), powersgd sends a
low-rank approximation (rank `powersgd_rank`) with error feedback, after `powersgd_start_step`
plain steps. None: DDP's own all-reduce, exact.
"""

from typing import Any

from lightdist.errors import ConfigError

COMM_HOOKS = ("fp16", "bf16", "powersgd")


def comm_hook_arguments(name: str | None, powersgd_rank: int = 1, powersgd_start_step: int = 1000) -> dict[str, Any]:
    """ddp_comm_state / ddp_comm_hook for Lightning's DDPStrategy ({} for None)."""
    if name is None:
        return {}
    check_comm_hook(name)
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if name == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        # process_group=None: the default group, looked up when the hook first runs (after DDP set-up).
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=int(powersgd_rank),
                                            start_powerSGD_iter=int(powersgd_start_step))
        return {"ddp_comm_state": state, "ddp_comm_hook": powerSGD_hook.powerSGD_hook}
    # The compress hooks take the process group as state: None is the default group.
    return {"ddp_comm_state": None, "ddp_comm_hook": getattr(default_hooks, f"{name}_compress_hook")}


def check_comm_hook(name: Any, powersgd_rank: Any = 1, powersgd_start_step: Any = 1000) -> None:
    """Refuse a hook name this torch does not have, or PowerSGD settings it cannot use."""
    if name is None:
        return
    if name not in COMM_HOOKS:
        raise ConfigError(f"strategy.comm_hook={name!r} is not a DDP communication hook lightdist knows",
                          hint=f"strategy.comm_hook=null or one of {', '.join(COMM_HOOKS)}")
    if name in ("fp16", "bf16"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        if not hasattr(default_hooks, f"{name}_compress_hook"):
            raise ConfigError(f"strategy.comm_hook={name}: this torch has no {name}_compress_hook",
                              hint="strategy.comm_hook=fp16 (or null)")
    if name == "powersgd":
        for key, value, least in (("powersgd_rank", powersgd_rank, 1), ("powersgd_start_step", powersgd_start_step, 2)):
            # PowerSGD's error feedback and warm start need at least one plain all-reduce step first.
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"strategy.{key}={value!r} must be an integer >= {least}",
                                  hint=f"strategy.{key}={max(least, 1)}")


def check_strategy_comm_hook(trainer: Any, strategy: Any) -> None:
    """Preflight: a comm hook only under DDP, with a name and settings this torch and device can use."""
    from lightdist.config.validate import strategy_family

    name = (strategy or {}).get("comm_hook")
    if name is None:
        return
    family = strategy_family(strategy)
    if family != "ddp" or "_target_" not in strategy:
        raise ConfigError(f"strategy.comm_hook={name} is a DDP communication hook; strategy "
                          f"{family if family != 'ddp' else 'without a _target_'} has none",
                          hint="strategy.comm_hook=null, or strategy=ddp")
    check_comm_hook(name, strategy.get("powersgd_rank", 1), strategy.get("powersgd_start_step", 1000))
    if name == "bf16" and trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError("strategy.comm_hook=bf16: this GPU has no bfloat16 all-reduce",
                              hint="strategy.comm_hook=fp16 (or null)")
