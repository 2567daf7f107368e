"""Reading users' text documents: decoding with clear errors, folder-per-class corpora.

Every problem with a file (missing, empty, undecodable) is a DataError naming the file, the line
where it applies and the fix. Files are only read. Tables (CSV, JSONL, Parquet, ...) are read by
pyarrow in tables.py.
"""

from dataclasses import dataclass, field
from pathlib import Path

from lightdist.errors import DataError


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
