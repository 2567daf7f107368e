"""Transfer learning for classification tasks: start from another run's weights, freeze
the backbone for a few epochs, distil from a teacher run.

Models stay plain nn.Modules; the one convention they follow is that the classifier is
their `head` attribute (every image and text classifier has one). Everything else is
the backbone.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from lightdist.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HEAD = "head"


def head_of(model: nn.Module) -> nn.Module:
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"model {type(model).__name__} has no `{HEAD}` module, so its backbone is unknown",
                          hint="fine-tune a model with a `head` classifier (resnet*, simple_cnn, text_*)")
    return head


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_of(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The model's direct children other than the head (what a freeze schedule freezes)."""
    head = head_of(model)
    return [m for m in model.children() if m is not head]


def _shape(value: Any) -> tuple:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def load_backbone(model: nn.Module, source: str | Path, ckpt: str = "best") -> dict[str, list[str]]:
    """Load the weights of `source` (a run directory, a checkpoint or a state-dict file) into `model`.

    Head weights that do not fit (another number of classes) are skipped and the new head
    keeps its fresh initialisation; backbone weights must all fit, or nothing is loaded.
    Returns the loaded and skipped keys.
    """
    from lightdist.runs import read_weights

    head_of(model)  # fail early on models without a head
    weights = read_weights(source, ckpt)
    target = model.state_dict()
    prefix = HEAD + "."
    loaded, skipped, misfit, missing = {}, [], [], []
    for key, value in target.items():
        if key not in weights:
            (skipped if key.startswith(prefix) else missing).append(key)
        elif _shape(weights[key]) != _shape(value):
            shapes = f"{key} {list(_shape(weights[key]))} vs {list(_shape(value))}"
            if key.startswith(prefix):
                skipped.append(key)
                log.info("init_from: head weight %s (source vs model) replaced by a fresh one", shapes)
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
        log.info("init_from %s: head not loaded (freshly initialised): %s", source, ", ".join(skipped))
    log.info("init_from %s: loaded %d tensors", source, len(loaded))
    return {"loaded": list(loaded), "skipped": skipped}


class BackboneFreeze(BaseFinetuning):
    """Freeze the model's backbone for the first `epochs` epochs, then train it too.

    Lightning's BackboneFinetuning adds the backbone to the optimizer as a new param group
    when it unfreezes; the step-based LambdaLR schedules of this project would not cover
    that group (and a resumed run would have to rebuild it). Here the backbone is in the
    optimizer from the start (its own groups at lr * backbone_lr_factor, skipped while it
    has no gradients), so unfreezing only switches gradients back on.
    """

    def __init__(self, epochs: int, train_bn: bool = True):
        super().__init__()
        self.epochs = epochs
        self.train_bn = train_bn
        self.frozen = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if stage == "fit" and not isinstance(trainer.strategy, (DDPStrategy, SingleDeviceStrategy)):
            raise ConfigError(f"freezing the backbone is not supported with {type(trainer.strategy).__name__}",
                              hint="use strategy=auto or ddp, or task.freeze_backbone_epochs=0")
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.epochs > 0:
            self.freeze(backbone_modules(pl_module.model), train_bn=self.train_bn)
            self.frozen = True

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        if self.frozen and epoch >= self.epochs:
            self.make_trainable(backbone_modules(pl_module.model))
            self.frozen = False
            log.info("epoch %d: backbone unfrozen", epoch)
            _rebuild_ddp(pl_module.trainer)


def _rebuild_ddp(trainer: L.Trainer) -> None:
    """DDP decides which parameters it reduces when it wraps the module (those requiring
    gradients then); a backbone unfrozen later would train apart on each rank. Wrapping
    again includes it (and broadcasts rank 0's weights, identical anyway)."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.model.module
        strategy.configure_ddp()


@dataclass
class Distillation:
    """Knowledge distillation from a trained run (Hinton et al. 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
    """

    teacher: str | None = None
    ckpt: str = "best"
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"task.distill.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"task.distill.alpha must be within [0, 1], got {self.alpha}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, temperature: float,
                      alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, soft loss). The T^2 factor keeps the soft gradients' scale independent of T."""
    soft = F.kl_div(F.log_softmax(student.float() / temperature, dim=-1),
                    F.log_softmax(teacher.float() / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return alpha * soft + (1 - alpha) * hard_loss, soft


def load_teacher(distill: Distillation, num_classes: int) -> tuple[nn.Module, Any]:
    """(the teacher's model, its rebuilt run): frozen, in eval mode, on the CPU until the first step."""
    from lightdist.runs import load_run

    run = load_run(distill.teacher, distill.ckpt)
    if run.facts.get("num_classes") != num_classes:
        raise ConfigError(f"teacher {run.run_dir} predicts {run.facts.get('num_classes')} classes, "
                          f"the student {num_classes}", hint="distil from a run on the same classes")
    model = run.model.eval()
    model.requires_grad_(False)
    return model, run


def check_sources(task_cfg: Any) -> None:
    """Before a run starts: the run/checkpoint/file named by init_from and distill.teacher exist and
    hold data only (loadable with weights_only=True)."""
    from lightdist.checkpoints import verify
    from lightdist.runs import find_checkpoint, is_run_dir, locate

    if task_cfg is None:
        return
    init_from = task_cfg.get("init_from")
    if init_from:
        source = Path(str(init_from)).expanduser()
        if not source.exists():
            raise CheckpointError(f"task.init_from: {init_from} does not exist",
                                  hint="pass task.init_from=<run directory, checkpoint or state-dict file>")
        verify(find_checkpoint(source.resolve(), task_cfg.get("init_ckpt", "best"))
               if is_run_dir(source.resolve()) else source)
    distill = task_cfg.get("distill")
    teacher = distill.get("teacher") if distill else None
    if teacher:
        if not Path(str(teacher)).expanduser().exists():
            raise CheckpointError(f"task.distill.teacher: {teacher} does not exist",
                                  hint="pass task.distill.teacher=<the teacher's run directory or a checkpoint in it>")
        run, checkpoint = locate(str(teacher), distill.get("ckpt", "best"))
        verify(checkpoint)
        if run is None:
            raise ConfigError(f"task.distill.teacher: {teacher} is not inside a run directory",
                              hint="pass the teacher's run directory (holding config.yaml) or a checkpoint in it")

