"""The text classification data module: corpus -> splits -> tokenizer -> padded, length-bucketed batches."""

import inspect
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from lightdist.data.base import ClassificationDataModule
from lightdist.data.resumable import stateful_dataloader
from lightdist.data.samplers import BucketBatchSampler
from lightdist.data.splits import KFold, stratified_split, stratified_subset
from lightdist.errors import ConfigError, DataError
from lightdist.text.data.batching import PadCollate, TokenizedTexts
from lightdist.text.data.corpora import Corpus, CorpusSplits
from lightdist.text.data.token_cache import TokenCache, encode_in_memory
from lightdist.text.data.tokenizer import TextTokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENS_DIR = "tokens"  # under data.cache_dir; the corpus may keep its own files beside it
SPLITS = ("train", "val", "test")


def _class_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ('2' before '10'), names alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _holdout_count(size: int | float, total: int, name: str) -> int:
    """A fraction of the whole corpus, or a count."""
    count = int(round(size * total)) if isinstance(size, float) else int(size)
    if count < 1:
        raise ConfigError(f"data.{name}={size} leaves no {name.split('_')[0]} samples out of {total}",
                          hint=f"use a larger data.{name}")
    return count


def _take(texts: pa.ChunkedArray, rows: np.ndarray) -> pa.ChunkedArray:
    """The texts at `rows`; all of them in order are the column itself (left memory-mapped when it is)."""
    if len(rows) == len(texts) and np.array_equal(rows, np.arange(len(texts))):
        return texts
    return texts.take(pa.array(rows))


class Planner(Protocol):
    """Chooses settings from the training data (data.planner): may set tokenizer.model and
    tokenizer.max_length; returns a JSON-able plan. Deterministic: every rank and a resume call it."""

    def plan(self, train_texts: pa.Array | pa.ChunkedArray, train_labels: np.ndarray,
             tokenizer: TextTokenizer) -> dict[str, Any]: ...


class TextDataModule(ClassificationDataModule):
    """A corpus (data.corpus), a tokenizer trained on its training split (data.tokenizer), batches.

    facts(): vocab_size, num_classes, class_names, pad_id, max_length, train_size (and plan, with a
    planner). A batch is ((token ids B x T, lengths B), labels B), T being the batch's longest
    text. Texts stay Arrow columns until they are encoded, once, into the token cache (cache_dir).
    The tokenizer, label names and plan are this module's state_dict, so checkpoints carry them.
    """

    FACTS = ("vocab_size", "num_classes", "class_names", "pad_id", "max_length", "train_size")

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: TextTokenizer | None = None,
        tokenizer_file: str | None = None,
        val_size: int | float = 0.1,
        test_size: int | float = 0.2,
        split_seed: int = 0,
        kfold: KFold | None = None,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        bucketing: bool = True,
        bucket_batches: int = 50,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        planner: Planner | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, drop_last, num_workers, pin_memory,
                         persistent_workers)
        self.corpus = corpus
        self.tokenizer = tokenizer if tokenizer is not None else TextTokenizer()
        self.tokenizer_file = Path(tokenizer_file) if tokenizer_file else None
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.kfold = kfold if kfold is not None and kfold.enabled else None
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        self.bucketing = bucketing
        self.bucket_batches = bucket_batches
        self.planner = planner
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.plan: dict[str, Any] | None = None
        self.train_size: int | None = None
        self._own_tokenizer = True  # False once use_tokenizer() gave one (a pretrained model's)
        self._corpus_copy = True  # False while the preflight checks the corpus (see check_available)
        self.class_names: list[str] | None = None
        self._splits: dict[str, tuple[pa.ChunkedArray, np.ndarray]] | None = None

    # -- the corpus and its splits ---------------------------------------------------------------
    def _load(self) -> CorpusSplits:
        load = self.corpus.load
        if self._corpus_copy and self.cache_dir is not None and "cache_dir" in inspect.signature(load).parameters:
            return load(cache_dir=self.cache_dir)  # where a corpus keeps an Arrow copy of a converted file
        return load()

    def splits(self) -> dict[str, tuple[pa.ChunkedArray, np.ndarray]]:
        """{split: (texts, label indices)}, read once; seeded stratified val/test where the corpus has none.

        The texts stay Arrow (the corpus table's column, or the rows a drawn split takes from it)."""
        if self._splits is not None:
            return self._splits
        loaded = self._load()
        where = loaded.source or self.corpus.title
        tables = {"train": loaded.train, "val": loaded.val, "test": loaded.test}
        tables = {split: table for split, table in tables.items() if table is not None}
        if tables["train"].num_rows == 0:
            raise DataError(f"{where} holds no documents", hint="point the data config at a corpus with documents")
        present = pc.unique(tables["train"].column("label")).to_pylist()
        names = loaded.class_names or _class_order(set(present))
        if len(present) < 2:
            raise DataError(f"{where}: the training labels hold one class only ({names[0]!r})",
                            hint="a classifier needs at least two classes: check data.corpus.label_column")

        def encode_labels(split: str) -> np.ndarray:
            column = tables[split].column("label")
            index = pc.index_in(column, value_set=pa.array(names, column.type))
            if index.null_count:
                unknown = sorted(set(pc.unique(pc.filter(column, pc.is_null(index))).to_pylist()))
                raise DataError(f"{where}: the {split} split has label(s) {', '.join(map(repr, unknown[:5]))} that "
                                f"the training split lacks", hint="every class needs training samples")
            return index.to_numpy().astype(np.int64)

        # Each split: (the table its texts come from, the rows it takes, their labels).
        parts = {split: (table, np.arange(table.num_rows), encode_labels(split)) for split, table in tables.items()}
        total = tables["train"].num_rows
        if self.kfold and "val" in parts:  # k-fold: validation is one fold of all non-test data, the corpus' val included
            (train, _, train_labels), (val, _, val_labels) = parts["train"], parts.pop("val")
            joined = pa.concat_tables([train, val.cast(train.schema)])
            parts["train"] = (joined, np.arange(joined.num_rows), np.concatenate([train_labels, val_labels]))
        for split, size in (("test", self.test_size), ("val", self.val_size)):
            if split in parts:
                continue
            table, rows, labels = parts["train"]
            if split == "val" and self.kfold:
                keep, held = self.kfold.split(labels, self.split_seed)
            else:
                count = _holdout_count(size, total, f"{split}_size")
                try:
                    keep, held = stratified_split(labels, count, self.split_seed)
                except ValueError as exc:
                    raise ConfigError(f"data.{split}_size={size}: {exc}", hint="hold out fewer samples") from exc
            parts[split] = (table, rows[held], labels[held])
            parts["train"] = (table, rows[keep], labels[keep])
        out = {}
        for split in SPLITS:
            table, rows, labels = parts[split]
            chosen = stratified_subset(labels, self.subsets[split], self.split_seed)
            out[split] = (_take(table.column("text"), rows[chosen]), labels[chosen])
        self.class_names = list(names)
        self.train_size = len(out["train"][1])
        self._splits = out
        return out

    # -- what the rest of lightdist asks ---------------------------------------------------------
    def use_tokenizer(self, tokenizer) -> None:
        """Encode with `tokenizer` (a pretrained model's own) instead of the configured one; call before
        facts()/setup(). data.tokenizer_file is then written (for eval and predict), never loaded."""
        self.tokenizer = tokenizer
        self._own_tokenizer = False

    def facts(self) -> dict[str, Any]:
        if self.class_names is None:
            self.splits()
        if self.planner is not None and self.plan is None:  # a checkpoint's plan (load_state_dict) wins
            texts, labels = self.splits()["train"]
            self.plan = self.planner.plan(texts, labels, self.tokenizer)
        if not self.tokenizer.fitted:
            self._fit_or_load_tokenizer()
        facts = {
            "vocab_size": self.tokenizer.vocab_size,
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "pad_id": self.tokenizer.pad_id,
            "max_length": self.tokenizer.max_length,
            "train_size": self.train_size,
        }
        if self.planner is not None:
            facts["plan"] = self.plan
        return facts

    def _fit_or_load_tokenizer(self) -> None:
        """The run's saved tokenizer when there is one (resuming; DDP ranks started after rank 0), else train.

        Training on the training split is cheap, but tokenizers' subword trainers break ties between
        equally frequent merges in hash-map order, which differs between processes: two ranks may
        number, or even choose, tokens differently. So rank 0 saves what it trained into the run
        directory before any other rank starts (Lightning's launcher) and the others load it; ranks
        started all at once (srun, torchrun) get rank 0's copy in setup() (see _agree_on_tokenizer).
        """
        if self._own_tokenizer and self.tokenizer_file is not None and self.tokenizer_file.is_file():
            self.tokenizer.load(self.tokenizer_file)
            return
        self.tokenizer.fit(self.splits()["train"][0])
        if self.tokenizer_file is not None and rank_zero_only.rank == 0:
            self.tokenizer.save(self.tokenizer_file)

    def _agree_on_tokenizer(self) -> None:
        """Every rank encodes with rank 0's tokenizer (a collective: every rank calls setup)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return
        mine = self.tokenizer.state()
        theirs = trainer.strategy.broadcast(mine, src=0)
        if theirs["tokenizer"] != mine["tokenizer"]:
            size = self.tokenizer.vocab_size
            self.tokenizer.load_state(theirs)
            if self.tokenizer.vocab_size != size:
                raise DataError(f"rank {trainer.global_rank} trained a vocabulary of {size} tokens, rank 0 one of "
                                f"{self.tokenizer.vocab_size}", hint="start the ranks with Lightning's launcher "
                                "(rank 0 first), or use data.tokenizer.model=word, which trains identically everywhere")

    def check_available(self) -> None:
        self.corpus.prepare(allow_download=True)
        # The preflight runs before the run directory exists: the corpus is read without writing its
        # Arrow copy into cache_dir (the run writes it), so a check leaves no folder behind.
        self._corpus_copy = False
        try:
            self.splits()
        finally:
            self._corpus_copy = True

    def prepare_data(self) -> None:
        self.corpus.prepare(allow_download=True)  # one process per node: downloads happen once

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.facts()
        self._agree_on_tokenizer()
        datasets = self._tokenized()
        self.train_set, self.val_set, self.test_set = datasets["train"], datasets["val"], datasets["test"]
        trainer = self.trainer
        if trainer is not None and len(self.train_set) < trainer.world_size:
            raise DataError(f"{len(self.train_set)} training samples cannot feed {trainer.world_size} ranks",
                            hint="use more data or fewer devices")
        if trainer is not None and trainer.is_global_zero and (self.tokenizer_file is None or not self._own_tokenizer):
            self.tokenizer.save(self.tokenizer_file or Path(trainer.default_root_dir) / TOKENIZER_FILE)

    def _tokenized(self) -> dict[str, TokenizedTexts]:
        """Every split encoded once (in batches, on all cores) into the token cache, then memory-mapped.

        Rank 0 encodes first while the others wait at a barrier, then they read its entries, which
        holds however the ranks were started (Lightning's launcher, srun, torchrun): setup() runs on
        every rank. A rank that does not see rank 0's entries (a cache_dir local to each node)
        encodes its own; entries appear whole (renamed into place), so concurrent writers are safe.

        Encoding runs here, in the rank's main process, where the tokenizers library uses every
        core. TOKENIZERS_PARALLELISM stays unset on purpose: "false" would make this serial, and
        "true" would keep the library's thread pool on in processes forked after it was used (ranks
        started with start_method=fork), whose pool threads do not survive the fork (a deadlock).
        Unset, the library switches parallelism off only in such forked children; DataLoader
        workers are forked too but never tokenise (they slice the memory-mapped ids), so that
        costs nothing.
        """
        splits = self.splits()
        if self.cache_dir is None:
            return {split: TokenizedTexts(*encode_in_memory(self.tokenizer, texts), labels)
                    for split, (texts, labels) in splits.items()}
        cache = TokenCache(self.cache_dir / TOKENS_DIR)
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        lead = not distributed or trainer.global_rank == 0
        if lead:
            entries = {split: cache.get(self.tokenizer, texts) for split, (texts, _) in splits.items()}
        if distributed:
            trainer.strategy.barrier("lightdist-text-tokens")
        if not lead:
            entries = {split: cache.get(self.tokenizer, texts) for split, (texts, _) in splits.items()}
        return {split: TokenizedTexts.from_entry(entries[split], labels) for split, (_, labels) in splits.items()}

    # -- the tokenizer travels with checkpoints ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.tokenizer.fitted:
            return {}
        state = {"tokenizer": self.tokenizer.state(), "class_names": list(self.class_names or []),
                 "train_size": self.train_size}
        if self.plan is not None:
            state["plan"] = self.plan
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.tokenizer.fitted and self.tokenizer.state()["tokenizer"] != state["tokenizer"]["tokenizer"]:
            raise ConfigError("the checkpoint's tokenizer differs from the one this config trains",
                              hint="resume with the run's own data.tokenizer and data.corpus settings")
        self.tokenizer.load_state(state["tokenizer"])
        self.class_names = list(state["class_names"])
        self.train_size = state.get("train_size")  # None in checkpoints older than the key
        if "plan" in state:
            self.plan = state["plan"]

    def encode_inputs(self, raw: list[str]) -> tuple:
        """Raw texts -> a batch without targets, `(inputs,)`, as the task's predict_step takes it."""
        if not all(isinstance(t, str) for t in raw):
            raise DataError("text prediction takes strings")
        return (self.collate_fn().inputs(self.tokenizer.encode(list(raw))),)

    # -- loaders -----------------------------------------------------------------------------
    def collate_fn(self) -> PadCollate:
        return PadCollate(self.tokenizer.pad_id)

    def _loader(self, dataset: Dataset, training: bool) -> DataLoader:
        trainer = self.trainer
        if not self.bucketing or (trainer is not None and trainer.overfit_batches):
            return super()._loader(dataset, training)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = BucketBatchSampler(
            dataset.lengths, self.batch_size if training else self.eval_batch_size, world, rank,
            shuffle=training and self.shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            drop_last=training and self.drop_last, bucket_batches=self.bucket_batches)
        # resumable (the sampler keeps its epoch and position; lightdist.data.resumable), and with its
        # own generator for the workers' base seed, so loading draws nothing from the global one
        loader = stateful_dataloader if training and self.exact_resume else DataLoader
        return loader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                      pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                      collate_fn=self.collate_fn(), generator=torch.Generator().manual_seed(sampler.seed))
