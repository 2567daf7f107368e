"""Transfer learning composed onto a classification task (config node `transfer`).

Four callbacks, each doing its part at setup, on every rank and before the strategy wraps
the model or Lightning builds the optimizer: the weights of another run (InitFrom), a
backbone frozen for the first epochs (BackboneFreeze), a backbone learning at a fraction
of the head's rate (BackboneLearningRate) and layer-wise learning-rate decay
(LayerLearningRateDecay), the last two through the Task base's parameter groups.
"""

import logging
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning

from lightdist.errors import ConfigError
from lightdist.tasks.transfer import backbone_modules, backbone_parameters, load_backbone

log = logging.getLogger(__name__)


def _model(pl_module: L.LightningModule):
    model = getattr(pl_module, "model", None)
    if model is None:
        raise ConfigError(f"transfer learning needs a task with a `model` (a classifier), not {type(pl_module).__name__}",
                          hint="set transfer.init_from=null, transfer.freeze_backbone_epochs=0 and "
                               "transfer.backbone_lr_factor=1.0")
    return model


class InitFrom(L.Callback):
    """Start from the model weights of `source` (a run directory, a checkpoint or a state-dict file)."""

    def __init__(self, source: str, ckpt: Literal["best", "last"] = "best"):
        self.source, self.ckpt = source, ckpt

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A resumed run restores its own weights from its checkpoint; the source run is not read again.
        if stage == "fit" and trainer.ckpt_path is None:
            load_backbone(_model(pl_module), self.source, self.ckpt)


class BackboneLearningRate(L.Callback):
    """The backbone learns at optimizer.lr * `factor`; the head at optimizer.lr."""

    def __init__(self, factor: float):
        self.factor = factor

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.scale_learning_rate(backbone_parameters(_model(pl_module)), self.factor)


class LayerLearningRateDecay(L.Callback):
    """Layer-wise lr decay: a parameter at depth d learns at lr * decay ** (top - d), the top (the
    head) at lr. The model numbers its own layers (`layer_depths()`: parameter name -> depth), so
    nothing here knows one architecture from another."""

    def __init__(self, decay: float):
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = _model(pl_module)
        if not callable(getattr(model, "layer_depths", None)):
            raise ConfigError(f"transfer.layer_lr_decay needs a model that numbers its layers (layer_depths()), "
                              f"which {type(model).__name__} does not", hint="set transfer.layer_lr_decay=null")
        depths = model.layer_depths()
        top = max(depths.values())
        pl_module.scale_learning_rates({p: self.decay ** (top - depths[name]) for name, p in model.named_parameters()
                                        if name in depths})


class BackboneFreeze(BaseFinetuning):
    """Freeze the model's backbone for the first `epochs` epochs, then train it too.

    Lightning's BackboneFinetuning adds the backbone to the optimizer as a new param group
    when it unfreezes; the step-based LambdaLR schedules of this project would not cover
    that group (and a resumed run would have to rebuild it). Here the backbone is in the
    optimizer from the start (skipped while it has no gradients), so unfreezing only
    switches gradients back on.
    """

    def __init__(self, epochs: int, train_bn: bool = True):
        super().__init__()
        self.epochs = epochs
        self.train_bn = train_bn
        self.frozen = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if stage != "fit":
            return
        if not isinstance(trainer.strategy, (DDPStrategy, SingleDeviceStrategy)):
            raise ConfigError(f"freezing the backbone is not supported with {type(trainer.strategy).__name__}",
                              hint="use strategy=auto or ddp, or transfer.freeze_backbone_epochs=0")
        _model(pl_module)
        pl_module.optimize_frozen = True  # the frozen backbone's groups exist from the first step
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


def transfer_callbacks(init_from: str | None = None, init_ckpt: Literal["best", "last"] = "best",
                       freeze_backbone_epochs: int = 0, backbone_lr_factor: float = 1.0,
                       train_bn: bool = True, layer_lr_decay: float | None = None) -> list[L.Callback]:
    """The callbacks of config node `transfer` (none with its defaults).

    init_from: weights of another run; head weights that do not fit (another number of classes)
    are replaced by a fresh head. freeze_backbone_epochs: train only the head this long.
    backbone_lr_factor: backbone lr = optimizer.lr * factor. train_bn: BatchNorm layers of a
    frozen backbone still learn. layer_lr_decay: each layer below the head learns at this
    factor of the rate of the layer above it (null: off).
    """
    if freeze_backbone_epochs < 0 or backbone_lr_factor < 0:
        raise ConfigError("transfer.freeze_backbone_epochs and transfer.backbone_lr_factor must be >= 0",
                          hint="set them to 0 (no freeze) and 1.0 (same lr) to switch them off")
    callbacks: list[L.Callback] = [InitFrom(init_from, init_ckpt)] if init_from else []
    if layer_lr_decay is not None and not 0.0 < layer_lr_decay <= 1.0:
        raise ConfigError(f"transfer.layer_lr_decay={layer_lr_decay} must be in (0, 1]",
                          hint="e.g. transfer.layer_lr_decay=0.9, or null to switch it off")
    if backbone_lr_factor != 1.0:
        callbacks.append(BackboneLearningRate(backbone_lr_factor))
    if layer_lr_decay is not None and layer_lr_decay != 1.0:
        callbacks.append(LayerLearningRateDecay(layer_lr_decay))
    if freeze_backbone_epochs > 0:
        callbacks.append(BackboneFreeze(freeze_backbone_epochs, train_bn))
    return callbacks
