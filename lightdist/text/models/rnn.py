"""A bidirectional LSTM or GRU over word embeddings, run on packed sequences (no step over padding)."""

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightdist.text.models.embedding import TokenEmbedding, length_mask, masked_max, masked_mean


class RNNClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        cell: Literal["lstm", "gru"] = "lstm",
        embed_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
        pool: Literal["last", "max", "mean"] = "max",
        embedding_dropout: float = 0.0,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.embed = TokenEmbedding(vocab_size, embed_dim, pad_id, embedding_dropout, dropout)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.pool == "last":
            h = state[0] if isinstance(state, tuple) else state  # (layers * directions) x B x H
            directions = 2 if self.rnn.bidirectional else 1
            features = torch.cat(list(h[-directions:]), dim=1)  # the last layer's final state per direction
        else:
            out, _ = pad_packed_sequence(out, batch_first=True)
            mask = length_mask(lengths.to(out.device), out.shape[1])
            features = masked_max(out, mask) if self.pool == "max" else masked_mean(out, mask)
        return self.head(self.dropout(features))
