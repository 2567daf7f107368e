"""A bag of n-gram embeddings: the fastText classifier (Joulin et al. 2017).

Word vectors and hashed n-gram vectors are averaged into one document vector, followed by
a linear classifier (optionally one hidden layer). Fast, and a strong baseline on topic
classification.
"""

import torch
from torch import nn

from lightdist.text.models.embedding import TokenEmbedding

_HASH_PRIME = 1_000_003


def hashed_ngrams(tokens: torch.Tensor, lengths: torch.Tensor, n: int, buckets: int, offset: int,
                  pad_id: int) -> torch.Tensor:
    """Ids of the n-grams of each text (B x (T-n+1)), hashed into [offset, offset + buckets); pad past the end.

    An n-gram starting at t exists only when t + n <= length, so padding never makes n-grams.
    """
    width = tokens.shape[1] - n + 1
    if width <= 0:
        return tokens.new_full((tokens.shape[0], 0), pad_id)
    h = tokens[:, :width].clone()
    for k in range(1, n):
        h = (h * _HASH_PRIME + tokens[:, k : k + width]) % buckets
    valid = torch.arange(width, device=tokens.device)[None, :] + n <= lengths[:, None]
    return torch.where(valid, h + offset, torch.full_like(h, pad_id))


class NGramBag(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        embed_dim: int = 64,
        ngrams: int = 2,
        buckets: int = 200_000,
        hidden: int = 0,
        embedding_dropout: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if ngrams < 1:
            raise ValueError("model.ngrams must be >= 1 (1: words only)")
        self.ngrams, self.buckets, self.vocab_size, self.pad_id = ngrams, buckets, vocab_size, pad_id
        # One table: words first, then the n-gram hash buckets (fastText's layout).
        rows = vocab_size + (buckets if ngrams > 1 else 0)
        self.embed = TokenEmbedding(rows, embed_dim, pad_id, embedding_dropout, dropout=0.0)
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden if hidden > 0 else embed_dim, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ids = [tokens]
        for n in range(2, self.ngrams + 1):
            ids.append(hashed_ngrams(tokens, lengths, n, self.buckets, self.vocab_size, self.pad_id))
        ids = torch.cat(ids, dim=1)
        vectors = self.embed(ids)
        mask = (ids != self.pad_id).unsqueeze(-1).to(vectors.dtype)
        doc = (vectors * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(self.dropout(doc))
