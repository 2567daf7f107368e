"""Naming the line that breaks a table: the file read again with Python's csv and json modules.

pyarrow reads tables fast but says little about where a problem is (a CSV parse error names no
row, a JSON one counts within a block). Only when a read fails is the file read again here, row by
row, to name the line and the fix: slow, but only ever on the way to an error.
Each function returns (message, hint) for the first problem it finds, or None.
"""

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import BinaryIO

Opener = Callable[[], BinaryIO]
Problem = tuple[str, str]

ROW_HINT = "fix or remove that row"


def undecodable(open_binary: Opener, encoding: str) -> tuple[int, int, int] | None:
    """(line, offset, byte) of the first byte that is not valid in `encoding`, or None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, number = 0, 0
    with open_binary() as f:
        for number, line in enumerate(f, 1):
            pending = len(decoder.getstate()[0])  # bytes of a character begun on the previous line
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                return number, offset - pending + exc.start, exc.object[exc.start]
            offset += len(line)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return number, offset - len(exc.object) + exc.start, exc.object[exc.start]
    return None


def _text(open_binary: Opener, encoding: str) -> io.TextIOWrapper:
    # utf-8-sig: a byte-order mark is not part of the first column's name
    return io.TextIOWrapper(open_binary(), encoding="utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding,
                            newline="")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def csv_problem(open_binary: Opener, encoding: str, delimiter: str, columns: Sequence[str] | None,
                text_columns: Sequence[str], label_column: str) -> Problem | None:
    kind = "TSV" if delimiter == "\t" else "CSV"
    csv.field_size_limit(2**31 - 1)  # fields of any length (the default stops at 131,072 characters)
    start = 1
    with _text(open_binary, encoding) as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = list(columns) if columns else next(reader, None)
            if not header:
                return "holds no rows", "point the data config at a file with rows"
            missing = [c for c in [*text_columns, label_column] if c not in header]
            if missing:
                where = "columns (data.corpus.columns)" if columns else "header"
                return (f"no column {_quoted(missing)} in its {where}: {_quoted(header)}",
                        "set data.corpus.text_columns and data.corpus.label_column to columns of the file"
                        + ("" if columns else ", or data.corpus.columns if it has no header row"))
            texts, label = [header.index(c) for c in text_columns], header.index(label_column)
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return None
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    than = f"the {len(header)} in data.corpus.columns" if columns else f"the header's {len(header)}"
                    return (f"line {start} has {len(row)} fields, {'fewer' if len(row) < len(header) else 'more'} "
                            f"than {than}",
                            f"{ROW_HINT}; a field holding a {'tab' if kind == 'TSV' else 'comma'}, quote or line "
                            f"break goes in double quotes, with each quote inside it doubled")
                if not row[label].strip():
                    return f"line {start} has an empty label (column {label_column!r})", ROW_HINT
                if not " ".join(row[i] for i in texts).strip():
                    return f"line {start} has an empty text (column {_quoted(text_columns)})", ROW_HINT
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return (f"line {start}: a quoted field opened in this row is never closed",
                        "close the quote; a quote inside a quoted field is written twice")
            return (f"line {start} is not valid {kind} ({exc})",
                    "fix the quoting of that row; a quote inside a quoted field is written twice")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), "null")


def jsonl_problem(open_binary: Opener, encoding: str, text_columns: Sequence[str], label_column: str) -> Problem | None:
    keys_hint = "set data.corpus.text_columns and data.corpus.label_column to keys of the objects"
    first_label = None
    with _text(open_binary, encoding) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number} is not valid JSON ({exc.msg})", "one JSON object per line"
            if not isinstance(row, dict):
                return f"line {number} is not a JSON object", "one JSON object per line"
            missing = [c for c in [*text_columns, label_column] if c not in row]
            if missing:
                return f"line {number} has no key {_quoted(missing)} (keys: {_quoted(row)})", keys_hint
            label, texts = row[label_column], [row[c] for c in text_columns]
            for key, value in [(label_column, label), *zip(text_columns, texts)]:
                if isinstance(value, list | dict):
                    return f"line {number}: {key!r} holds {_kind(value)}, not text", keys_hint
            if label is None or not str(label).strip():
                return f"line {number} has an empty label (key {label_column!r})", ROW_HINT
            first_label = first_label or (number, _kind(label))
            if _kind(label) != first_label[1]:
                return (f"line {number}: the label is {_kind(label)}, the one on line {first_label[0]} {first_label[1]}",
                        "give every label the same JSON type (all strings, or all numbers)")
            if not " ".join(str(t) for t in texts if t is not None).strip():
                return f"line {number} has an empty text (key {_quoted(text_columns)})", ROW_HINT
    return None
