"""A corpus read with Hugging Face `datasets` (data=hf_dataset).

`path` is a folder written by `save_to_disk` (a Dataset or a DatasetDict), a folder of data
files or data files themselves (`data_files`: CSV, TSV, JSON lines, Parquet, Arrow, text; also
compressed), or a dataset name on the Hugging Face Hub. The splits handed on are the
dataset's Arrow tables projected to `text` and `label` with pyarrow compute: memory-mapped,
never turned into Python lists.
"""

import atexit
import glob
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lightdist.errors import ConfigError, DataError
from lightdist.text.data.corpora import Corpus, CorpusSplits

ROLES = ("train", "val", "test")
# A name is a split the dataset must have; a list holds candidates, the first one present is used.
DEFAULT_SPLITS: dict[str, str | list[str] | None] = {
    "train": ["train"], "val": ["validation", "valid", "val", "dev"], "test": ["test"]}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {}),
            ".parquet": ("parquet", {}), ".arrow": ("arrow", {}), ".txt": ("text", {})}
LOCAL_COPY = ("where the network is, save a copy (datasets.load_dataset(...).save_to_disk(folder)) and set "
              "data.corpus.path=<folder>, or set data.corpus.data_files to its files; a copy already in "
              "datasets' cache loads with HF_DATASETS_OFFLINE=1")
HUB_TIMEOUT_S = 5.0


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _plain(value: Any) -> Any:
    """Config containers (Hydra hands over OmegaConf's) as the plain dicts and lists datasets expects."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _builder(files: list[str]) -> tuple[str, dict]:
    """datasets' file builder (and its options) from the files' suffixes, compression ignored."""
    found = set()
    for file in files:
        name = Path(file).name.lower()
        for compression in COMPRESSIONS:
            name = name.removesuffix(compression)
        suffix = Path(name).suffix
        if suffix not in BUILDERS:
            raise DataError(f"cannot tell the format of {file} from its suffix",
                            hint=f"use one of {', '.join(BUILDERS)} (optionally {'/'.join(COMPRESSIONS)})")
        found.add(suffix)
    builders = {BUILDERS[s][0] + str(BUILDERS[s][1]) for s in found}
    if len(builders) > 1:
        raise DataError(f"data.corpus.data_files mixes formats ({', '.join(sorted(found))})",
                        hint="give every split files of one format")
    return BUILDERS[found.pop()]


def _hub_reachable(endpoint: str) -> bool:
    """One short request instead of datasets' retries (half a minute when there is no network)."""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=HUB_TIMEOUT_S)
    except Exception:  # any failure to connect means: not reachable now
        return False
    return True


@contextmanager
def _quiet() -> Iterator[None]:
    """No datasets progress bars in run logs (restored afterwards for the caller's own use)."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what writing there would create)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


class HFDatasetCorpus(Corpus):
    title = "Hugging Face dataset"

    def __init__(
        self,
        path: str | None = None,
        data_files: str | list[str] | dict[str, Any] | None = None,
        name: str | None = None,
        revision: str | None = None,
        text_columns: list[str] | str = "text",
        label_column: str = "label",
        splits: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        num_proc: int | None = None,
    ):
        if not path and not data_files:
            raise ConfigError("data=hf_dataset needs data.corpus.path or data.corpus.data_files",
                              hint="a save_to_disk folder, a folder or files of data, or a Hub dataset name")
        self.path = str(path) if path else None
        self.data_files = _plain(data_files)
        self.name = name
        self.revision = revision
        self.text_columns = _as_list(_plain(text_columns))
        self.label_column = label_column
        self.splits = dict(DEFAULT_SPLITS)
        unknown = sorted(set(_plain(splits or {})) - set(ROLES))
        if unknown:
            raise ConfigError(f"data.corpus.splits has key(s) {', '.join(unknown)}",
                              hint="its keys are train, val and test, each a split name of the dataset or null")
        self.splits.update(_plain(splits or {}))
        self.cache_dir = cache_dir
        self.num_proc = num_proc

    # -- what path names ---------------------------------------------------------------------
    def _local(self) -> Path | None:
        return Path(self.path).expanduser() if self.path and Path(self.path).expanduser().exists() else None

    def _kind(self) -> str:
        """saved (save_to_disk folder), files (a folder of data or data files) or hub."""
        local = self._local()
        if local is not None and local.is_dir() and ((local / "dataset_dict.json").is_file()
                                                     or (local / "state.json").is_file()):
            return "saved"
        if local is not None or not self.path or glob.has_magic(self.path):
            return "files"
        looks_like_file = any(self.path.lower().endswith(s + c) for s in BUILDERS for c in ("", *COMPRESSIONS))
        if not looks_like_file and not Path(self.path).is_absolute() and not self.path.startswith((".", "~")) \
                and self.path.count("/") <= 1:
            return "hub"
        raise DataError(f"data.corpus.path={self.path} is no folder or file here, nor a Hub dataset name",
                        hint="a folder written by save_to_disk, a data folder or file (CSV, JSON lines, Parquet, "
                             "Arrow), or a name such as 'owner/dataset'")

    def prepare(self, allow_download: bool) -> None:
        if self._kind() == "files":
            self._file_list()

    def _file_list(self) -> list[str]:
        """Every file data_files (or a file/glob path) names, relative to a folder path; each must match."""
        if self.data_files is None:
            if self._local() is not None and self._local().is_dir():
                return []  # datasets finds the files (and splits by their names) itself
            patterns = [self.path]
        elif isinstance(self.data_files, dict):
            patterns = [p for files in self.data_files.values() for p in _as_list(files)]
        else:
            patterns = _as_list(self.data_files)
        base = self._local() if self._local() is not None and self._local().is_dir() else Path.cwd()
        found = []
        for pattern in patterns:
            full = base / Path(pattern).expanduser()
            matches = sorted(glob.glob(str(full), recursive=True))
            if not matches:
                raise DataError(f"no file matches {full}", hint="check data.corpus.data_files (or data.corpus.path)")
            found += matches
        return found

    # -- loading -----------------------------------------------------------------------------
    def _open(self, cache_dir: Path | None) -> dict[str, Any]:
        """The dataset's splits by name (datasets.Dataset each)."""
        import datasets

        kind = self._kind()
        with _quiet():
            if kind == "saved":
                loaded = datasets.load_from_disk(str(self._local()))
            elif kind == "files":
                loaded = self._load_files(datasets, cache_dir)
            else:
                loaded = self._load_hub(datasets)
        if isinstance(loaded, datasets.Dataset):
            return {"train": loaded}
        return dict(loaded)

    def _files_cache(self, cache_dir: Path | None) -> str:
        """Where datasets keeps its Arrow copy of the files: never ~/.cache unless data.corpus.cache_dir says so."""
        if self.cache_dir:
            return str(Path(self.cache_dir).expanduser())
        if cache_dir is not None:
            return str(Path(cache_dir) / "hf_datasets")
        scratch = tempfile.mkdtemp(prefix="lightdist-hf-")  # memory-mapped copies outlive the folder's removal
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch

    def _load_files(self, datasets, cache_dir: Path | None):
        files = self._file_list()
        local = self._local()
        if local is not None and local.is_dir():  # a data folder: datasets picks the builder and splits
            args, kwargs = (str(local),), {"data_files": self.data_files}
        else:
            builder, options = _builder(files)
            data_files = self.data_files if self.data_files is not None else self.path
            args, kwargs = (builder,), {"data_files": _plain(data_files), **options}
        cache = self._files_cache(cache_dir)
        created = _first_missing(Path(cache))
        logger = logging.getLogger("datasets")
        level = logger.level
        logger.setLevel(logging.CRITICAL)  # its error log of a bad file would repeat the line raised below
        try:
            return datasets.load_dataset(*args, **kwargs, cache_dir=cache, num_proc=self.num_proc)
        except (datasets.exceptions.DatasetsError, ValueError, FileNotFoundError) as exc:
            if created is not None:  # bad input leaves nothing behind (not even the run directory)
                shutil.rmtree(created, ignore_errors=True)
            cause = exc.__cause__ or exc
            raise DataError(f"{self.source()}: datasets cannot read it ({type(cause).__name__}: "
                            f"{str(cause).strip()})",
                            hint="fix or remove the row it names, or check the files' format") from exc
        finally:
            logger.setLevel(level)

    def _load_hub(self, datasets):
        if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable(datasets.config.HF_ENDPOINT):
            raise DataError(f"'{self.path}' is no local folder or file, and the Hugging Face Hub "
                            f"({datasets.config.HF_ENDPOINT}) cannot be reached", hint=LOCAL_COPY)
        try:
            return datasets.load_dataset(self.path, self.name, revision=self.revision, data_files=self.data_files,
                                         cache_dir=self.cache_dir, num_proc=self.num_proc)
        except ConnectionError as exc:  # offline and not in datasets' cache
            raise DataError(f"'{self.path}' is no local folder or file, and is not in datasets' cache while "
                            "offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)", hint=LOCAL_COPY) from exc
        except (datasets.exceptions.DatasetsError, ValueError, FileNotFoundError) as exc:
            raise DataError(f"Hub dataset '{self.path}': {exc}",
                            hint="check data.corpus.path, data.corpus.name (its config) and data.corpus.revision") \
                from exc

    def source(self) -> str:
        if self.path and self.data_files:
            return f"{self.path} ({self.data_files})"
        return str(self.path or self.data_files)

    # -- splits and columns ------------------------------------------------------------------
    def _pick_splits(self, available: list[str]) -> dict[str, str]:
        """{role: dataset split}; a dataset with one split only is the training split."""
        chosen = {}
        for role in ROLES:
            want = self.splits.get(role)
            if isinstance(want, str):
                if want not in available:
                    raise DataError(f"{self.source()} has no split '{want}' (data.corpus.splits.{role}); "
                                    f"its splits: {', '.join(available)}",
                                    hint=f"set data.corpus.splits.{role} to one of them, or null to draw it")
                chosen[role] = want
            elif want:
                present = [name for name in _as_list(want) if name in available]
                if present:
                    chosen[role] = present[0]
        if "train" not in chosen:
            if len(available) != 1:
                raise DataError(f"{self.source()} has no training split among {', '.join(available)}",
                                hint="set data.corpus.splits.train to one of them")
            chosen = {"train": available[0]}
        return chosen

    def _text(self, table: pa.Table, where: str) -> pa.ChunkedArray:
        parts = []
        for column in self.text_columns:
            kind = table.schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                    or pa.types.is_dictionary(kind)):
                raise DataError(f"{where}: column '{column}' holds {kind}, not text",
                                hint="name text columns in data.corpus.text_columns")
            parts.append(pc.cast(table.column(column), pa.large_string()))
        if len(parts) == 1:
            return pc.fill_null(parts[0], "")
        return pc.binary_join_element_wise(*parts, pa.scalar(" ", pa.large_string()),
                                           null_handling="replace", null_replacement="")

    def _labels(self, table: pa.Table, feature: Any, where: str) -> pa.ChunkedArray:
        from datasets import ClassLabel

        column = table.column(self.label_column)
        if isinstance(feature, ClassLabel):
            # -1 is datasets' "no label" (the hidden test labels of benchmarks)
            bad = pc.or_(pc.less(column, 0), pc.greater_equal(column, feature.num_classes))  # null where unlabelled
            self._refuse(bad, where, "has no label (null or -1)")
            return pc.take(pa.array(feature.names, pa.string()), column)
        kind = column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_boolean(kind) or pa.types.is_dictionary(kind)):
            raise DataError(f"{where}: label column '{self.label_column}' holds {kind}, not classes",
                            hint="name a column of class names or numbers in data.corpus.label_column")
        labels = pc.cast(column, pa.string())
        self._refuse(pc.is_null(labels), where, "has no label (null)")
        self._refuse(pc.equal(labels, ""), where, "has an empty label")
        return labels

    def _refuse(self, bad: pa.ChunkedArray, where: str, what: str) -> None:
        count = pc.sum(pc.cast(pc.fill_null(bad, True), pa.int64())).as_py() or 0
        if count:
            first = pc.index(pc.fill_null(bad, True), True).as_py()
            raise DataError(f"{where}: {count} row(s) {what}, the first row {first}",
                            hint="drop those rows (Dataset.filter, then save_to_disk), or map that split to null "
                                 "in data.corpus.splits to draw it from train")

    def _table(self, dataset: Any, split: str) -> pa.Table:
        where = f"{self.source()} [{split}]"
        names = list(dataset.column_names)
        missing = [c for c in (*self.text_columns, self.label_column) if c not in names]
        if missing:
            raise DataError(f"{where}: no column {', '.join(repr(m) for m in missing)}; its columns: "
                            f"{', '.join(names)}", hint="set data.corpus.text_columns and data.corpus.label_column")
        # The arrow format hands over the (memory-mapped) table itself, an indices mapping applied.
        table = dataset.select_columns([*dict.fromkeys([*self.text_columns, self.label_column])]) \
            .with_format("arrow")[:]
        return pa.table({"text": self._text(table, where),
                         "label": self._labels(table, dataset.features[self.label_column], where)})

    def load(self, cache_dir: Path | None = None) -> CorpusSplits:
        from datasets import ClassLabel

        found = self._open(Path(cache_dir) if cache_dir is not None else None)
        chosen = self._pick_splits(list(found))
        tables = {role: self._table(found[split], split) for role, split in chosen.items()}
        feature = found[chosen["train"]].features[self.label_column]
        names = list(feature.names) if isinstance(feature, ClassLabel) else None
        return CorpusSplits(tables["train"], tables.get("val"), tables.get("test"), names, source=self.source())

