"""Users' text tables read by pyarrow into the corpus contract: `text` (large_string) and `label` (string).

CSV, TSV, JSONL, Parquet and Arrow IPC / Feather files (the format from the suffix, or
data.corpus.format), each optionally compressed (.gz, .bz2, .xz, .zst). Files are streamed in
record batches, so fields may have any length and nothing passes through Python lists. With a
cache folder the converted table is written once as an Arrow IPC file and memory-mapped: a corpus
larger than memory never has to fit in it, and the next load (a resume, an eval) reads nothing
again. An Arrow file that already has the two columns is memory-mapped as it is.

Every problem is one DataError naming the file, the line or row and the fix; where pyarrow does
not say which line, table_errors reads the file again to find it.
"""

import bz2
import codecs
import contextlib
import gzip
import hashlib
import json
import lzma
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import zstandard

from lightdist.errors import DataError
from lightdist.text.data import table_errors

TableFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet", "arrow"]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
SCHEMA = pa.schema([("text", pa.large_string()), ("label", pa.string())])

# Bytes pyarrow parses at a time (CSV, JSONL). A row longer than a block is read again with
# blocks four times larger, up to MAX_BLOCK_SIZE.
BLOCK_SIZE = 16 << 20
MAX_BLOCK_SIZE = 1 << 30
PARQUET_BATCH_ROWS = 65536
# Part of every cache key: bump it when the conversion changes, so old cached tables are not reused.
_CACHE_VERSION = 1
_SPACE = pa.scalar(" ", pa.large_string())
# Streaming allocates and frees a block's worth of memory per block (the file's bytes, the parsed
# columns). pyarrow's default pool (mimalloc) hands freed blocks back to the OS and faults fresh
# pages in for the next one, which some VMs make slow: streaming a 1 GB CSV into the cache took
# 10-13 s with it, 1.7 s with the system allocator, which keeps the blocks (the 2-core
# development VM; bench/text_reading.py).
_POOL = pa.system_memory_pool()


@dataclass(frozen=True)
class TableSpec:
    """What to take from a table: the text is `text_columns` joined by a space, the label `label_column`."""

    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    columns: tuple[str, ...] | None = None  # the column names of a header-less CSV/TSV
    format: TableFormat = "auto"
    encoding: str = "utf-8"
    fallback_encoding: str | None = None  # CSV/TSV/JSONL not valid in `encoding` are read in this one

    @property
    def needed(self) -> list[str]:
        return list(dict.fromkeys([*self.text_columns, self.label_column]))


_KNOWN = ("known: .csv, .tsv/.tab, .jsonl/.ndjson, .parquet/.pq, .arrow/.feather/.ipc, "
          "each optionally followed by .gz, .bz2, .xz or .zst")


@dataclass(frozen=True)
class TableFile:
    path: Path
    format: str
    compression: str | None  # a pyarrow codec name, or "xz"

    @classmethod
    def of(cls, path: Path, fmt: str = "auto") -> "TableFile":
        suffixes = [s.lower() for s in path.suffixes]
        compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
        if compression:
            suffixes.pop()
        found = fmt if fmt != "auto" else FORMATS.get(suffixes[-1] if suffixes else "")
        if found is None:
            raise DataError(f"cannot tell the format of {path} from its suffix ({_KNOWN})",
                            hint="rename the file, or set data.corpus.format to csv, tsv, jsonl, parquet or arrow")
        return cls(path, found, compression)

    def stream(self) -> pa.NativeFile:
        """The file's bytes, decompressed, for one sequential read."""
        if self.compression == "xz":  # pyarrow has no xz codec: Python's lzma behind pyarrow's file interface
            return pa.PythonFile(lzma.open(self.path, "rb"), mode="r")
        if self.compression:
            return pa.input_stream(str(self.path), compression=self.compression, buffer_size=1 << 20)
        return pa.BufferedInputStream(pa.OSFile(str(self.path), "r", memory_pool=_POOL), 1 << 20, memory_pool=_POOL)

    def python_open(self):
        """The decompressed bytes as a Python file (table_errors reads them line by line)."""
        return {None: open, "gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open,
                "zstd": zstandard.open}[self.compression](self.path, "rb")

    def random_access(self) -> pa.NativeFile:
        """Parquet and Arrow readers seek: the file memory-mapped, or a compressed one decompressed in memory."""
        if self.compression is None:
            return pa.memory_map(str(self.path))
        with self.stream() as stream:
            return pa.BufferReader(stream.read_buffer())


# -- reading ---------------------------------------------------------------------------------------
def read_table(path: Path | str, spec: TableSpec = TableSpec(), cache_dir: Path | str | None = None,
               block_size: int = BLOCK_SIZE) -> pa.Table:
    """The (text, label) table of one file; memory-mapped from `cache_dir` when given."""
    path = Path(path)
    file = TableFile.of(path, spec.format)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty", hint="point the data config at a file with rows")
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist", hint="check the path in the data config") from exc
    if file.format == "arrow" and file.compression is None:
        table = _arrow_as_is(file, spec)
        if table is not None:
            return table
    if cache_dir is None:
        return _convert(file, spec, block_size, lambda batches: pa.Table.from_batches(list(batches), SCHEMA))
    target = _cache_file(file, spec, Path(cache_dir))
    if target.is_file():
        try:
            return _memory_mapped(target)
        except pa.ArrowInvalid:
            target.unlink(missing_ok=True)  # cut short by a crash or a full disk: convert again
    _convert(file, spec, block_size, lambda batches: _write(target, batches))
    return _memory_mapped(target)


def _convert(file: TableFile, spec: TableSpec, block_size: int, consume: Callable[[Iterator[pa.RecordBatch]], object]):
    """consume(batches of the contract), read again with bigger blocks or the fallback encoding when needed."""
    encodings = [spec.encoding, *([spec.fallback_encoding] if spec.fallback_encoding else [])]
    for encoding in encodings:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"unknown encoding '{encoding}'", hint="set data.corpus.encoding to a Python codec "
                            "name, e.g. utf-8 or cp1252") from None
    for encoding in encodings:
        size = block_size
        while True:
            try:
                return consume(_batches(file, spec, encoding, size))
            except _BlockTooSmall:
                if size >= MAX_BLOCK_SIZE:
                    raise DataError(f"{file.path} has a row longer than {MAX_BLOCK_SIZE >> 20} MiB",
                                    hint="split that row, or check the file's quoting (an unclosed quote "
                                    "runs to the end of the file)") from None
                size = min(size * 4, MAX_BLOCK_SIZE)
            except _Undecodable:
                break  # the next encoding, if any
    raise _undecodable_error(file, encodings)


class _BlockTooSmall(Exception):
    pass


class _Undecodable(Exception):
    pass


class _NotText(Exception):
    def __init__(self, name: str, kind: pa.DataType):
        super().__init__(name)
        self.name, self.kind = name, kind


class _BadRow(Exception):
    def __init__(self, row: int, what: str):
        super().__init__(what)
        self.row, self.what = row, what


def _batches(file: TableFile, spec: TableSpec, encoding: str, block_size: int) -> Iterator[pa.RecordBatch]:
    """The file's batches in the contract's schema; pyarrow's errors become DataErrors (or a retry)."""
    read = {"csv": _csv_batches, "tsv": _csv_batches, "jsonl": _jsonl_batches,
            "parquet": _parquet_batches, "arrow": _arrow_batches}[file.format]
    offset = 0
    try:
        for batch in read(file, spec, encoding, block_size):
            yield _contract(batch, spec, offset)
            offset += batch.num_rows
    except _BadRow as bad:
        raise _row_error(file, spec, encoding, bad.what, bad.row) from None
    except _NotText as bad:
        raise DataError(f"{file.path}: column {bad.name!r} holds {bad.kind} values, not text",
                        hint="set data.corpus.text_columns and data.corpus.label_column to columns of "
                        "strings or numbers") from None
    except UnicodeDecodeError:
        raise _Undecodable from None
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        message = str(exc)
        if "straddl" in message:
            raise _BlockTooSmall from None
        if "UTF8" in message or "UTF-8" in message:
            raise _Undecodable from None
        if message.startswith(("Empty CSV file", "Empty JSON")):
            raise DataError(f"{file.path} is empty", hint="point the data config at a file with rows") from None
        raise _row_error(file, spec, encoding, message, None) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        if file.compression is None:
            raise DataError(f"{file.path} cannot be read ({exc})") from exc
        raise DataError(f"{file.path} is not a valid {file.compression} file ({exc})",
                        hint="write the file again, or drop the compression suffix if it is not compressed") from None


def _decoded(stream: pa.NativeFile, encoding: str) -> pa.NativeFile:
    if codecs.lookup(encoding).name == "utf-8":
        return stream
    return pa.transcoding_input_stream(stream, encoding, "utf-8")


def _csv_batches(file: TableFile, spec: TableSpec, encoding: str, block_size: int) -> Iterator[pa.RecordBatch]:
    read = pcsv.ReadOptions(block_size=block_size, **({"column_names": list(spec.columns)} if spec.columns else {}))
    parse = pcsv.ParseOptions(delimiter="\t" if file.format == "tsv" else ",", newlines_in_values=True)
    # Only the needed columns are converted, all as text: no type inference on a first block to go wrong later.
    convert = pcsv.ConvertOptions(column_types=dict.fromkeys(spec.needed, pa.large_string()),
                                  include_columns=spec.needed)
    with _decoded(file.stream(), encoding) as stream:
        yield from pcsv.open_csv(stream, read, parse, convert, memory_pool=_POOL)


def _jsonl_batches(file: TableFile, spec: TableSpec, encoding: str, block_size: int) -> Iterator[pa.RecordBatch]:
    read = pjson.ReadOptions(block_size=block_size)
    # The needed keys keep the type the first block shows (a numeric label is cast to text later);
    # every other key is ignored, so its type never matters.
    with _decoded(file.stream(), encoding) as stream:
        first = pjson.open_json(stream, read_options=read, memory_pool=_POOL).schema
    scalar = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
              pa.types.is_boolean)
    schema = pa.schema([(name, first.field(name).type if name in first.names and any(
        is_type(first.field(name).type) for is_type in scalar) else pa.large_string()) for name in spec.needed])
    parse = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with _decoded(file.stream(), encoding) as stream:
        for batch in pjson.open_json(stream, read_options=read, parse_options=parse, memory_pool=_POOL):
            for column in batch.columns:  # pyarrow's JSON reader does not check UTF-8 (its CSV reader does)
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    column.validate(full=True)
            yield batch


def _require(file: TableFile, spec: TableSpec, names: list[str]) -> None:
    missing = [c for c in spec.needed if c not in names]
    if missing:
        raise DataError(f"{file.path}: no column {', '.join(map(repr, missing))} in its columns: "
                        f"{', '.join(map(repr, names))}",
                        hint="set data.corpus.text_columns and data.corpus.label_column to columns of the file")


def _parquet_batches(file: TableFile, spec: TableSpec, encoding: str, block_size: int) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(file.random_access())
    except pa.ArrowInvalid as exc:
        raise DataError(f"{file.path} is not a valid Parquet file ({exc})",
                        hint="write the file again, or set data.corpus.format to its real format") from None
    _require(file, spec, parquet.schema_arrow.names)
    yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=spec.needed)


def _arrow_reader(file: TableFile):
    source = file.random_access()
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        pass
    try:
        source.seek(0)
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{file.path} is not an Arrow IPC or Feather (v2) file ({exc})",
                        hint="write the file again, or set data.corpus.format to its real format") from None


def _arrow_batches(file: TableFile, spec: TableSpec, encoding: str, block_size: int) -> Iterator[pa.RecordBatch]:
    reader = _arrow_reader(file)
    _require(file, spec, reader.schema.names)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    for batch in batches:
        yield batch.select(spec.needed)


def _arrow_as_is(file: TableFile, spec: TableSpec) -> pa.Table | None:
    """An Arrow file that already holds the contract's columns, memory-mapped as it is (None: convert it)."""
    if spec.text_columns != ("text",) or spec.label_column != "label":
        return None
    reader = _arrow_reader(file)
    schema = reader.schema
    if not set(SCHEMA.names) <= set(schema.names) or any(schema.field(f.name).type != f.type for f in SCHEMA):
        return None
    offset = 0
    try:
        table = reader.read_all().select(SCHEMA.names)
        for batch in table.to_batches():
            if not _contract(batch, spec, offset).column(1).equals(batch.column(1)):
                return None  # labels with surrounding spaces: the converted table trims them
            offset += batch.num_rows
    except _BadRow as bad:
        raise _row_error(file, spec, spec.encoding, bad.what, bad.row) from None
    except pa.ArrowInvalid:
        return None  # a damaged file: the conversion reports it
    return table.cast(SCHEMA)


# -- the contract ----------------------------------------------------------------------------------
def _as_text(batch: pa.RecordBatch, name: str, kind: pa.DataType) -> pa.Array:
    column = batch.column(name)
    if column.type == kind:
        return column
    try:
        return pc.cast(column, kind, memory_pool=_POOL)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise _NotText(name, column.type) from None


def _blank(column: pa.Array) -> pa.Array:
    """True where a value is null or only whitespace."""
    return pc.invert(pc.fill_null(pc.match_substring_regex(column, r"\S"), False))


def _contract(batch: pa.RecordBatch, spec: TableSpec, offset: int) -> pa.RecordBatch:
    texts = [_as_text(batch, name, pa.large_string()) for name in spec.text_columns]
    text = texts[0]
    for more in texts[1:]:
        # Nulls are left out of the join. (binary_join_element_wise's null_handling="skip" is not
        # used: pyarrow drops the rows where every value is null.)
        text = pc.coalesce(pc.binary_join_element_wise(text, more, _SPACE, memory_pool=_POOL), text, more,
                           memory_pool=_POOL)
    label = pc.utf8_trim_whitespace(_as_text(batch, spec.label_column, pa.string()), memory_pool=_POOL)
    for column, what in ((label, "an empty label"), (text, "an empty text")):
        blank = _blank(column)
        if pc.any(blank).as_py():
            raise _BadRow(offset + pc.index(blank, True).as_py(), what)
    return pa.RecordBatch.from_arrays([text, label], schema=SCHEMA)


# -- errors ----------------------------------------------------------------------------------------
def _row_error(file: TableFile, spec: TableSpec, encoding: str, what: str, row: int | None) -> DataError:
    """The first bad line as table_errors finds it; else what pyarrow said (with the row, where known)."""
    found = None
    if file.format in ("csv", "tsv"):
        found = table_errors.csv_problem(file.python_open, encoding, "\t" if file.format == "tsv" else ",",
                                         spec.columns, spec.text_columns, spec.label_column)
    elif file.format == "jsonl":
        found = table_errors.jsonl_problem(file.python_open, encoding, spec.text_columns, spec.label_column)
    if found:
        message, hint = found
        return DataError(f"{file.path}: {message}", hint=hint)
    where = f"row {row + 1}" + (" (after the header)" if file.format in ("csv", "tsv") and not spec.columns else "")
    if row is not None:
        return DataError(f"{file.path}: {where} has {what} (columns {', '.join(map(repr, spec.needed))})",
                         hint=table_errors.ROW_HINT)
    return DataError(f"{file.path} cannot be read as {file.format} ({what})",
                     hint="fix the file, or set data.corpus.format to its real format")


def _undecodable_error(file: TableFile, encodings: list[str]) -> DataError:
    found = table_errors.undecodable(file.python_open, encodings[-1])
    at = f"line {found[0]}, byte 0x{found[2]:02x} at offset {found[1]}" if found else "no line found"
    if len(encodings) > 1:
        return DataError(f"{file.path} is neither valid {encodings[0]} nor {encodings[1]} ({at})",
                         hint="set data.corpus.encoding to the file's encoding")
    if found:
        return DataError(f"{file.path}: line {found[0]} is not valid {encodings[0]} (byte 0x{found[2]:02x} at "
                         f"offset {found[1]}{' of the decompressed data' if file.compression else ''})",
                         hint="set data.corpus.encoding to the file's encoding (e.g. cp1252), or "
                         "data.corpus.fallback_encoding=cp1252 to read it in that one when it is not utf-8")
    return DataError(f"{file.path} is not valid {encodings[0]}", hint="set data.corpus.encoding to the file's encoding")


# -- the cache -------------------------------------------------------------------------------------
def _cache_file(file: TableFile, spec: TableSpec, cache_dir: Path) -> Path:
    """<cache_dir>/tables/<name>-<where>-<key>.arrow: the key changes with the file and every option."""
    where = str(file.path.resolve())
    stat = file.path.stat()
    key = json.dumps([_CACHE_VERSION, where, stat.st_size, stat.st_mtime_ns, file.format, file.compression,
                      asdict(spec)])
    digest = hashlib.sha256
    return (cache_dir / "tables" /
            f"{file.path.name}-{digest(where.encode()).hexdigest()[:8]}-{digest(key.encode()).hexdigest()[:16]}.arrow")


def _write(target: Path, batches: Iterator[pa.RecordBatch]) -> None:
    """Written under a temporary name and renamed: a reader never sees half a table (ranks may race)."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            for batch in batches:
                writer.write_batch(batch)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        for folder in created:  # a file that fails to read leaves nothing behind (the preflight's promise)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    # Earlier versions of the same file (changed since, or read with other options) are dropped.
    same_file = target.name.rsplit("-", 1)[0] + "-"
    for old in target.parent.iterdir():
        if old.name.startswith(same_file) and old.suffix == ".arrow" and old != target:
            old.unlink(missing_ok=True)


def _memory_mapped(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
