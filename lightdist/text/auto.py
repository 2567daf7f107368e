"""The text_auto recipe's planner: settings chosen from the training split of a user's corpus.

The data module calls `plan(train_texts, train_labels, tokenizer)` once, before the tokenizer is
fitted; the plan sets the tokenizer's model and max_length, and returns what the model
(lightdist.text.models.auto) and the trainer (train.py: max_epochs) take from it. It travels
in checkpoints with the data module's state, so eval and predict rebuild the same model.

The rules (measured on BBC News articles, headlines and sentences: docs/results.md):
- max_length: a percentile of the texts' lengths in words (runs of letters and digits, each
  punctuation run a word of its own: what the tokenizer's pre-tokenizer splits), rounded up
  to a multiple of 8, between `min_length` and `max_length`;
- tokenizer: whole words while the training split's distinct (lowercased) words fit the
  tokenizer's vocabulary size, WordPiece subwords beyond (whole words would turn the rarest
  ones into [UNK]; pieces still cover them);
- encoder: the fastText-style bag (word embeddings averaged) below `cnn_from` training texts,
  Kim's CNN from there on (the bag won at both sizes measured, 1,558 and 26,714 texts; where
  the CNN starts to win is not measured);
- epochs: enough for about `target_steps` optimizer steps, between `min_epochs` and `max_epochs`.
"""

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lightdist.errors import ConfigError

# What the tokenizer's Whitespace pre-tokenizer splits a text into: letter/digit runs and punctuation runs.
_WORDS = r"[\pL\pN_]+|[^\pL\pN_\s]+"

Encoder = Literal["fasttext", "cnn"]


def _arrow(texts: Any) -> pa.Array | pa.ChunkedArray:
    return texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.large_string())


def word_counts(texts: Any) -> np.ndarray:
    """Words per text (pyarrow Array/ChunkedArray or a list of strings), counted by pyarrow in C++."""
    return pc.count_substring_regex(_arrow(texts), _WORDS).to_numpy(zero_copy_only=False).astype(np.int64)


def distinct_words(texts: Any, sample: int = 200_000) -> int:
    """Distinct lowercased letter/digit words of the first `sample` texts (a bound on the work on huge corpora)."""
    texts = _arrow(texts)[:sample]
    letters = pc.replace_substring_regex(pc.utf8_lower(texts), r"[^\pL\pN_]+", " ")
    return len(pc.unique(pc.list_flatten(pc.utf8_split_whitespace(letters))))


class TextAutoPlanner:
    """Decides the tokenizer, the encoder and the epoch count from the training split (data.planner)."""

    def __init__(
        self,
        length_percentile: float = 95.0,
        min_length: int = 16,
        max_length: int = 512,
        cnn_from: int = 100_000,
        batch_size: int = 32,
        target_steps: int = 600,
        min_epochs: int = 3,
        max_epochs: int = 20,
        encoder: Encoder | None = None,
        tokenizer: Literal["word", "wordpiece", "bpe"] | None = None,
    ):
        if not 0 < length_percentile <= 100:
            raise ConfigError(f"data.planner.length_percentile={length_percentile} must be in (0, 100]")
        if not 1 <= min_length <= max_length:
            raise ConfigError(f"data.planner.min_length={min_length} / max_length={max_length}: need "
                              "1 <= min_length <= max_length")
        if not 1 <= min_epochs <= max_epochs:
            raise ConfigError(f"data.planner.min_epochs={min_epochs} / max_epochs={max_epochs}: need "
                              "1 <= min_epochs <= max_epochs")
        if encoder not in (None, "fasttext", "cnn"):
            raise ConfigError(f"data.planner.encoder={encoder!r} is not an encoder text_auto knows",
                              hint="use fasttext, cnn or null (chosen by corpus size)")
        self.length_percentile = float(length_percentile)
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.cnn_from = int(cnn_from)
        self.batch_size = int(batch_size)
        self.target_steps = int(target_steps)
        self.min_epochs, self.max_epochs = int(min_epochs), int(max_epochs)
        self.encoder, self.tokenizer = encoder, tokenizer

    def plan(self, train_texts: Any, train_labels: Any, tokenizer: Any = None) -> dict[str, Any]:
        """The plan for this training split; sets `tokenizer.model` and `tokenizer.max_length` when given."""
        words = word_counts(train_texts)
        size = int(words.shape[0])
        if size == 0:
            raise ConfigError("text_auto cannot plan for an empty training split")
        median = float(np.median(words))
        at_percentile = float(np.percentile(words, self.length_percentile))
        length = int(min(self.max_length, max(self.min_length, 8 * math.ceil(at_percentile / 8))))
        vocabulary = distinct_words(train_texts)
        fits = vocabulary + 2 <= getattr(tokenizer, "vocab_size_limit", 50_000)  # [PAD] and [UNK] take two ids
        token_model = self.tokenizer or ("word" if fits else "wordpiece")
        encoder = self.encoder or ("cnn" if size >= self.cnn_from else "fasttext")
        steps_per_epoch = math.ceil(size / self.batch_size)
        epochs = min(self.max_epochs, max(self.min_epochs, math.ceil(self.target_steps / steps_per_epoch)))
        if tokenizer is not None:
            tokenizer.model = token_model
            tokenizer.max_length = length
        return {
            "corpus": {"train_size": size, "classes": int(len(np.unique(np.asarray(train_labels)))),
                       "median_words": median, f"p{self.length_percentile:g}_words": at_percentile,
                       "distinct_words": vocabulary},
            "tokenizer": {"model": token_model, "max_length": length},
            "model": {"encoder": encoder},
            "trainer": {"max_epochs": int(epochs)},
        }
