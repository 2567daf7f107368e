"""A pretrained Hugging Face transformer encoder with a classification head.

The encoder comes from `transformers.AutoModel` (a local folder saved with save_pretrained,
or a hub name while online); [CLS] or mean pooling over the real tokens (the attention mask
and the pooling both come from the batch's lengths), dropout and a linear `head`. Its
tokenizer is the data side's business (lightdist.text.data.pretrained.PretrainedTokenizer).
"""

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lightdist.errors import ConfigError
from lightdist.text.models.embedding import length_mask, masked_mean


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: read the local cache only, never ask the hub."""
    import os

    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE",
                                                                                   "TRANSFORMERS_OFFLINE"))


def _from_hub(loader, path: str, **kwargs):
    """loader(path) reading local files only when `path` is a folder or the hub is switched off."""
    try:
        return loader(path, local_files_only=offline() or Path(path).expanduser().is_dir(), **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.path={path}: no Hugging Face model there ({first})",
                          hint="point model.path at a folder saved with save_pretrained (config.json), "
                               "or at a hub name while online") from exc


class HFEncoderClassifier(nn.Module):
    def __init__(
        self,
        path: str,
        num_classes: int,
        pretrained: bool = True,
        pooling: Literal["cls", "mean"] = "cls",
        dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        vocab_size: int | None = None,
        max_length: int | None = None,
    ):
        """`vocab_size` and `max_length` (the data's facts) are checked against the encoder:
        token ids beyond its embeddings or texts beyond its positions cannot be read."""
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        super().__init__()
        hf_logging.disable_progress_bar()  # a bar per load clutters the run's log
        path = str(path)
        config = _from_hub(AutoConfig.from_pretrained, path)
        if vocab_size is not None and vocab_size > config.vocab_size:
            raise ConfigError(f"the tokenizer has {vocab_size} tokens, the encoder at {path} embeds "
                              f"{config.vocab_size}", hint="use the model's own tokenizer (model.data_tokenizer)")
        positions = getattr(config, "max_position_embeddings", None)
        if max_length is not None and positions is not None and max_length > positions:
            raise ConfigError(f"texts of up to {max_length} tokens, but the encoder at {path} has {positions} positions",
                              hint=f"set model.data_tokenizer.max_length={positions} or less")
        if pretrained:
            # float32 weights whatever the file holds: mixed precision (bf16-mixed) casts per operation
            self.encoder = _from_hub(AutoModel.from_pretrained, path, config=config, dtype=torch.float32)
        else:  # a checkpoint of this run holds every weight: the architecture alone
            self.encoder = AutoModel.from_config(config, dtype=torch.float32)
        self.encoder.train()  # from_pretrained returns it in eval mode, which Lightning would keep (no dropout)
        if isinstance(getattr(self.encoder, "pooler", None), nn.Module):
            # BERT's own pooler is not used here; left in, DDP would find parameters without gradients
            self.encoder.pooler = None
        if gradient_checkpointing:
            if not self.encoder.supports_gradient_checkpointing:
                raise ConfigError(f"{type(self.encoder).__name__} does not support gradient checkpointing",
                                  hint="set model.gradient_checkpointing=false")
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pooling = pooling
        self.num_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, : int(lengths.max())]  # padding beyond the longest text changes nothing
        mask = length_mask(lengths.to(tokens.device), tokens.shape[1])
        hidden = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        features = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, mask)
        return self.head(self.dropout(features))

    def layer_depths(self) -> dict[str, int]:
        """Parameter name -> depth for layer-wise learning-rate decay: 0 for the embeddings, i + 1
        for the encoder's i-th block (the first number in the name), and num_layers + 1 for the
        rest (final norms, the head), which learns at the full rate."""
        import re

        top = self.num_layers + 1
        depths = {}
        for name, _ in self.named_parameters():
            block = re.search(r"\.(\d+)\.", name)
            if name.startswith("encoder.") and block:
                depths[name] = min(int(block.group(1)) + 1, top)
            elif name.startswith("encoder.") and "embed" in name:
                depths[name] = 0
            else:
                depths[name] = top
        return depths
