"""A vocabulary trained on the training split with Hugging Face `tokenizers`.

Normalisation (NFKC, optional lowercasing and accent stripping), pre-tokenisation and the
subword model all live in one `tokenizers.Tokenizer`, which serialises to one JSON file:
the run directory keeps it as `tokenizer.json` and checkpoints carry it, so evaluation and
prediction always use the vocabulary the model was trained with.

Scripts written without spaces (Chinese, Japanese) are split into single characters by
the pre-tokenizer (`segmenter=char`, needs nothing); `segmenter=jieba` segments Chinese
into words with jieba first (`pip install lightdist[text-zh]`).
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lightdist.errors import ConfigError

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL_TOKENS = (PAD, UNK)  # ids 0 and 1 in every vocabulary
SUBWORD_PREFIX = "##"

# One token per character for these scripts (no spaces between words): Han ideographs, and the
# two Japanese syllabaries with their prolonged-sound mark.
_HAN = r"\p{Han}"
_KANA = r"\p{Hiragana}\p{Katakana}\x{30FC}"

# Texts per encode_batch call: large enough for the Rust thread pool, small enough for memory.
BATCH = 8192

TokenizerModel = Literal["wordpiece", "bpe", "word"]
Segmenter = Literal["char", "jieba", "none"]


def text_batches(texts: Iterable[str] | pa.Array | pa.ChunkedArray, size: int | None = None) -> Iterator[list[str]]:
    """Lists of at most `size` (default BATCH) strings: Arrow text columns are converted one slice at a time."""
    size = size or BATCH
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        for start in range(0, len(texts), size):
            yield texts.slice(start, size).to_pylist()
        return
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


class TextTokenizer:
    """Configured from the data config; `fit` trains it, `encode` turns texts into id lists."""

    def __init__(
        self,
        model: TokenizerModel = "wordpiece",
        vocab_size: int = 20000,
        min_frequency: int = 2,
        lowercase: bool = True,
        strip_accents: bool = False,
        max_length: int = 512,
        segmenter: Segmenter = "char",
    ):
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ConfigError(f"tokenizer vocab_size={vocab_size} is too small", hint="use at least a few hundred")
        if max_length < 1:
            raise ConfigError(f"tokenizer max_length={max_length} must be >= 1")
        self.model = model
        self.vocab_size_limit = vocab_size
        self.min_frequency = min_frequency
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_length = max_length
        self.segmenter = segmenter
        self._tokenizer: Tokenizer | None = None
        if segmenter == "jieba":
            _jieba()  # fail at construction (preflight), not after the corpus was read

    # -- building -----------------------------------------------------------------------------
    def _empty(self) -> Tokenizer:
        if self.model == "word":
            tok = Tokenizer(models.WordLevel(unk_token=UNK))
        elif self.model == "bpe":
            tok = Tokenizer(models.BPE(unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX))
        else:
            tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX))
        steps = [normalizers.NFKC()]
        if self.strip_accents:
            steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
        if self.lowercase:
            steps.append(normalizers.Lowercase())
        tok.normalizer = normalizers.Sequence(steps)
        # With jieba, Chinese arrives already split into words; characters are isolated otherwise.
        no_spaces = _KANA if self.segmenter == "jieba" else _HAN + _KANA
        split = [pre_tokenizers.Split(Regex(f"[{no_spaces}]"), behavior="isolated")] if self.segmenter != "none" else []
        tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Whitespace()])
        tok.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX)
        tok.enable_truncation(self.max_length)
        return tok

    def _trainer(self):
        common = {"vocab_size": self.vocab_size_limit, "min_frequency": self.min_frequency,
                  "special_tokens": list(SPECIAL_TOKENS), "show_progress": False}
        if self.model == "word":
            return trainers.WordLevelTrainer(**common)
        if self.model == "bpe":
            return trainers.BpeTrainer(continuing_subword_prefix=SUBWORD_PREFIX, **common)
        return trainers.WordPieceTrainer(continuing_subword_prefix=SUBWORD_PREFIX, **common)

    def fit(self, texts: Iterable[str] | pa.Array | pa.ChunkedArray) -> "TextTokenizer":
        """Train the vocabulary on texts streamed in batches (an Arrow column is never copied whole).

        Deterministic: every rank trains the same one from the same split."""
        tok = self._empty()
        batches = ([self.segment(t) for t in batch] for batch in text_batches(texts))
        tok.train_from_iterator(batches, self._trainer())
        if self.model == "wordpiece":
            # tokenizers' WordPiece trainer learns the same set of tokens in every process but numbers
            # them in hash-map order, which differs between processes (and so between DDP ranks).
            # Renumber canonically: special tokens first, then the rest in sorted order.
            vocab = tok.get_vocab()
            ordered = list(SPECIAL_TOKENS) + sorted(t for t in vocab if t not in SPECIAL_TOKENS)
            tok.model = models.WordPiece({t: i for i, t in enumerate(ordered)}, unk_token=UNK,
                                         continuing_subword_prefix=SUBWORD_PREFIX)
        for i, special in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(special) != i:
                raise RuntimeError(f"{special} did not get id {i}")
        self._tokenizer = tok
        return self

    # -- using --------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self._tokenizer is not None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the tokenizer is not trained yet: call fit() or load_state()")
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS.index(PAD)

    @property
    def unk_id(self) -> int:
        return SPECIAL_TOKENS.index(UNK)

    def segment(self, text: str) -> str:
        """Word segmentation for Chinese when jieba is chosen (space-joined words); the text itself otherwise."""
        if self.segmenter != "jieba":
            return text
        return " ".join(_jieba().cut(text))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids, truncated to max_length; a text without any token becomes [UNK] (never empty)."""
        encodings = self.tokenizer.encode_batch([self.segment(t) for t in texts])
        return [e.ids if e.ids else [self.unk_id] for e in encodings]

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(self.segment(text)).tokens

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def fingerprint(self) -> str:
        """A stable hash of everything encode() depends on: cached token ids are valid while it holds."""
        what = {"tokenizer": self.tokenizer.to_str(), "segmenter": self.segmenter, "max_length": self.max_length}
        if self.segmenter == "jieba":  # its dictionary, hence its words, may change between versions
            what["jieba"] = getattr(_jieba(), "__version__", "")
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_str(), "segmenter": self.segmenter}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("segmenter", self.segmenter) != self.segmenter:
            raise ConfigError(f"the saved tokenizer used segmenter={state['segmenter']}, the config says "
                              f"{self.segmenter}", hint=f"set data.tokenizer.segmenter={state['segmenter']}")
        self._set(Tokenizer.from_str(state["tokenizer"]))

    def _set(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        if tokenizer.truncation:  # the saved limit wins: the model was built for it
            self.max_length = tokenizer.truncation["max_length"]

    def save(self, path: Path) -> None:
        save_tokenizer(self.tokenizer, path)

    def load(self, path: Path) -> None:
        self._set(Tokenizer.from_file(str(path)))


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """tokenizer.json in the Hugging Face format (`tokenizers.Tokenizer.from_file` reads it back as
    is), written under a temporary name and renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json.loads(tokenizer.to_str()), ensure_ascii=False, indent=1))
    tmp.replace(path)


def _jieba():
    try:
        import jieba
    except ImportError as exc:
        raise ConfigError("data.tokenizer.segmenter=jieba needs the jieba package",
                          hint="pip install 'lightdist[text-zh]', or use segmenter=char (one token per character)") from exc
    jieba.setLogLevel(logging.WARNING)
    return jieba
