"""Turn the `strategy` config group into what Lightning's Trainer takes."""

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from lightdist.config.validate import signature_of


def build_strategy(cfg: DictConfig | None, trainer: DictConfig) -> Any:
    """A Strategy object for groups with a `_target_` (ddp, fsdp, deepspeed...), else a registry name.

    lightdist's own factories (fsdp, deepspeed) are told the device type (to pick their CPU
    variant) and the precision; Lightning's classes are built as configured.
    """
    if cfg is None:
        return "auto"
    if "_target_" not in cfg:
        return cfg.get("name", "auto")
    params, _, _ = signature_of(cfg._target_)
    context = {"device_type": trainer.get("accelerator", "auto"), "precision": str(trainer.get("precision"))}
    return instantiate(cfg, **{k: v for k, v in context.items() if k in params})


def processes_per_node(trainer_cfg: DictConfig) -> int:
    """How many ranks this node will run (what CPU threads are divided among)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    return 1
