"""A small Transformer encoder (pre-norm) with learned positions and a [CLS] or mean-pool head."""

from typing import Literal

import torch
from torch import nn

from lightdist.text.models.embedding import TokenEmbedding, length_mask, masked_mean


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_length: int,
        pad_id: int = 0,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int = 256,
        pool: Literal["cls", "mean"] = "mean",
        embedding_dropout: float = 0.0,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"model.d_model={d_model} must be a multiple of model.heads={heads}")
        self.pool = pool
        self.embed = TokenEmbedding(vocab_size, d_model, pad_id, embedding_dropout, dropout)
        # [CLS] is a learned vector put before the text, not a vocabulary entry: any tokenizer works.
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pool == "cls" else None
        self.positions = nn.Embedding(max_length + (1 if pool == "cls" else 0), d_model)
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        # Dropout on the attention weights draws one random number per (head, query, key): on CPU that
        # costs more than the attention itself, so it has its own rate (off by default).
        layer.self_attn.dropout = attention_dropout
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, : int(lengths.max())]  # padding beyond the longest text changes nothing
        x = self.embed(tokens)
        mask = length_mask(lengths.to(tokens.device), tokens.shape[1])
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        x = x + self.positions(torch.arange(x.shape[1], device=x.device))[None]
        x = self.encoder(x, src_key_padding_mask=~mask)
        features = x[:, 0] if self.cls is not None else masked_mean(x, mask)
        return self.head(features)
