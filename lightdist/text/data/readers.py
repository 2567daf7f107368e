"""Reading users' text files: decoding with clear errors, CSV/TSV/JSONL tables, folder-per-class corpora.

Every problem with a file (missing, empty, undecodable, a missing column, a bad row) is a
DataError naming the file, the line where it applies and the fix. Files are only read.
"""

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lightdist.errors import DataError

TableFormat = Literal["auto", "csv", "tsv", "jsonl"]
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class LabelledTexts:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str, label: str) -> None:
        self.texts.append(text)
        self.labels.append(label)


@dataclass(frozen=True)
class Decoding:
    encoding: str = "utf-8"
    # Decode files that are not valid in `encoding` with this one instead (corpora that mix encodings).
    fallback: str | None = None

    def read(self, path: Path) -> str:
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise DataError(f"{path} does not exist", hint="check the path in the data config") from exc
        except OSError as exc:
            raise DataError(f"{path} cannot be read ({exc.strerror})") from exc
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            if self.fallback:
                try:
                    return _strip_bom(raw.decode(self.fallback))
                except (UnicodeDecodeError, LookupError) as again:
                    raise DataError(f"{path} is neither valid {self.encoding} nor {self.fallback} ({again})",
                                    hint="set data.corpus.encoding to the file's encoding") from again
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{path}: line {line} is not valid {self.encoding} (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                hint="set data.corpus.encoding to the file's encoding (e.g. cp1252), or data.corpus.fallback_encoding"
                "=cp1252 to decode only the files that are not utf-8 with it",
            ) from exc
        except LookupError as exc:
            raise DataError(f"unknown encoding '{self.encoding}'", hint="use a Python codec name, e.g. utf-8") from exc
        return _strip_bom(text)


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def table_format(path: Path, fmt: TableFormat) -> str:
    if fmt != "auto":
        return fmt
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(f"cannot tell the format of {path} from its suffix",
                        hint="set data.corpus.format to csv, tsv or jsonl")
    return found


def read_table(
    path: Path,
    fmt: TableFormat,
    text_columns: list[str],
    label_column: str,
    decoding: Decoding,
    columns: list[str] | None = None,
) -> LabelledTexts:
    """Rows of a CSV/TSV (header row, or `columns` naming a header-less file) or JSONL file.

    The text of a row is its `text_columns` joined by a space (e.g. title and description).
    """
    fmt = table_format(path, fmt)
    content = decoding.read(path)
    if not content.strip():
        raise DataError(f"{path} is empty", hint="point the data config at a file with rows")
    if fmt == "jsonl":
        return _read_jsonl(path, content, text_columns, label_column)
    return _read_delimited(path, content, "\t" if fmt == "tsv" else ",", text_columns, label_column, columns)


def _read_delimited(path: Path, content: str, delimiter: str, text_columns: list[str], label_column: str,
                    columns: list[str] | None) -> LabelledTexts:
    reader = csv.DictReader(io.StringIO(content, newline=""), fieldnames=columns, delimiter=delimiter, strict=True)
    header = reader.fieldnames or []
    missing = [c for c in [*text_columns, label_column] if c not in header]
    if missing:
        where = "columns (data.corpus.columns)" if columns else "header"
        raise DataError(f"{path}: no column {', '.join(repr(m) for m in missing)} in its {where}: "
                        f"{', '.join(repr(h) for h in header)}",
                        hint="set data.corpus.text_columns and data.corpus.label_column to columns of the file")
    out = LabelledTexts()
    try:
        for row in reader:
            line = reader.line_num
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            values = [row.get(c) for c in [*text_columns, label_column]]
            if any(v is None for v in values):
                raise DataError(f"{path}: line {line} has {len([v for v in row.values() if v is not None])} "
                                f"fields, fewer than the header's {len(header)}", hint="fix or remove that row")
            _add(out, path, line, [row[c] for c in text_columns], row[label_column])
    except csv.Error as exc:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}: line {reader.line_num} is not valid {kind} ({exc})",
                        hint="fix the quoting of that row") from exc
    return out


def _read_jsonl(path: Path, content: str, text_columns: list[str], label_column: str) -> LabelledTexts:
    out = LabelledTexts()
    for line_number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_number} is not valid JSON ({exc.msg})", hint="one JSON object per line") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_number} is not a JSON object", hint="one JSON object per line")
        missing = [c for c in [*text_columns, label_column] if c not in row]
        if missing:
            raise DataError(f"{path}: line {line_number} has no key {', '.join(repr(m) for m in missing)} "
                            f"(keys: {', '.join(repr(k) for k in row)})",
                            hint="set data.corpus.text_columns and data.corpus.label_column to keys of the objects")
        _add(out, path, line_number, [row[c] for c in text_columns], row[label_column])
    return out


def _add(out: LabelledTexts, path: Path, line: int, texts: list, label) -> None:
    label = "" if label is None else str(label).strip()
    if not label:
        raise DataError(f"{path}: line {line} has an empty label", hint="fix or remove that row")
    out.add(" ".join(str(t) for t in texts if t is not None), label)


def read_folder(folder: Path, extensions: list[str], decoding: Decoding) -> LabelledTexts:
    """One sub-folder per label, one file per document (its whole content is the text)."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder", hint="point data.corpus.path at a folder of class folders")
    out = LabelledTexts()
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class folders", hint="put one folder per label, one file per document in it")
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"{class_dir} holds no {'/'.join(sorted(suffixes))} files",
                            hint="remove the folder or set data.corpus.extensions")
        for file in files:
            text = decoding.read(file)
            if not text.strip():
                raise DataError(f"{file} is empty", hint="delete it or give it its text")
            out.add(text, class_dir.name)
    return out
