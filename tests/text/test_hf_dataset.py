"""data=hf_dataset: a save_to_disk folder, data files and folders, split mapping, class labels, errors
(the Hub is never contacted: HF_DATASETS_OFFLINE=1 where a Hub name is tried), one CLI run."""

import csv
import gzip
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightdist.errors import ConfigError, DataError
from lightdist.text.data.datamodule import TextDataModule
from lightdist.text.data.hf import HFDatasetCorpus
from lightdist.text.data.tokenizer import TextTokenizer
from tests.helpers.cli import QUIET, cli_env, read_summary, run_cli, run_dirs
from tests.helpers.text_files import TOPICS, rows, write_table

NAMES = list(TOPICS)  # World, Sports, Business, Sci/Tech: not alphabetical, so the order is the ClassLabel's


def as_dataset(records: list[dict]):
    features = datasets.Features({"title": datasets.Value("string"), "body": datasets.Value("string"),
                                  "topic": datasets.ClassLabel(names=NAMES)})
    columns = {key: [r[key] for r in records] for key in ("title", "body")}
    columns["topic"] = [NAMES.index(r["topic"]) for r in records]
    return datasets.Dataset.from_dict(columns, features=features)


def datamodule(corpus, **kw) -> TextDataModule:
    return TextDataModule(corpus, TextTokenizer(vocab_size=300, min_frequency=1, max_length=32), batch_size=4, **kw)


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# -- a folder written by save_to_disk --------------------------------------------------------------
def test_saved_dataset_dict_keeps_its_splits_and_class_label_order(tmp_path):
    parts = {"train": rows(8, seed=1), "validation": rows(2, seed=2), "test": rows(3, seed=3)}
    datasets.DatasetDict({k: as_dataset(v) for k, v in parts.items()}).save_to_disk(tmp_path / "saved")
    corpus = HFDatasetCorpus(path=str(tmp_path / "saved"), text_columns=["title", "body"], label_column="topic")
    loaded = corpus.load()
    assert loaded.class_names == NAMES
    assert loaded.train.schema == pa.schema([("text", pa.large_string()), ("label", pa.string())])
    for table, records in ((loaded.train, parts["train"]), (loaded.val, parts["validation"]),
                           (loaded.test, parts["test"])):
        assert column(table, "text") == [f"{r['title']} {r['body']}" for r in records]
        assert column(table, "label") == [r["topic"] for r in records]

    dm = datamodule(corpus)
    splits = dm.splits()
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [32, 8, 12]  # its own splits, none drawn
    assert dm.facts()["class_names"] == NAMES
    assert splits["test"][1].tolist() == [NAMES.index(r["topic"]) for r in parts["test"]]


def test_saved_texts_stay_in_the_memory_mapped_file(tmp_path):
    records = [dict(r, body=" ".join([r["body"]] * 20)) for r in rows(50)]  # ~1.5 KB a text
    as_dataset(records).save_to_disk(tmp_path / "saved")
    before = pa.total_allocated_bytes()
    train = HFDatasetCorpus(path=str(tmp_path / "saved"), text_columns="body", label_column="topic").load().train
    text_bytes = sum(len(r["body"].encode()) for r in records)
    # only offsets (8 bytes a row) and the labels are new: the characters are read from the mapped file
    assert pa.total_allocated_bytes() - before < text_bytes / 20
    assert column(train, "text") == [r["body"] for r in records]


def test_a_single_dataset_is_train_and_the_data_module_draws_the_rest(tmp_path):
    records = rows(10)
    numbered = {"title": [r["title"] for r in records], "topic": [NAMES.index(r["topic"]) + 1 for r in records]}
    datasets.Dataset.from_dict(numbered).save_to_disk(tmp_path / "saved")  # int64 labels, no ClassLabel
    corpus = HFDatasetCorpus(path=str(tmp_path / "saved"), text_columns="title", label_column="topic")
    loaded = corpus.load()
    assert loaded.val is None and loaded.test is None and loaded.class_names is None
    assert column(loaded.train, "label") == [str(NAMES.index(r["topic"]) + 1) for r in records]  # numbers as text
    dm = datamodule(corpus, val_size=4, test_size=8)
    assert [len(dm.splits()[s][1]) for s in ("train", "val", "test")] == [28, 4, 8]
    assert dm.facts()["class_names"] == ["1", "2", "3", "4"]


def test_split_mapping(tmp_path):
    parts = {"train": rows(5, seed=1), "dev": rows(2, seed=2), "test": rows(1, seed=3), "extra": rows(1, seed=4)}
    datasets.DatasetDict({k: as_dataset(v) for k, v in parts.items()}).save_to_disk(tmp_path / "saved")
    common = {"path": str(tmp_path / "saved"), "label_column": "topic", "text_columns": "body"}
    loaded = HFDatasetCorpus(**common).load()  # dev is a default name for validation; extra is not used
    assert column(loaded.val, "text") == [r["body"] for r in parts["dev"]]
    loaded = HFDatasetCorpus(**common, splits={"val": None, "test": "extra"}).load()
    assert loaded.val is None and column(loaded.test, "text") == [r["body"] for r in parts["extra"]]
    loaded = HFDatasetCorpus(**common, splits={"train": "dev"}).load()
    assert column(loaded.train, "text") == [r["body"] for r in parts["dev"]]
    with pytest.raises(DataError, match=r"has no split 'validation' \(data.corpus.splits.val\); its splits: "
                                        r"train, dev, test, extra \(set data.corpus.splits.val"):
        HFDatasetCorpus(**common, splits={"val": "validation"}).load()
    with pytest.raises(ConfigError, match="data.corpus.splits has key.* validation"):
        HFDatasetCorpus(**common, splits={"validation": "dev"})
    # no split called train among several: the user names it
    datasets.DatasetDict({"a": as_dataset(rows(2)), "b": as_dataset(rows(2))}).save_to_disk(tmp_path / "ab")
    with pytest.raises(DataError, match="has no training split among a, b"):
        HFDatasetCorpus(path=str(tmp_path / "ab"), label_column="topic", text_columns="body").load()


# -- data files --------------------------------------------------------------------------------------
def write(path, records, fmt):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif fmt == "csv.gz":
        with gzip.open(path, "wt", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        write_table(path, records, fmt)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "csv.gz"])
def test_data_files_of_every_format(tmp_path, fmt):
    train, test = rows(4, seed=1), rows(2, seed=2)
    files = {"train": str(write(tmp_path / f"train.{fmt}", train, fmt)),
             "test": str(write(tmp_path / f"held.{fmt}", test, fmt))}
    corpus = HFDatasetCorpus(data_files=files, text_columns=["title", "body"], label_column="topic")
    loaded = corpus.load(cache_dir=tmp_path / "cache")
    assert loaded.val is None and loaded.class_names is None
    for table, records in ((loaded.train, train), (loaded.test, test)):
        assert column(table, "text") == [f"{r['title']} {r['body']}" for r in records]
        assert column(table, "label") == [r["topic"] for r in records]
    assert any((tmp_path / "cache" / "hf_datasets").iterdir())  # datasets' Arrow copy: in the run's cache


def test_a_data_folder_is_split_by_file_names(tmp_path):
    folder = tmp_path / "reviews"
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        write_table(folder / f"{split}.jsonl", rows(2, seed=seed), "jsonl")
    loaded = HFDatasetCorpus(path=str(folder), text_columns="body", label_column="topic").load(tmp_path / "cache")
    assert (loaded.train.num_rows, loaded.val.num_rows, loaded.test.num_rows) == (8, 8, 8)
    assert column(loaded.val, "text") == [r["body"] for r in rows(2, seed=2)]


def test_a_field_longer_than_a_megabyte(tmp_path):
    records = rows(2)
    records[0]["body"] = "word " * 300_000
    files = str(write(tmp_path / "big.csv", records, "csv"))
    train = HFDatasetCorpus(data_files=files, text_columns="body", label_column="topic").load(tmp_path / "c").train
    assert len(column(train, "text")[0]) == 1_500_000


# -- errors: one line each, naming the fix -----------------------------------------------------------
def test_bad_input_is_one_line_naming_the_fix(tmp_path):
    as_dataset(rows(2)).save_to_disk(tmp_path / "saved")
    with pytest.raises(DataError, match=r"\[train\]: no column 'text'; its columns: title, body, topic "
                                        r"\(set data.corpus.text_columns"):
        HFDatasetCorpus(path=str(tmp_path / "saved"), label_column="topic").load()
    with pytest.raises(DataError, match="is no folder or file here, nor a Hub dataset name"):
        HFDatasetCorpus(path=str(tmp_path / "nowhere" / "data")).load()
    with pytest.raises(DataError, match="no file matches .*nothing-\\*.csv"):
        HFDatasetCorpus(data_files=str(tmp_path / "nothing-*.csv")).load(tmp_path / "cache")
    with pytest.raises(ConfigError, match="needs data.corpus.path or data.corpus.data_files"):
        HFDatasetCorpus()

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,pos\nbad,neg,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: datasets cannot read it \(ParserError: .*Expected 2 fields in "
                                        r"line 3, saw 3\) \(fix or remove the row"):
        HFDatasetCorpus(data_files=str(bad)).load(tmp_path / "run" / "cache")
    assert not (tmp_path / "run").exists()  # the run directory is not created for bad input

    # labels missing: None in a string column, -1 (datasets' "no label") in a ClassLabel column
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text("".join(json.dumps(r) + "\n" for r in
                             ({"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c", "label": "y"})))
    with pytest.raises(DataError, match=r"1 row\(s\) has no label \(null\), the first row 1 .*data.corpus.splits"):
        HFDatasetCorpus(data_files=str(nulls)).load(tmp_path / "cache")
    unlabelled = as_dataset(rows(1)).map(lambda r, i: {"topic": -1 if i >= 2 else r["topic"]}, with_indices=True)
    datasets.DatasetDict({"train": as_dataset(rows(2)), "test": unlabelled}).save_to_disk(tmp_path / "hidden")
    with pytest.raises(DataError, match=r"\[test\]: 2 row\(s\) has no label \(null or -1\), the first row 2"):
        HFDatasetCorpus(path=str(tmp_path / "hidden"), text_columns="body", label_column="topic").load()
    loaded = HFDatasetCorpus(path=str(tmp_path / "hidden"), text_columns="body", label_column="topic",
                             splits={"test": None}).load()  # the fix the line names
    assert loaded.test is None


def test_a_hub_name_offline_is_one_line_and_nothing_is_created(workdir):
    """The real CLI, as a user without network runs it: no retries against the Hub, one line."""
    proc = run_cli(["data=hf_dataset", "data.corpus.path=nobody-here/no-such-dataset", "task=text_classification",
                    "model=text_fasttext", *QUIET], cwd=workdir, check=False,
                   env=cli_env(HF_DATASETS_OFFLINE="1", HF_HOME=str(workdir / "hf")))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lightdist: error: 'nobody-here/no-such-dataset' is no local folder or file, and is not "
                           "in datasets' cache while offline"), proc.stderr
    assert "save_to_disk" in last and "data.corpus.path=<folder>" in last
    assert "Traceback" not in proc.stderr and not (workdir / "outputs").exists()


# -- end to end ---------------------------------------------------------------------------------------
def test_cli_trains_and_tests_on_a_saved_dataset(workdir):
    parts = {"train": rows(30, seed=1), "validation": rows(5, seed=2), "test": rows(5, seed=3)}
    datasets.DatasetDict({k: as_dataset(v) for k, v in parts.items()}).save_to_disk(workdir / "saved")
    run_cli(["data=hf_dataset", f"data.corpus.path={workdir / 'saved'}", "data.corpus.text_columns=[title,body]",
             "data.corpus.label_column=topic", "data.tokenizer.vocab_size=300", "data.tokenizer.max_length=32",
             "data.batch_size=8", "task=text_classification", "model=text_fasttext", "model.buckets=1000",
             "optimizer.lr=0.05", "trainer.max_epochs=3", *QUIET], cwd=workdir, env=cli_env(HF_DATASETS_OFFLINE="1"))
    (run_dir,) = run_dirs(workdir)
    summary = read_summary(run_dir)
    assert summary["test"]["test/acc"] > 0.5, summary  # 4 topics with their own words: above chance (0.25)
    confusion = torch.load(run_dir / "confusion_matrix.pt")
    assert int(confusion.sum()) == 20  # the dataset's own test split, every row once
    assert np.array_equal(confusion.sum(1).numpy(), [5, 5, 5, 5])
