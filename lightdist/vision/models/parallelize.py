"""Which modules of the image models are blocks: the units strategy=fsdp2 shards one by one (each
block's parameters gathered only while it runs). Models of torchvision and timm are not listed:
the strategy finds their repeated blocks by structure."""

from torch import nn

from lightdist.vision.models.cnn import SimpleCNN
from lightdist.vision.models.resnet import ResNet


def blocks(model: nn.Module) -> list[nn.Module] | None:
    """SimpleCNN: its convolution stages; ResNet: its BasicBlocks; None for a model not defined here."""
    if isinstance(model, SimpleCNN):
        return list(model.body)
    if isinstance(model, ResNet):
        return list(model.stages)
    return None
