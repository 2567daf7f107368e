"""Kim (2014)'s CNN for sentence classification: 1-D convolutions of several widths over word
embeddings, max-over-time pooling, dropout, a linear classifier."""

import torch
import torch.nn.functional as F
from torch import nn

from lightdist.text.models.embedding import TokenEmbedding, masked_max


class KimCNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        embed_dim: int = 128,
        kernel_sizes: list[int] = (3, 4, 5),
        channels: int = 100,
        embedding_dropout: float = 0.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.kernel_sizes = [int(k) for k in kernel_sizes]
        self.embed = TokenEmbedding(vocab_size, embed_dim, pad_id, embedding_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in self.kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(self.kernel_sizes), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)  # B x D x T
        widest = max(self.kernel_sizes)
        if x.shape[-1] < widest:  # a text shorter than a kernel still gets one window (zero padding)
            x = F.pad(x, (0, widest - x.shape[-1]))
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            h = torch.relu(conv(x)).transpose(1, 2)  # B x (T-k+1) x C
            # Only windows inside the text (or the first one for texts shorter than k): extra padding
            # in a longer batch adds windows that must not count.
            valid = torch.arange(h.shape[1], device=h.device)[None, :] <= (lengths[:, None] - k).clamp_min(0)
            pooled.append(masked_max(h, valid))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))
