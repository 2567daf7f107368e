"""A pretrained model's own tokenizer (Hugging Face format), in place of one trained on the corpus.

Token ids mean something only to the model whose embeddings they index, so a fine-tuned
encoder reads text through the tokenizer it was pretrained with: `<path>/tokenizer.json`
read by the `tokenizers` library, else whatever `transformers.AutoTokenizer` finds at the
path (a hub name, a vocab.txt), taken as its Rust backend. It follows the data module's
tokenizer protocol (fit is a no-op), adds the model's special tokens ([CLS] text [SEP]) and
truncates to min(max_length, the positions the model has).
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from lightdist.errors import ConfigError
from lightdist.text.data.tokenizer import save_tokenizer
from lightdist.text.models.pretrained import offline


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class PretrainedTokenizer:
    """The tokenizer saved with a pretrained model at `path` (a local folder or a hub name)."""

    def __init__(self, path: str, max_length: int = 512):
        if max_length < 1:
            raise ConfigError(f"tokenizer max_length={max_length} must be >= 1")
        self.path = str(path)
        folder = Path(self.path).expanduser()
        if not folder.is_dir() and (self.path.startswith(("/", ".", "~")) or folder.exists()):
            # a filesystem path, not a hub name: refused while the config is checked, before the run
            raise ConfigError(f"model.path={self.path} is not a folder",
                              hint="point model.path at a folder saved with save_pretrained, or at a hub name")
        self.max_length = max_length
        self._tokenizer: Tokenizer | None = None
        self._specials: dict[str, str | None] = {}

    # -- loading ---------------------------------------------------------------------------
    def _load(self) -> None:
        folder = Path(self.path).expanduser()
        if (folder / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config = _read_json(folder / "tokenizer_config.json") | _read_json(folder / "special_tokens_map.json")
            specials = {k: _token(config.get(f"{k}_token")) for k in ("cls", "sep", "pad", "unk")}
            # both may bound the length (RoBERTa has 514 positions for 512 tokens): the smaller holds
            limits = [config.get("model_max_length"), _read_json(folder / "config.json").get("max_position_embeddings")]
            limit = min((x for x in limits if isinstance(x, int) and x > 0), default=None)
        else:
            tok, specials, limit = self._auto()
        self._specials = specials
        self._prepare(tok, limit)

    def _auto(self) -> tuple[Tokenizer, dict[str, str | None], int | None]:
        try:
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(self.path, local_files_only=offline() or Path(self.path).is_dir())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.path={self.path}: no tokenizer there ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})",
                              hint="point model.path at a folder saved with save_pretrained (tokenizer.json), "
                                   "or at a hub name while online") from exc
        backend = getattr(auto, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"model.path={self.path}: its tokenizer has no fast (Rust) version",
                              hint="save the model with a tokenizer.json (PreTrainedTokenizerFast)")
        specials = {k: getattr(auto, f"{k}_token", None) for k in ("cls", "sep", "pad", "unk")}
        limit = getattr(auto, "model_max_length", None)
        return Tokenizer.from_str(backend.to_str()), specials, limit

    def _prepare(self, tok: Tokenizer, limit: int | None) -> None:
        """Special tokens added, no padding (batches are padded by the data module), truncated."""
        cls, sep = self._specials.get("cls"), self._specials.get("sep")
        if tok.post_processor is None and cls and sep and None not in (tok.token_to_id(cls), tok.token_to_id(sep)):
            tok.post_processor = processors.TemplateProcessing(
                single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
        tok.no_padding()
        if isinstance(limit, int) and 0 < limit < 10**6:  # tokenizers without a limit say 1e30
            self.max_length = min(self.max_length, limit)
        tok.enable_truncation(self.max_length)
        self._tokenizer = tok

    # -- the tokenizer protocol -------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return True  # nothing to learn; loaded when first used

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    def fit(self, texts: Iterable[str]) -> "PretrainedTokenizer":
        return self

    def _special_id(self, kind: str, default: int) -> int:
        token = self._specials.get(kind)
        found = self.tokenizer.token_to_id(token) if token else None
        return default if found is None else found

    @property
    def pad_id(self) -> int:
        padding = self.tokenizer.padding  # None: padding is switched off here; the id is the model's
        return self._special_id("pad", padding["pad_id"] if padding else 0)

    @property
    def unk_id(self) -> int:
        return self._special_id("unk", self.pad_id)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, truncated to max_length; never empty."""
        return [e.ids if e.ids else [self.unk_id] for e in self.tokenizer.encode_batch(list(texts))]

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def fingerprint(self) -> str:
        """What encoding depends on: the tokenizer itself (its truncation, hence max_length, included)."""
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_str(), "specials": dict(self._specials)}

    def load_state(self, state: dict[str, Any]) -> None:
        self._specials = dict(state.get("specials") or {})
        self._set(Tokenizer.from_str(state["tokenizer"]))

    def _set(self, tok: Tokenizer) -> None:
        self._tokenizer = tok
        if tok.truncation:  # the saved limit wins: the model was trained with it
            self.max_length = tok.truncation["max_length"]

    def save(self, path: Path) -> None:
        """tokenizer.json as the run uses it (truncation included)."""
        save_tokenizer(self.tokenizer, path)

    def load(self, path: Path) -> None:
        if not self._specials:
            self._load()  # the special tokens' names come from the model's folder
        self._set(Tokenizer.from_file(str(path)))
