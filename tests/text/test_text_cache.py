"""The token cache: splits encoded once into flat memory-mapped arrays, reused while the tokenizer and the
texts are the same, missed when either changes, shared safely between DDP ranks."""

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lightdist.text.data.batching import TokenizedTexts
from lightdist.text.data.corpora import FolderCorpus
from lightdist.text.data.datamodule import TOKENS_DIR, TextDataModule
from lightdist.text.data.token_cache import TokenCache, content_hash
from lightdist.text.data.tokenizer import TextTokenizer
from tests.helpers.text_files import write_folder_corpus


class CountingTokenizer(TextTokenizer):
    """A word tokenizer (trained identically every time) that counts the texts it encodes."""

    def __init__(self, **kw):
        super().__init__(model="word", vocab_size=500, min_frequency=1, **kw)
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        return super().encode(texts)


class Trainer:
    overfit_batches, is_global_zero = 0, True

    def __init__(self, root, rank=0, world=1, events=None):
        self.default_root_dir, self.global_rank, self.world_size = str(root), rank, world
        self.is_global_zero = rank == 0
        events = events if events is not None else []

        class Strategy:
            def barrier(self, name=None):
                events.append(("barrier", rank))

            def broadcast(self, obj, src=0):
                return obj

        self.strategy = Strategy()


def set_up(folder, cache, rank=0, world=1, events=None, **kw) -> TextDataModule:
    dm = TextDataModule(FolderCorpus(str(folder)), CountingTokenizer(**kw), cache_dir=str(cache), batch_size=4,
                        val_size=6, test_size=6)
    dm.trainer = Trainer(cache.parent / "run", rank, world, events)
    dm.setup("fit")
    return dm


def entries(cache):
    return sorted(p.name for p in (cache / TOKENS_DIR).iterdir())


def test_second_setup_reads_the_cache_and_changes_miss_it(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    cache = tmp_path / "cache"
    first = set_up(folder, cache)
    assert first.tokenizer.encoded == 30 and len(entries(cache)) == 3  # train, val, test
    again = set_up(folder, cache)
    assert again.tokenizer.encoded == 0 and len(entries(cache)) == 3  # a resume, an eval: nothing encoded
    for split in ("train_set", "val_set", "test_set"):
        ours, theirs = getattr(first, split), getattr(again, split)
        assert np.array_equal(ours.ids, theirs.ids) and np.array_equal(ours.offsets, theirs.offsets)
    texts = first.splits()["train"][0].to_pylist()
    assert [first.train_set[i][0].tolist() for i in range(len(texts))] == CountingTokenizer().fit(
        texts).encode(texts)  # what the tokenizer itself gives

    shorter = set_up(folder, cache, max_length=5)  # another tokenizer: a miss
    assert shorter.tokenizer.encoded == 30 and int(shorter.train_set.lengths.max()) == 5
    edited = sorted((folder / "tech").iterdir())[0]
    edited.write_text(" ".join(reversed(edited.read_text().split())))  # the same words: the same vocabulary
    changed = set_up(folder, cache)  # one text changed: its split misses, the others hit
    assert 0 < changed.tokenizer.encoded < 30 and len(entries(cache)) == 6 + 1


def test_a_split_is_one_flat_memory_mapped_array(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    dm = set_up(folder, tmp_path / "cache")
    ds = dm.train_set
    assert isinstance(ds.ids, np.memmap) and ds.ids.dtype == np.int32 and ds.ids.ndim == 1
    assert isinstance(ds.lengths, np.ndarray) and len(ds.lengths) == len(ds) == 18
    assert int(ds.offsets[-1]) == len(ds.ids) == int(ds.lengths.sum())
    assert not any(isinstance(v, list) for v in vars(ds).values())  # no per-text Python objects
    # spawned DataLoader workers get the entry's path, not a copy of the ids
    clone = pickle.loads(pickle.dumps(ds))
    assert not {"ids", "offsets"} & set(ds.__getstate__()) and isinstance(clone.ids, np.memmap)
    assert all(np.array_equal(clone[i][0], ds[i][0]) for i in range(len(ds)))


def test_ranks_read_rank_zero_entries_after_a_barrier(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    events = []
    rank0 = set_up(folder, tmp_path / "shared", 0, 2, events)
    rank1 = set_up(folder, tmp_path / "shared", 1, 2, events)
    assert rank0.tokenizer.encoded == 30 and rank1.tokenizer.encoded == 0  # rank 1 read rank 0's entries
    assert events == [("barrier", 0), ("barrier", 1)]
    # a cache_dir of each node's own: a rank that does not see rank 0's entries encodes its own
    other_node = set_up(folder, tmp_path / "node1", 1, 2)
    assert other_node.tokenizer.encoded == 30
    assert np.array_equal(other_node.train_set.ids, rank0.train_set.ids)


def test_concurrent_writers_keep_one_entry(tmp_path, monkeypatch):
    texts = pa.chunked_array([["shares profit market", "match goal"]], pa.large_string())
    tokenizer = CountingTokenizer().fit(texts)
    cache = TokenCache(tmp_path)
    entry = cache.get(tokenizer, texts)
    # another process renamed its entry into place between our check and our rename
    monkeypatch.setattr(TokenCache, "entry", lambda self, tok, t: entry)
    real_is_dir = Path.is_dir
    calls = []

    def first_says_missing(path):
        if path == entry and not calls:
            calls.append(path)
            return False
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", first_says_missing)
    assert cache.get(tokenizer, texts) == entry and tokenizer.encoded == 4
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # our temporary copy is gone


def test_content_hash_reads_the_texts_not_their_chunking():
    texts = ["a first text", "", "ünïcode", "last"]
    one = content_hash(pa.chunked_array([texts], pa.large_string()))
    assert one == content_hash(pa.chunked_array([texts[:1], texts[1:]], pa.large_string()))
    assert one == content_hash(pa.array(texts, pa.string()))
    assert one == content_hash(pa.chunked_array([["x"] + texts], pa.large_string()).slice(1))
    assert one != content_hash(pa.array(["a first tex", "t", "ünïcode", "last"]))  # same bytes, other texts
    assert one != content_hash(pa.array(texts[::-1]))


def test_without_a_cache_dir_the_ids_stay_in_memory(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    dm = TextDataModule(FolderCorpus(str(folder)), CountingTokenizer(), batch_size=4)
    dm.setup("fit")
    assert dm.train_set.entry is None and type(dm.train_set.ids) is np.ndarray
    assert not any(tmp_path.glob("**/" + TOKENS_DIR))
    with pytest.raises(ValueError, match="differ in length"):
        TokenizedTexts(np.zeros(3, np.int32), np.array([0, 3]), [0, 1])
