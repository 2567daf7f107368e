"""The text_auto encoder: a fastText-style bag or Kim's CNN, whichever the data's plan chose.

The plan (lightdist.text.auto, the data fact `plan`) names the encoder; the config's keys set
its sizes and dropouts (null: the encoder's text_auto default). Without a plan (a config
composed without data.planner) it is the bag, the choice for small corpora.
"""

from typing import Any

import torch
from torch import nn

from lightdist.text.models.bag import NGramBag
from lightdist.text.models.cnn import KimCNN

# Defaults per encoder, from the bbc_news_fasttext and bbc_news_cnn recipes, except that the bag takes
# words alone: hashed bigrams scored lower on the three BBC corpora of docs/results.md (and a bucket
# table costs AdamW a dense update per step).
DEFAULTS = {
    "fasttext": {"embed_dim": 64, "ngrams": 1, "buckets": 50000, "embedding_dropout": 0.0, "dropout": 0.2},
    "cnn": {"embed_dim": 64, "kernel_sizes": [3, 4, 5], "channels": 64, "embedding_dropout": 0.3, "dropout": 0.5},
}


class AutoTextClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_id: int = 0,
        plan: dict[str, Any] | None = None,
        embed_dim: int | None = None,
        dropout: float | None = None,
        embedding_dropout: float | None = None,
        ngrams: int | None = None,
        buckets: int | None = None,
        channels: int | None = None,
        kernel_sizes: list[int] | None = None,
    ):
        super().__init__()
        self.kind = ((plan or {}).get("model") or {}).get("encoder", "fasttext")
        if self.kind not in DEFAULTS:
            raise ValueError(f"the plan names encoder {self.kind!r}; text_auto builds {', '.join(DEFAULTS)}")
        given = {"embed_dim": embed_dim, "dropout": dropout, "embedding_dropout": embedding_dropout,
                 "ngrams": ngrams, "buckets": buckets, "channels": channels, "kernel_sizes": kernel_sizes}
        settings = dict(DEFAULTS[self.kind])
        settings.update({k: v for k, v in given.items() if v is not None and k in settings})
        encoder = NGramBag if self.kind == "fasttext" else KimCNN
        self.encoder = encoder(vocab_size, num_classes, pad_id, **settings)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens, lengths)
