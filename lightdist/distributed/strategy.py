"""Turn the `strategy` config group into what Lightning's Trainer takes."""

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


def build_strategy(cfg: DictConfig | None) -> Any:
    """A Strategy object for groups with a `_target_` (ddp, fsdp, deepspeed...), else a registry name."""
    if cfg is None:
        return "auto"
    if "_target_" in cfg:
        return instantiate(cfg)
    return cfg.get("name", "auto")


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
