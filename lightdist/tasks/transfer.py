"""What transfer learning and distillation need to know of a classifier: its backbone, how
another run's weights load into it, the distillation objective, and the preflight check of
the runs they start from. The callbacks that apply them live in lightdist.callbacks.transfer
and lightdist.callbacks.distillation.

Models stay plain nn.Modules. The classifier (head) is found where the libraries keep it
(head_of); everything else is the backbone.
"""

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightdist.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HEAD = "head"
# Where classifiers keep their last layer(s), after timm's get_classifier(): lightdist's models
# and timm/torchvision ViT, Swin (head); torchvision ResNet, RegNet, ShuffleNet... (fc); VGG,
# MobileNet, EfficientNet, ConvNeXt, DenseNet... (classifier); torchvision ViT (heads).
HEAD_NAMES = (HEAD, "fc", "classifier", "heads")


def head_of(model: nn.Module) -> nn.Module:
    """The classifier of `model`: timm's get_classifier(), else the first of HEAD_NAMES it has."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    for name in HEAD_NAMES:
        if isinstance(head, nn.Module):
            break
        head = getattr(model, name, None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"model {type(model).__name__} has no `{HEAD}` module (nor fc, classifier, heads or "
                          "timm's get_classifier()), so its backbone is unknown",
                          hint="fine-tune a classifier: lightdist's models, model=timm or model=torchvision")
    return head


def head_name(model: nn.Module) -> str:
    """The qualified name of the head (the prefix of its state_dict keys)."""
    head = head_of(model)
    return next(name for name, module in model.named_modules() if module is head)


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_of(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The largest modules outside the head (what a freeze schedule freezes): the model's children
    other than the head; a child holding the head nested (timm's head.fc) is split the same way."""
    head = head_of(model)

    def outside(module: nn.Module) -> list[nn.Module]:
        found = []
        own = dict(module.named_parameters(recurse=False))
        if own:  # parameters of a module around the head (a ViT's pos_embed, cls_token)
            holder = nn.Module()  # holds the same Parameter objects, so freezing it freezes them
            for name, param in own.items():
                holder.register_parameter(name, param)
            found.append(holder)
        for child in module.children():
            if child is head:
                continue
            found += outside(child) if any(m is head for m in child.modules()) else [child]
        return found

    return outside(model)


def _shape(value: Any) -> tuple:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def load_backbone(model: nn.Module, source: str | Path, ckpt: str = "best") -> dict[str, list[str]]:
    """Load the weights of `source` (a run directory, a checkpoint or a state-dict file) into `model`.

    Head weights that do not fit (another number of classes) are skipped and the new head
    keeps its fresh initialisation; backbone weights must all fit, or nothing is loaded.
    Returns the loaded and skipped keys.
    """
    from lightdist.runs import read_weights

    prefix = head_name(model) + "."  # fails early on models without a head
    weights = read_weights(source, ckpt)
    target = model.state_dict()
    loaded, skipped, misfit, missing = {}, [], [], []
    for key, value in target.items():
        if key not in weights:
            (skipped if key.startswith(prefix) else missing).append(key)
        elif _shape(weights[key]) != _shape(value):
            shapes = f"{key} {list(_shape(weights[key]))} vs {list(_shape(value))}"
            if key.startswith(prefix):
                skipped.append(key)
                log.info("transfer.init_from: head weight %s (source vs model) replaced by a fresh one", shapes)
            else:
                misfit.append(shapes)
        else:
            loaded[key] = weights[key]
    unexpected = [k for k in weights if k not in target and not k.startswith(prefix)]
    if misfit or missing or unexpected:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("shape mismatch (source vs model)", misfit), ("missing in source", missing),
                                     ("not in model", unexpected)) if keys]
        raise CheckpointError(f"the weights of {source} do not fit the backbone of {type(model).__name__} "
                              f"({'; '.join(parts)})",
                              hint="pick the model (and its depth/width/channels) the source run was trained with")
    model.load_state_dict(loaded, strict=False)
    if skipped:
        log.info("transfer.init_from %s: head not loaded (freshly initialised): %s", source, ", ".join(skipped))
    log.info("transfer.init_from %s: loaded %d tensors", source, len(loaded))
    return {"loaded": list(loaded), "skipped": skipped}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, temperature: float,
                      alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, soft loss). The T^2 factor keeps the soft gradients' scale independent of T."""
    dtype = torch.promote_types(student.dtype, torch.float32)  # half precision in float32; float64 kept
    soft = F.kl_div(F.log_softmax(student.to(dtype) / temperature, dim=-1),
                    F.log_softmax(teacher.to(dtype) / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return alpha * soft + (1 - alpha) * hard_loss, soft


def check_sources(cfg: Any) -> None:
    """Before a run starts: the `transfer` and `distill` nodes of the composed config `cfg` build
    (their values are valid), and the run/checkpoint/file named by transfer.init_from and
    distill.teacher exist and hold data only (loadable with weights_only=True)."""
    from hydra.utils import instantiate

    from lightdist.checkpoints import verify
    from lightdist.runs import find_checkpoint, is_run_dir, locate

    if cfg is None:
        return
    for node in ("transfer", "distill"):
        if cfg.get(node):
            instantiate(cfg[node])  # builds the callbacks only: nothing is read yet
    transfer = cfg.get("transfer") or {}
    init_from = transfer.get("init_from")
    if init_from:
        source = Path(str(init_from)).expanduser()
        if not source.exists():
            raise CheckpointError(f"transfer.init_from: {init_from} does not exist",
                                  hint="pass transfer.init_from=<run directory, checkpoint or state-dict file>")
        verify(find_checkpoint(source.resolve(), transfer.get("init_ckpt", "best"))
               if is_run_dir(source.resolve()) else source)
    distill = cfg.get("distill") or {}
    teacher = distill.get("teacher")
    if teacher:
        if not Path(str(teacher)).expanduser().exists():
            raise CheckpointError(f"distill.teacher: {teacher} does not exist",
                                  hint="pass distill.teacher=<the teacher's run directory or a checkpoint in it>")
        run, checkpoint = locate(str(teacher), distill.get("ckpt", "best"))
        verify(checkpoint)
        if run is None:
            raise ConfigError(f"distill.teacher: {teacher} is not inside a run directory",
                              hint="pass the teacher's run directory (holding config.yaml) or a checkpoint in it")


def pretrained_statistics(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel of the pretrained weights `model` starts from; None when it has none.

    The convention, like `head`: a model built from pretrained weights (vision.models.hub) carries
    them as its `pretrained_statistics` attribute, {"mean": [...], "std": [...]}.
    """
    stats = getattr(model, "pretrained_statistics", None)
    if not stats:
        return None
    return tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])

