"""Text tables read by pyarrow: every format and compression, long fields, streaming, the Arrow cache, bad input."""

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard

from lightdist.errors import DataError
from lightdist.text.data import tables
from lightdist.text.data.corpora import TableCorpus
from lightdist.text.data.tables import TableFile, TableSpec, read_table
from tests.helpers.text_files import rows

COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}
SUFFIX = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet", "arrow": ".arrow"}
SPEC = TableSpec(text_columns=("title", "body"), label_column="topic")


def records() -> list[dict]:
    """BBC-like rows with what trips hand-written readers: delimiters, quotes, line breaks, non-ASCII."""
    out = rows(n_per_class=4)
    out[0]["body"] += ', a "quoted" word,\nand a second line'
    out[1]["title"] = "Shares worth \u00a315.8m \u2013 caf\u00e9"
    out[2]["body"] += "\ta tab and a trailing backslash \\"
    out[3]["title"] = "\"quoted title\""
    return out


def encode(fmt: str, recs: list[dict]) -> bytes:
    """The bytes of `recs` as a `fmt` file, written by the standard tools (not by lightdist)."""
    if fmt in ("csv", "tsv"):
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=list(recs[0]), delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        writer.writerows(recs)
        return out.getvalue().encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
    table = pa.Table.from_pylist(recs)
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    else:
        feather.write_feather(table, sink)
    return sink.getvalue().to_pybytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(COMPRESS[next((s for s in COMPRESS if s and path.name.endswith(s)), "")](data))
    return path


def expected(recs: list[dict]) -> pa.Table:
    return pa.table({"text": pa.array([f"{r['title']} {r['body']}" for r in recs], pa.large_string()),
                     "label": pa.array([r["topic"] for r in recs], pa.string())})


# -- formats and compressions -----------------------------------------------------------------------
@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_every_format_and_compression_gives_the_same_table(tmp_path, fmt, compression):
    recs = records()
    path = write(tmp_path / f"news{SUFFIX[fmt]}{compression}", encode(fmt, recs))
    table = read_table(path, SPEC)
    assert table.schema == tables.SCHEMA
    assert table.combine_chunks().equals(expected(recs).combine_chunks())


@pytest.mark.parametrize(("name", "fmt", "compression"), [
    ("a.CSV", "csv", None), ("a.tab", "tsv", None), ("a.ndjson.gz", "jsonl", "gzip"), ("a.pq", "parquet", None),
    ("a.feather", "arrow", None), ("a.ipc.zst", "arrow", "zstd"), ("reviews.v2.csv.xz", "csv", "xz"),
    ("a.tsv.bz2", "tsv", "bz2")])
def test_format_and_compression_from_the_suffixes(name, fmt, compression):
    assert TableFile.of(Path(name)) == TableFile(Path(name), fmt, compression)


def test_format_option_overrides_the_suffix(tmp_path):
    path = write(tmp_path / "export.txt.gz", encode("tsv", records()))
    with pytest.raises(DataError, match=r"export.txt.gz from its suffix \(known: .csv, .tsv/.tab.*\.zst\)"):
        read_table(path, SPEC)
    assert read_table(path, TableSpec(("title", "body"), "topic", format="tsv")).num_rows == len(records())


def test_numeric_labels_headerless_files_and_nulls(tmp_path):
    ints = pa.table({"text": ["a b", "c d", None], "extra": [None, "x", "e f"], "label": [1, 2, 1]})
    pq.write_table(ints, tmp_path / "ints.parquet")
    table = read_table(tmp_path / "ints.parquet", TableSpec(("text", "extra"), "label"))
    assert table.to_pydict() == {"text": ["a b", "c d x", "e f"], "label": ["1", "2", "1"]}  # nulls left out
    (tmp_path / "nums.jsonl").write_text('{"text": "one", "label": 3}\n{"text": "two", "label": 4, "more": [1]}\n')
    assert read_table(tmp_path / "nums.jsonl").column("label").to_pylist() == ["3", "4"]
    (tmp_path / "plain.csv").write_text('2 ,"first text, quoted"\n1,second\n')  # no header: corpus.columns
    table = read_table(tmp_path / "plain.csv", TableSpec(columns=("label", "text")))
    assert table.to_pydict() == {"text": ["first text, quoted", "second"], "label": ["2", "1"]}  # labels trimmed


def test_encodings_and_fallback(tmp_path):
    latin = tmp_path / "latin.jsonl.gz"
    latin.write_bytes(gzip.compress('{"text": "caf\u00e9 \u00a35", "label": "a"}\n'.encode("cp1252")))
    with pytest.raises(DataError, match=r"latin.jsonl.gz: line 1 is not valid utf-8 \(byte 0xe9 at offset 13 of the "
                       "decompressed data\\)"):
        read_table(latin)
    for spec in (TableSpec(encoding="cp1252"), TableSpec(fallback_encoding="cp1252")):
        assert read_table(latin, spec).column("text").to_pylist() == ["caf\u00e9 \u00a35"]
    odd = tmp_path / "odd.tsv"
    odd.write_bytes(b"text\tlabel\nfine\ta\nab\x81c\tb\n")  # 0x81: invalid in utf-8 and in cp1252
    with pytest.raises(DataError, match=r"odd.tsv is neither valid utf-8 nor cp1252 \(line 3, byte 0x81"):
        read_table(odd, TableSpec(fallback_encoding="cp1252"))
    with pytest.raises(DataError, match="unknown encoding 'latin-9x'"):
        read_table(odd, TableSpec(encoding="latin-9x"))


# -- size: long fields, streaming, the cache ------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_field_over_one_megabyte(tmp_path, fmt):
    recs = records()
    recs[5]["body"] = "a long e-mail, \"quoted\"\n" + "spam " * 250_000  # 1.25 MB: over csv's 131,072 characters
    path = write(tmp_path / f"long.{fmt}", encode(fmt, recs))
    for block_size in (tables.BLOCK_SIZE, 64 << 10):  # a row longer than the block: read again with bigger ones
        table = read_table(path, SPEC, block_size=block_size)
        assert table.combine_chunks().equals(expected(recs).combine_chunks())


def test_a_table_bigger_than_a_block_streams_into_the_cache(tmp_path, monkeypatch):
    recs = rows(n_per_class=100)
    path = write(tmp_path / "big.csv.gz", encode("csv", recs))
    cache = tmp_path / "cache"
    table = read_table(path, SPEC, cache_dir=cache, block_size=4096)
    assert table.combine_chunks().equals(expected(recs).combine_chunks())
    [cached] = (cache / "tables").iterdir()
    assert pa.ipc.open_file(pa.memory_map(str(cached))).num_record_batches > 5  # written batch by batch

    # the second load maps the Arrow file: nothing is read or converted, nothing allocated
    monkeypatch.setattr(tables, "_convert", lambda *a: pytest.fail("converted again"))
    before = pa.total_allocated_bytes()
    again = read_table(path, SPEC, cache_dir=cache)
    assert again.equals(table) and pa.total_allocated_bytes() - before < 4096
    monkeypatch.undo()

    # a changed file (or other options) is read again; the stale copy goes
    more = recs + rows(n_per_class=1, seed=9)
    write(path, encode("csv", more))
    os.utime(path, ns=(1, 1))
    assert read_table(path, SPEC, cache_dir=cache).num_rows == len(more)
    assert len(list((cache / "tables").iterdir())) == 1
    assert read_table(path, TableSpec(("body",), "topic"), cache_dir=cache).column("text")[0].as_py() == more[0]["body"]


def test_an_arrow_file_with_the_contract_columns_is_mapped_as_it_is(tmp_path):
    table = expected(records() * 200)
    path = tmp_path / "ready.arrow"
    feather.write_feather(table, path, compression="uncompressed")
    before = pa.total_allocated_bytes()
    read = read_table(path)
    assert read.equals(table) and pa.total_allocated_bytes() - before < 4096


def test_table_corpus_takes_the_cache_dir(tmp_path):
    recs = records()
    train = write(tmp_path / "train.parquet", encode("parquet", recs[:12]))
    test = write(tmp_path / "test.csv.zst", encode("csv", recs[12:]))
    loaded = TableCorpus(str(train), test=str(test), text_columns=["title", "body"], label_column="topic").load(
        cache_dir=tmp_path / "cache")
    assert loaded.train.num_rows == 12 and loaded.test.equals(expected(recs[12:]))
    assert len(list((tmp_path / "cache" / "tables").iterdir())) == 2


def test_the_preflight_check_writes_no_copy_the_run_then_does(tmp_path):
    from lightdist.text.data.datamodule import TextDataModule
    from lightdist.text.data.tokenizer import TextTokenizer

    train = write(tmp_path / "train.csv.gz", encode("csv", records()))
    cache = tmp_path / "run" / "cache"
    corpus = TableCorpus(str(train), text_columns=["title", "body"], label_column="topic")
    checked = TextDataModule(corpus, TextTokenizer(model="word", min_frequency=1), cache_dir=str(cache),
                             val_size=2, test_size=2)
    checked.check_available()
    assert checked.splits()["train"][0].length() > 0 and not (tmp_path / "run").exists()
    TextDataModule(corpus, cache_dir=str(cache), val_size=2, test_size=2).splits()
    assert len(list((cache / "tables").iterdir())) == 1


# -- bad input: one line naming the file, the line or row, and the fix -------------------------------------
HEADER = "text,label\nfine,a\n"
BAD = {
    "few.csv": (HEADER + "no label here\n", "few.csv: line 3 has 1 fields, fewer than the header's 2"),
    "many.csv.gz": (HEADER + "x,b,c\n", "many.csv.gz: line 3 has 3 fields, more than the header's 2"),
    "quote.csv": (HEADER + '"never closed,b\nok,c\n', "quote.csv: line 3: a quoted field opened in this row is never"),
    "nolabel.csv": (HEADER + '"two\nlines",b\nthird,\n', "nolabel.csv: line 5 has an empty label (column 'label')"),
    "notext.tsv": ("text\tlabel\nfine\ta\n  \tb\n", "notext.tsv: line 3 has an empty text (column 'text')"),
    "columns.csv": ("title,topic\na,x\n", "columns.csv: no column 'text', 'label' in its header: 'title', 'topic'"),
    "bytes.csv": (b"text,label\nfine,a\ncaf\xe9,b\n", "bytes.csv: line 3 is not valid utf-8 (byte 0xe9 at offset 21)"),
    "json.jsonl": ('{"text": "a", "label": "x"}\n{"text": "b", label: y}\n', "json.jsonl: line 2 is not valid JSON"),
    "array.jsonl": ('{"text": "a", "label": "x"}\n[1, 2]\n', "array.jsonl: line 2 is not a JSON object"),
    "key.jsonl.bz2": ('{"text": "a", "label": "x"}\n{"text": "b", "topic": "y"}\n',
                      "key.jsonl.bz2: line 2 has no key 'label' (keys: 'text', 'topic')"),
    "mixed.jsonl": ('{"text": "a", "label": "x"}\n' * 3 + '{"text": "b", "label": 2}\n',
                    "mixed.jsonl: line 4: the label is a number, the one on line 1 a string"),
    "empty.csv": ("", "empty.csv is empty"),
    "empty.csv.zst": ("", "empty.csv.zst is empty"),
    "notes.txt": ("text,label\n", "cannot tell the format of"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_naming_the_file_and_row(tmp_path, name):
    content, message = BAD[name]
    path = write(tmp_path / name, content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    with pytest.raises(DataError) as err:
        read_table(path)
    assert message in str(err.value) and str(tmp_path) in str(err.value) and err.value.hint
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_bad_rows_far_into_a_file_are_located_exactly(tmp_path):
    lines = [f'"row {i}, with\na line break",{i % 3}' for i in range(400)]
    lines[300] = '"row 300",'  # an empty label after 300 two-line rows and the header: line 602
    path = tmp_path / "far.csv.gz"
    path.write_bytes(gzip.compress(("text,label\n" + "\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError, match="far.csv.gz: line 602 has an empty label"):
        read_table(path, block_size=1024)
    recs = [{"text": f"t{i}", "label": "x" if i % 7 else "y"} for i in range(300)]
    recs[250]["label"] = " "
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "far.parquet", row_group_size=64)
    with pytest.raises(DataError, match=r"far.parquet: row 251 has an empty label"):
        read_table(tmp_path / "far.parquet")


def test_corrupt_binary_and_compressed_files(tmp_path):
    junk = b"this is not what the suffix says\n" * 20
    for name, message in [("a.parquet", "a.parquet is not a valid Parquet file"),
                          ("a.arrow", "a.arrow is not an Arrow IPC or Feather (v2) file"),
                          ("a.csv.gz", "a.csv.gz is not a valid gzip file"),
                          ("a.csv.xz", "a.csv.xz is not a valid xz file"),
                          ("a.jsonl.zst", "a.jsonl.zst is not a valid zstd file")]:
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(DataError, match=re.escape(message)):
            read_table(tmp_path / name)
    truncated = gzip.compress(encode("csv", rows(n_per_class=50)))
    (tmp_path / "cut.csv.gz").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(DataError, match="cut.csv.gz is not a valid gzip file"):
        read_table(tmp_path / "cut.csv.gz", SPEC)
    pq.write_table(pa.table({"text": ["a"], "topic": ["b"]}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match="cols.parquet: no column 'label' in its columns: 'text', 'topic'"):
        read_table(tmp_path / "cols.parquet")


def test_a_file_that_fails_leaves_no_cache_folder(tmp_path):
    path = write(tmp_path / "bad.csv", (HEADER + "x,b,c\n").encode())
    with pytest.raises(DataError, match="line 3 has 3 fields"):
        read_table(path, cache_dir=tmp_path / "run" / "cache")
    assert not (tmp_path / "run").exists()


def test_a_compressed_csv_with_a_long_field_through_the_cli(workdir):
    """The user's e-mail CSV: trains; the Arrow copy sits in the run's cache (reuse is tested above)."""
    from tests.helpers.cli import QUIET, run_cli, run_dirs

    recs = rows(n_per_class=20)
    recs[3]["body"] += " spam" * 220_000  # over a megabyte, in one field
    data = write(workdir / "mails.csv.zst", encode("csv", recs))
    run_cli(["data=text_table", f"data.corpus.train={data}", "data.corpus.text_columns=[title,body]",
             "data.corpus.label_column=topic", "data.tokenizer.vocab_size=300", "data.tokenizer.min_frequency=1",
             "task=text_classification", "model=text_fasttext", "trainer.max_steps=2", "logger=none", *QUIET],
            cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    (copy,) = (run_dir / "cache" / "tables").iterdir()
    assert copy.name.startswith("mails.csv.zst-") and read_table(data, SPEC).equals(
        pa.ipc.open_file(pa.memory_map(str(copy))).read_all())
