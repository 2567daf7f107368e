"""Token embeddings with the two dropouts text models use, and masked pooling over time."""

import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbedding(nn.Module):
    """nn.Embedding (the padding row stays zero) with embedding dropout and dropout on its output.

    `embedding_dropout` drops whole word types (rows of the table) per step, as in Gal &
    Ghahramani (2016) and AWD-LSTM: every occurrence of a dropped word in the batch
    vanishes, so the model cannot lean on a few keywords. torch has no such layer, hence
    the few lines here. `dropout` is ordinary dropout on the embedded vectors.
    """

    def __init__(self, vocab_size: int, embed_dim: int, pad_id: int, embedding_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        nn.init.normal_(self.embedding.weight, std=embed_dim ** -0.5)
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.pad_id = pad_id
        self.embedding_dropout = embedding_dropout
        self.dropout = nn.Dropout(dropout)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        if self.training and self.embedding_dropout > 0:
            keep = 1.0 - self.embedding_dropout
            mask = weight.new_empty(weight.shape[0], 1).bernoulli_(keep) / keep
            weight = weight * mask
        return self.dropout(F.embedding(tokens, weight, padding_idx=self.pad_id))


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """B x T bool, True at real (non-padding) positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time (dim 1) of B x T x D at mask positions."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over time (dim 1) of B x T x D at mask positions."""
    return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)
