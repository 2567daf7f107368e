"""Which modules of the text models are blocks: the units strategy=fsdp2 shards one by one (each
block's parameters gathered only while it runs). The token embedding, usually the largest
tensor, is a block of every model."""

from torch import nn

from lightdist.text.models.auto import AutoTextClassifier
from lightdist.text.models.bag import NGramBag
from lightdist.text.models.cnn import KimCNN
from lightdist.text.models.pretrained import HFEncoderClassifier
from lightdist.text.models.rnn import RNNClassifier
from lightdist.text.models.transformer import TransformerClassifier


def _layer_list(encoder: nn.Module) -> list[nn.Module]:
    """A Hugging Face encoder's transformer layers: its first ModuleList of several modules."""
    return next((list(m) for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) > 1), [])


def blocks(model: nn.Module) -> list[nn.Module] | None:
    """The blocks of a text model defined in this package; None for another model."""
    if isinstance(model, AutoTextClassifier):
        return blocks(model.encoder)
    if isinstance(model, TransformerClassifier):
        return [model.embed, *model.encoder.layers]
    if isinstance(model, HFEncoderClassifier):
        return _layer_list(model.encoder)
    if isinstance(model, RNNClassifier):
        return [model.embed, model.rnn]
    if isinstance(model, KimCNN | NGramBag):
        return [model.embed]
    return None
