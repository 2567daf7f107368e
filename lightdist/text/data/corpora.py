"""Where labelled texts come from. Each corpus is configured under `data.corpus` and returns its splits.

- FolderCorpus: one folder per label, one file per document (BBC News); optionally already
  split into train/ [val/] test/ folders of class folders.
- TableCorpus: users' CSV / TSV / JSONL / Parquet / Arrow files (optionally compressed) with
  configurable text and label columns, read by pyarrow (tables.py); memory-mapped from an Arrow
  copy in `cache_dir` when the data module gives one.
- AGNewsCorpus: AG News in its canonical CSV release (class index 1-4, title, description),
  downloaded (checksummed) when missing and online.
A corpus without a val or test split gets seeded stratified ones from the data module.
"""

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lightdist.data.download import RemoteFile, fetch_files, locate
from lightdist.errors import DataError
from lightdist.text.data.readers import Decoding, LabelledTexts, read_folder
from lightdist.text.data.tables import TableFormat, TableSpec, read_table

SPLIT_FOLDERS = ("train", "val", "test")


def as_table(rows: LabelledTexts) -> pa.Table:
    """The corpus contract: a table of `text` (large_string) and `label` (string), no nulls."""
    return pa.table({"text": pa.array(rows.texts, pa.large_string()), "label": pa.array(rows.labels, pa.string())})


@dataclass
class CorpusSplits:
    """Each split is an Arrow table with columns `text` (large_string) and `label` (string)."""

    train: pa.Table
    val: pa.Table | None = None
    test: pa.Table | None = None
    # The class order when the corpus defines one (AG News); else the sorted training labels.
    class_names: list[str] | None = None
    source: str = ""


class Corpus:
    title = "corpus"

    def prepare(self, allow_download: bool) -> None:
        """Make the files present (download them when the corpus knows how), or raise DataError."""

    def load(self) -> CorpusSplits:
        raise NotImplementedError


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


class FolderCorpus(Corpus):
    title = "folder corpus"

    def __init__(self, path: str, extensions: list[str] | str = ".txt", encoding: str = "utf-8",
                 fallback_encoding: str | None = None):
        self.path = Path(path).expanduser()
        self.extensions = _as_list(extensions)
        self.decoding = Decoding(encoding, fallback_encoding)

    def prepare(self, allow_download: bool) -> None:
        if not self.path.is_dir():
            raise DataError(f"text corpus folder {self.path} does not exist",
                            hint="set data.corpus.path (or data.root / $LIGHTDIST_DATA) to the folder holding it")

    def _split_folders(self) -> dict[str, Path] | None:
        """train/ [val/] test/ when the corpus comes split; None for a flat folder of class folders."""
        subdirs = {p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if "train" in subdirs and subdirs <= set(SPLIT_FOLDERS):
            return {name: self.path / name for name in SPLIT_FOLDERS if name in subdirs}
        return None

    def load(self) -> CorpusSplits:
        self.prepare(False)
        splits = self._split_folders()
        if splits is None:
            return CorpusSplits(as_table(read_folder(self.path, self.extensions, self.decoding)), source=str(self.path))
        read = {name: as_table(read_folder(folder, self.extensions, self.decoding)) for name, folder in splits.items()}
        return CorpusSplits(read["train"], read.get("val"), read.get("test"), source=str(splits["train"]))


class TableCorpus(Corpus):
    title = "table corpus"

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        format: TableFormat = "auto",
        text_columns: list[str] | str = "text",
        label_column: str = "label",
        columns: list[str] | None = None,
        class_names: list[str] | None = None,
        encoding: str = "utf-8",
        fallback_encoding: str | None = None,
    ):
        self.files = {name: Path(p).expanduser() for name, p in (("train", train), ("val", val), ("test", test)) if p}
        self.spec = TableSpec(tuple(_as_list(text_columns)), label_column, tuple(_as_list(columns)) if columns else None,
                              format, encoding, fallback_encoding)
        self.class_names = _as_list(class_names) if class_names else None

    def prepare(self, allow_download: bool) -> None:
        for name, path in self.files.items():
            if not path.is_file():
                raise DataError(f"{name} file {path} does not exist", hint=f"set data.corpus.{name} to an existing file")

    def load(self, cache_dir: Path | None = None) -> CorpusSplits:
        """The files' (text, label) tables; with `cache_dir`, memory-mapped from Arrow copies kept there."""
        self.prepare(False)
        read = {name: read_table(path, self.spec, cache_dir) for name, path in self.files.items()}
        return CorpusSplits(read["train"], read.get("val"), read.get("test"), self.class_names,
                            source=str(self.files["train"]))


_AG_NEWS_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
AG_NEWS_FILES = ("train.csv", "test.csv")
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # classes.txt of the release, in index order


class AGNewsCorpus(Corpus):
    """Zhang, Zhao & LeCun (2015)'s AG News: ag_news_csv/{train,test}.csv (+ classes.txt).

    Rows are `"class index","title","description"` without a header, the index 1-based.
    """

    title = "AG News"

    def __init__(self, root: str, download: bool = True, encoding: str = "utf-8"):
        self.root = Path(root).expanduser()
        self.download = download
        self.encoding = encoding
        self._folder: Path | None = None

    def prepare(self, allow_download: bool) -> None:
        if self._folder is None:
            # md5 of the canonical files (the ones torchtext also checks).
            remote = (RemoteFile("train.csv", _AG_NEWS_URL + "train.csv", "b1a00f826fdfbd249f79597b59e1dc12"),
                      RemoteFile("test.csv", _AG_NEWS_URL + "test.csv", "d52ea96a97a2d943681189a97654912d"))
            self._folder = locate(self.root, ("ag_news_csv",), AG_NEWS_FILES, self.title,
                                  allow_download and self.download, fetch_files(remote),
                                  download_key="data.corpus.download")

    def class_names(self, folder: Path) -> list[str]:
        path = folder / "classes.txt"
        if not path.is_file():
            return list(AG_NEWS_CLASSES)
        names = [line.strip() for line in Decoding(self.encoding).read(path).splitlines() if line.strip()]
        if len(names) < 2:
            raise DataError(f"{path} names {len(names)} class(es)", hint="one class name per line, in index order")
        return names

    def load(self) -> CorpusSplits:
        self.prepare(False)
        folder = self._folder
        names = self.class_names(folder)
        spec = TableSpec(("title", "description"), "index", ("index", "title", "description"), "csv", self.encoding)
        splits = {}
        for split in ("train", "test"):
            path = folder / f"{split}.csv"
            table = read_table(path, spec)
            index = table.column("label")
            valid = pc.match_substring_regex(index, r"^[0-9]{1,9}$")
            if pc.all(valid).as_py():
                number = pc.cast(index, pa.int64())
                valid = pc.and_(pc.greater_equal(number, 1), pc.less_equal(number, len(names)))
            if not pc.all(valid).as_py():
                row = pc.index(valid, False).as_py()
                raise DataError(f"{path}: row {row + 1} has class index {index[row].as_py()!r}, expected 1-{len(names)}",
                                hint="the file is not the canonical AG News CSV: delete it and download again")
            labels = pc.take(pa.array(names, pa.string()), pc.subtract(number, 1))
            # The release escapes line breaks inside descriptions as a backslash.
            text = pc.replace_substring(pc.replace_substring(table.column("text"), "\\n", " "), "\\", " ")
            splits[split] = pa.table({"text": text, "label": labels})
        return CorpusSplits(splits["train"], None, splits["test"], names, source=str(folder))
