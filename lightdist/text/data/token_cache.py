"""Tokenised splits on disk: one flat int32 id file and int64 offsets per split, memory-mapped.

An entry is keyed by the tokenizer (its fingerprint and max_length) and a hash of the split's
texts. The texts are hashed rather than named (corpus files + split indices) because only the
content is sure to say whether cached ids still hold: a corpus file edited in place, another
reader, or another split seed all change it, and hashing Arrow buffers runs far faster than
encoding. So a resume, `lightdist eval`, `predict` on a split, or another run over the same
data with the same tokenizer reads the entry instead of encoding again; any change misses it.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lightdist.text.data.tokenizer import text_batches

IDS, OFFSETS = "ids.i32", "offsets.npy"
FORMAT = 1  # bump when the layout changes: old entries then miss


def content_hash(texts: pa.Array | pa.ChunkedArray) -> str:
    """A hash of the texts' lengths and bytes, read from the Arrow buffers (no Python strings); the
    same however the column is chunked."""
    sizes, chars = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for chunk in texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]:
        if len(chunk) == 0:
            continue
        if not pa.types.is_large_string(chunk.type):
            chunk = chunk.cast(pa.large_string())
        _, offsets_buffer, data = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=len(chunk) + 1, offset=chunk.offset * 8)
        sizes.update(np.diff(offsets).tobytes())
        if data is not None:
            chars.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])
    return sizes.hexdigest() + chars.hexdigest()


def encode_batches(tokenizer: Any, texts: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(flat int32 ids, int64 lengths) per batch of texts, each batch one tokenizer.encode call (the
    tokenizers library encodes a batch on all cores)."""
    for batch in text_batches(texts):
        ids = tokenizer.encode(batch)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        yield np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def _offsets(lengths: list[np.ndarray]) -> np.ndarray:
    sizes = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes, dtype=np.int64)])


def encode_in_memory(tokenizer: Any, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) without a cache: text i is ids[offsets[i]:offsets[i + 1]]."""
    parts = list(encode_batches(tokenizer, texts))
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int32)
    return ids, _offsets([p[1] for p in parts])


def read_entry(entry: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) of a cache entry, memory-mapped (an empty id file cannot be mapped)."""
    offsets = np.load(entry / OFFSETS, mmap_mode="r")
    empty = (entry / IDS).stat().st_size == 0
    ids = np.empty(0, np.int32) if empty else np.memmap(entry / IDS, dtype="<i4", mode="r")
    return ids, offsets


class TokenCache:
    """Entries under `folder`, one sub-folder each, written whole under a temporary name and renamed:
    a reader never sees a half-written entry, and of two processes writing the same one, one wins."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def entry(self, tokenizer: Any, texts: pa.Array | pa.ChunkedArray) -> Path:
        what = {"format": FORMAT, "tokenizer": type(tokenizer).__qualname__, "fingerprint": tokenizer.fingerprint(),
                "max_length": tokenizer.max_length, "count": len(texts), "texts": content_hash(texts)}
        return self.folder / hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, tokenizer: Any, texts: pa.Array | pa.ChunkedArray) -> Path:
        """The entry of these texts, encoded and written first when missing."""
        entry = self.entry(tokenizer, texts)
        if entry.is_dir():
            return entry
        tmp = self.folder / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True)
        try:
            lengths = []
            with open(tmp / IDS, "wb") as f:
                for ids, sizes in encode_batches(tokenizer, texts):
                    ids.astype("<i4", copy=False).tofile(f)
                    lengths.append(sizes)
            np.save(tmp / OFFSETS, _offsets(lengths))
            try:
                os.rename(tmp, entry)
            except OSError:
                if not entry.is_dir():
                    raise  # not another process having written the same entry first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry
