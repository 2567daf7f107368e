"""Text data: every corpus format on small files written here, splits, bad input, bucketing, state."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightdist.data.samplers import BucketBatchSampler
from lightdist.errors import DataError
from lightdist.text.data.batching import PadCollate, TokenizedTexts
from lightdist.text.data.corpora import AGNewsCorpus, FolderCorpus, TableCorpus
from lightdist.text.data.datamodule import TextDataModule
from lightdist.text.data.tokenizer import TextTokenizer
from tests.helpers.data import SHARED_DATA, needs_bbc
from tests.helpers.text_files import TOPICS, rows, write_ag_news, write_folder_corpus, write_table


def small_tokenizer(**kw) -> TextTokenizer:
    return TextTokenizer(vocab_size=500, min_frequency=1, max_length=kw.pop("max_length", 64), **kw)


def datamodule(corpus, **kw) -> TextDataModule:
    return TextDataModule(corpus, small_tokenizer(), batch_size=kw.pop("batch_size", 4), **kw)


# -- formats ---------------------------------------------------------------------------------------
def test_ag_news_canonical_csv(tmp_path):
    write_ag_news(tmp_path, train_per_class=10, test_per_class=3)
    dm = datamodule(AGNewsCorpus(str(tmp_path), download=False), val_size=8)
    facts = dm.facts()
    assert facts["class_names"] == ["World", "Sports", "Business", "Sci/Tech"]  # the release's index order
    splits = dm.splits()
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [32, 8, 12]  # test = the release's test.csv
    assert np.bincount(splits["val"][1]).tolist() == [2, 2, 2, 2]  # stratified
    text = splits["train"][0][0].as_py()
    assert "\\" not in text and '"quoted"' in text  # title + description, escapes undone, CSV quotes parsed
    # without classes.txt the canonical names are used
    (tmp_path / "ag_news_csv" / "classes.txt").unlink()
    assert datamodule(AGNewsCorpus(str(tmp_path), download=False)).facts()["class_names"][3] == "Sci/Tech"


def test_ag_news_missing_offline_names_the_files(tmp_path):
    with pytest.raises(DataError, match="AG News not found") as err:
        datamodule(AGNewsCorpus(str(tmp_path), download=False)).check_available()
    assert "train.csv" in str(err.value) and "ag_news_csv" in str(err.value)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_table_formats_with_configurable_columns(tmp_path, fmt):
    records = rows(n_per_class=12)
    train = write_table(tmp_path / f"train.{fmt}", records[:36], fmt)
    test = write_table(tmp_path / f"test.{fmt}", records[36:], fmt)
    corpus = TableCorpus(str(train), test=str(test), text_columns=["title", "body"], label_column="topic")
    dm = datamodule(corpus, val_size=0.25, split_seed=3)
    facts = dm.facts()
    assert facts["class_names"] == sorted(TOPICS)
    splits = dm.splits()
    assert len(splits["test"][0]) == 12 and len(splits["val"][0]) == 9 and len(splits["train"][0]) == 27
    first = records[36]
    assert splits["test"][0][0].as_py() == f"{first['title']} {first['body']}"
    assert facts["class_names"][splits["test"][1][0]] == first["topic"]


def test_headerless_csv_with_named_columns_and_numeric_labels(tmp_path):
    lines = [f'{i % 3 + 1},"text number {i} about {["cats", "cars", "code"][i % 3]}"' for i in range(30)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    corpus = TableCorpus(str(tmp_path / "data.csv"), columns=["label", "text"], text_columns="text")
    dm = datamodule(corpus, val_size=6, test_size=6)
    assert dm.facts()["class_names"] == ["1", "2", "3"]
    assert sum(len(dm.splits()[s][0]) for s in ("train", "val", "test")) == 30


def test_folder_corpus_flat_and_presplit(tmp_path):
    flat = write_folder_corpus(tmp_path / "flat", per_class=10)
    dm = datamodule(FolderCorpus(str(flat)), val_size=0.2, test_size=0.2)
    assert dm.facts()["class_names"] == ["business", "sports", "tech"]
    assert [len(dm.splits()[s][0]) for s in ("train", "val", "test")] == [18, 6, 6]
    presplit = tmp_path / "presplit"
    write_folder_corpus(presplit / "train", per_class=8)
    write_folder_corpus(presplit / "test", per_class=2, seed=1)
    dm = datamodule(FolderCorpus(str(presplit)), val_size=3)
    assert [len(dm.splits()[s][0]) for s in ("train", "val", "test")] == [21, 3, 6]


@needs_bbc
def test_real_bbc_news_layout():
    corpus = FolderCorpus(str(SHARED_DATA / "bbc-news"), fallback_encoding="cp1252")
    loaded = corpus.load()
    assert loaded.train.num_rows == 2225 and sorted(set(loaded.train.column("label").to_pylist())) == [
        "business", "entertainment", "politics", "sports", "tech"]
    assert any("\u00a315.8m" in t for t in loaded.train.column("text").to_pylist())  # the one cp1252 file, decoded
    with pytest.raises(DataError, match=r"sports/199.txt: line \d+ is not valid utf-8"):
        FolderCorpus(str(SHARED_DATA / "bbc-news")).load()


def test_splits_are_seeded_and_stratified(tmp_path):
    folder = write_folder_corpus(tmp_path, per_class=20)

    def test_texts(seed):
        dm = datamodule(FolderCorpus(str(folder)), split_seed=seed, val_size=6, test_size=9)
        texts, labels = dm.splits()["test"]
        assert np.bincount(labels).tolist() == [3, 3, 3]
        return texts.to_pylist()

    assert test_texts(0) == test_texts(0) and test_texts(0) != test_texts(1)


def test_kfold_validates_on_each_fold_of_the_non_test_texts(tmp_path):
    from lightdist.data.splits import KFold

    folder = write_folder_corpus(tmp_path, per_class=20)
    splits = [{s: (texts.to_pylist(), labels) for s, (texts, labels) in
               datamodule(FolderCorpus(str(folder)), test_size=9, kfold=KFold(4, i)).splits().items()} for i in range(4)]
    tests = {tuple(s["test"][0]) for s in splits}
    assert len(tests) == 1  # the test split does not move with the fold
    vals = [text for s in splits for text in s["val"][0]]
    train_and_val = set(splits[0]["train"][0]) | set(splits[0]["val"][0])
    assert len(vals) == len(set(vals)) == len(train_and_val) == 60 - 9  # each non-test text validates once
    for s in splits:
        assert not set(s["train"][0]) & set(s["val"][0])
        assert np.bincount(s["val"][1]).max() - np.bincount(s["val"][1]).min() <= 1  # stratified


# -- bad input: one clear DataError, the file untouched ---------------------------------------------
def _bad_cases(tmp: Path) -> dict:
    empty = tmp / "empty.csv"
    empty.write_text("")
    missing = write_table(tmp / "missing.csv", [{"title": "a", "topic": "x"}, {"title": "b", "topic": "y"}], "csv")
    one_class = write_table(tmp / "one.jsonl", [{"text": f"doc {i}", "label": "spam"} for i in range(5)], "jsonl")
    latin = tmp / "latin.csv"
    latin.write_bytes("text,label\nfine,a\ncaf\u00e9 cr\u00e8me,b\n".encode("cp1252"))
    return {
        "empty": (TableCorpus(str(empty)), f"{empty} is empty"),
        "missing_column": (TableCorpus(str(missing), label_column="topic"), "no column 'text' in its header"),
        "one_class": (TableCorpus(str(one_class)), "one class only ('spam')"),
        "not_utf8": (TableCorpus(str(latin)), "latin.csv: line 3 is not valid utf-8 (byte 0xe9"),
    }


@pytest.mark.parametrize("case", ["empty", "missing_column", "one_class", "not_utf8"])
def test_bad_input_is_a_clear_data_error(tmp_path, case):
    corpus, expected = _bad_cases(tmp_path)[case]
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(DataError) as err:
        datamodule(corpus).check_available()
    assert expected in str(err.value) and err.value.hint
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_fallback_encoding_and_bad_rows(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\nfine,a\ncaf\u00e9,b\n".encode("cp1252"))
    texts = TableCorpus(str(latin), fallback_encoding="cp1252").load().train.column("text").to_pylist()
    assert texts == ["fine", "caf\u00e9"]
    (tmp_path / "odd.csv").write_bytes(b"text,label\nab\x81c,a\n")  # 0x81: invalid in utf-8 and cp1252
    with pytest.raises(DataError, match="neither valid utf-8 nor cp1252"):
        TableCorpus(str(tmp_path / "odd.csv"), fallback_encoding="cp1252").load()
    short = tmp_path / "short.csv"
    short.write_text("text,label\nok,a\nno label here\n")
    with pytest.raises(DataError, match="line 3 has 1 fields"):
        TableCorpus(str(short)).load()
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{"text": "b", label: y}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        TableCorpus(str(bad_json)).load()
    unseen = write_table(tmp_path / "t.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "csv")
    test = write_table(tmp_path / "u.csv", [{"text": "c", "label": "z"}], "csv")
    with pytest.raises(DataError, match="label\\(s\\) 'z' that the training split lacks"):
        datamodule(TableCorpus(str(unseen), test=str(test))).splits()
    folder = write_folder_corpus(tmp_path / "f", per_class=2)
    (folder / "tech" / "000.txt").write_text("  \n")
    with pytest.raises(DataError, match="000.txt is empty"):
        FolderCorpus(str(folder)).load()


# -- batching ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "world", "batch"), [(103, 2, 8), (100, 3, 4), (17, 2, 8), (9, 4, 2), (64, 2, 16)])
def test_bucketing_yields_every_sample_once_per_epoch_across_ranks(n, world, batch):
    lengths = np.random.default_rng(0).integers(1, 300, size=n)
    for shuffle in (True, False):
        for epoch in (0, 1):
            per_rank = []
            for rank in range(world):
                sampler = BucketBatchSampler(lengths, batch, world, rank, shuffle=shuffle, seed=5, bucket_batches=3)
                sampler.set_epoch(epoch)
                batches = list(sampler)
                assert len(batches) == len(sampler)
                per_rank.append(batches)
            assert len({len(b) for b in per_rank}) == 1, "every rank runs the same number of steps"
            seen = [i for batches in per_rank for b in batches for i in b]
            assert sorted(seen) == list(range(n))


def test_bucketing_groups_similar_lengths():
    lengths = np.random.default_rng(0).integers(1, 300, size=400)
    sampler = BucketBatchSampler(lengths, 8, 1, 0, shuffle=True, seed=0, bucket_batches=25)
    padded = sum(max(lengths[b]) * len(b) for b in sampler)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(lengths))
    random_padded = sum(max(lengths[order[i:i + 8]]) * len(order[i:i + 8]) for i in range(0, len(order), 8))
    assert padded < 0.6 * random_padded  # far less padding than random batches


def test_bucketing_shuffles_per_epoch_and_drop_last():
    lengths = np.arange(50)
    sampler = BucketBatchSampler(lengths, 4, 2, 0, shuffle=True, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    dropping = [BucketBatchSampler(lengths, 4, 2, r, shuffle=True, seed=0, drop_last=True) for r in range(2)]
    assert all(len(list(s)) == len(s) == 6 for s in dropping)
    assert all(len(b) == 4 for s in dropping for b in s)


def test_dynamic_padding_and_loaders(tmp_path):
    ds = TokenizedTexts.from_lists([[5, 6, 7], [8], [9, 10]], [0, 1, 0])
    (tokens, lengths), labels = PadCollate(pad_id=0)([ds[0], ds[1]])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1] and labels.tolist() == [0, 1]
    for bucketing in (True, False):
        dm = datamodule(FolderCorpus(str(write_folder_corpus(tmp_path / str(bucketing), per_class=12))),
                        bucketing=bucketing, batch_size=5)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert sum(len(y) for _, y in batches) == len(dm.train_set)
        for (tokens, lengths), _ in batches:
            assert tokens.shape[1] == int(lengths.max())  # padded to the batch's longest text only
        assert sum(len(y) for _, y in dm.test_dataloader()) == len(dm.test_set)


def test_state_travels_without_the_corpus(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    dm = datamodule(FolderCorpus(str(folder)))
    facts = dm.facts()
    state = dm.state_dict()
    json.dumps(state)  # plain data: checkpoints load it with weights_only=True
    restored = datamodule(FolderCorpus(str(tmp_path / "gone")))
    restored.load_state_dict(state)
    assert restored.facts() == facts
    (inputs,) = restored.encode_inputs(["shares profit market", ""])
    tokens, lengths = inputs
    assert tokens.shape == (2, 3) and lengths.tolist() == [3, 1]
    assert torch.equal(tokens[0], torch.tensor(dm.tokenizer.encode(["shares profit market"])[0]))


def test_tokenizer_file_is_saved_then_reused(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    path = tmp_path / "run" / "tokenizer.json"
    first = datamodule(FolderCorpus(str(folder)), tokenizer_file=str(path))
    first.facts()
    assert path.is_file()
    text = "a different corpus about nothing in particular"
    (folder / "tech" / "extra.txt").write_text(text)
    second = datamodule(FolderCorpus(str(folder)), tokenizer_file=str(path))
    second.facts()
    assert second.tokenizer.state() == first.tokenizer.state()  # loaded, not retrained on the changed corpus


def test_ranks_take_rank_zero_tokenizer(tmp_path):
    """Under DDP setup() broadcasts rank 0's tokenizer; a rank whose own training differed adopts it."""
    folder = write_folder_corpus(tmp_path, per_class=10)
    rank0 = datamodule(FolderCorpus(str(folder)))
    rank0.facts()
    # a vocabulary of the same size, numbered differently (what another process may train)
    vocab = rank0.tokenizer.tokenizer.get_vocab()
    order = ["[PAD]", "[UNK]"] + sorted((t for t in vocab if t not in ("[PAD]", "[UNK]")), reverse=True)
    from tokenizers import models

    rank1 = datamodule(FolderCorpus(str(folder)))
    rank1.facts()
    rank1.tokenizer.tokenizer.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token="[UNK]")
    assert rank1.tokenizer.encode(["shares profit"]) != rank0.tokenizer.encode(["shares profit"])

    class Strategy:
        def broadcast(self, obj, src=0):
            return rank0.tokenizer.state()

    class Trainer:
        world_size, global_rank, is_global_zero, strategy = 2, 1, False, Strategy()

    rank1.trainer = Trainer()
    rank1._agree_on_tokenizer()
    assert rank1.tokenizer.encode(["shares profit"]) == rank0.tokenizer.encode(["shares profit"])
    # a vocabulary of another size cannot be fixed after the model was built: a clear error
    rank1.tokenizer.fit(["only a few words here"])
    with pytest.raises(DataError, match="rank 1 trained a vocabulary of"):
        rank1._agree_on_tokenizer()


# -- hooks for planners and model-provided tokenizers ----------------------------------------------
class LengthPlanner:
    """Sets max_length from the training texts (a 90th percentile of words) and says what it saw."""

    def __init__(self):
        self.calls = 0

    def plan(self, texts, labels, tokenizer):
        self.calls += 1
        assert not tokenizer.fitted  # planned before the tokenizer is trained or loaded
        words = np.array([len(t.split()) for t in texts.to_pylist()])
        tokenizer.max_length = int(np.percentile(words, 90)) // 2
        return {"texts": len(texts), "classes": int(labels.max()) + 1, "max_length": tokenizer.max_length}


def test_planner_runs_once_before_the_tokenizer_and_travels_in_the_state(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    planner = LengthPlanner()
    dm = datamodule(FolderCorpus(str(folder)), planner=planner, val_size=6, test_size=6)
    facts = dm.facts()
    dm.facts()
    assert planner.calls == 1
    assert facts["train_size"] == 18 == len(dm.splits()["train"][0])
    assert facts["plan"] == {"texts": 18, "classes": 3, "max_length": facts["max_length"]}
    assert facts["max_length"] < 64 and dm.tokenizer.tokenizer.truncation["max_length"] == facts["max_length"]
    assert max(len(ids) for ids in dm.tokenizer.encode(dm.splits()["train"][0].to_pylist())) == facts["max_length"]
    state = dm.state_dict()
    json.dumps(state)
    again = LengthPlanner()
    restored = datamodule(FolderCorpus(str(tmp_path / "gone")), planner=again)
    restored.load_state_dict(state)
    assert restored.facts() == facts and again.calls == 0  # the checkpoint's plan, no corpus needed
    assert "plan" not in datamodule(FolderCorpus(str(folder))).facts()


def test_use_tokenizer_replaces_the_configured_one_and_writes_its_file(tmp_path):
    folder = write_folder_corpus(tmp_path / "corpus", per_class=10)
    path = tmp_path / "run" / "tokenizer.json"
    own = TextTokenizer(model="word", vocab_size=300, min_frequency=1, max_length=7).fit(["shares profit market"] * 3)
    path.parent.mkdir()
    small_tokenizer().fit(["something else entirely"]).save(path)  # never loaded in its place
    dm = datamodule(FolderCorpus(str(folder)), tokenizer_file=str(path), batch_size=4)
    dm.use_tokenizer(own)
    facts = dm.facts()
    assert dm.tokenizer is own and facts["vocab_size"] == own.vocab_size and facts["max_length"] == 7

    class Trainer:
        world_size, global_rank, is_global_zero, overfit_batches = 1, 0, True, 0
        default_root_dir = str(tmp_path / "run")

    dm.trainer = Trainer()
    dm.setup("fit")
    assert dm.train_set[0][0].tolist() == own.encode([dm.splits()["train"][0][0].as_py()])[0]
    assert json.loads(path.read_text()) == json.loads(own.tokenizer.to_str())  # written for eval and predict
