"""The text classification data module: corpus -> splits -> tokenizer -> padded, length-bucketed batches."""

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from lightdist.data.base import ClassificationDataModule
from lightdist.data.samplers import BucketBatchSampler
from lightdist.data.splits import KFold, balanced_subsets, pick, stratified_split
from lightdist.errors import ConfigError, DataError
from lightdist.text.data.batching import PadCollate, TokenizedTexts
from lightdist.text.data.corpora import Corpus
from lightdist.text.data.tokenizer import TextTokenizer

TOKENIZER_FILE = "tokenizer.json"
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


class TextDataModule(ClassificationDataModule):
    """A corpus (data.corpus), a tokenizer trained on its training split (data.tokenizer), batches.

    facts(): vocab_size, num_classes, class_names, pad_id, max_length. A batch is
    ((token ids B x T, lengths B), labels B), T being the batch's longest text. The tokenizer
    and label names are this module's state_dict, so checkpoints carry them.
    """

    FACTS = ("vocab_size", "num_classes", "class_names", "pad_id", "max_length")

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
        self.class_names: list[str] | None = None
        self._splits: dict[str, tuple[list[str], np.ndarray]] | None = None

    # -- the corpus and its splits ---------------------------------------------------------------
    def splits(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """{split: (texts, label indices)}, read once; seeded stratified val/test where the corpus has none."""
        if self._splits is not None:
            return self._splits
        loaded = self.corpus.load()
        corpus = SimpleNamespace(source=loaded.source, class_names=loaded.class_names, **{
            split: None if table is None else SimpleNamespace(texts=table.column("text").to_pylist(),
                                                              labels=table.column("label").to_pylist())
            for split, table in (("train", loaded.train), ("val", loaded.val), ("test", loaded.test))})
        where = corpus.source or self.corpus.title
        if len(corpus.train.texts) == 0:
            raise DataError(f"{where} holds no documents", hint="point the data config at a corpus with documents")
        names = corpus.class_names or _class_order(set(corpus.train.labels))
        if len(set(corpus.train.labels)) < 2:
            raise DataError(f"{where}: the training labels hold one class only ({names[0]!r})",
                            hint="a classifier needs at least two classes: check data.corpus.label_column")
        index = {name: i for i, name in enumerate(names)}

        def encode_labels(part, split: str) -> np.ndarray:
            unknown = sorted(set(part.labels) - set(index))
            if unknown:
                raise DataError(f"{where}: the {split} split has label(s) {', '.join(map(repr, unknown[:5]))} that "
                                f"the training split lacks", hint="every class needs training samples")
            return np.array([index[label] for label in part.labels], dtype=np.int64)

        texts = {"train": corpus.train.texts}
        labels = {"train": encode_labels(corpus.train, "train")}
        for split in ("val", "test"):
            part = getattr(corpus, split)
            if part is not None:
                texts[split], labels[split] = part.texts, encode_labels(part, split)
        total = len(texts["train"])
        if self.kfold:  # k-fold: validation is one fold of all non-test data, the corpus' own val included
            if "val" in texts:
                texts["train"] = texts["train"] + texts.pop("val")
                labels["train"] = np.concatenate([labels["train"], labels.pop("val")])
        for split, size in (("test", self.test_size), ("val", self.val_size)):
            if split in texts:
                continue
            if split == "val" and self.kfold:
                keep, held = self.kfold.split(labels["train"], self.split_seed)
                texts["val"], labels["val"] = pick(texts["train"], labels["train"], held)
                texts["train"], labels["train"] = pick(texts["train"], labels["train"], keep)
                continue
            count = _holdout_count(size, total, f"{split}_size")
            try:
                keep, held = stratified_split(labels["train"], count, self.split_seed)
            except ValueError as exc:
                raise ConfigError(f"data.{split}_size={size}: {exc}", hint="hold out fewer samples") from exc
            texts[split], labels[split] = pick(texts["train"], labels["train"], held)
            texts["train"], labels["train"] = pick(texts["train"], labels["train"], keep)
        out = balanced_subsets({s: (texts[s], labels[s]) for s in SPLITS}, self.subsets, self.split_seed)
        self.class_names = list(names)
        self._splits = out
        return out

    # -- what the rest of lightdist asks ---------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        if self.class_names is None:
            self.splits()
        if not self.tokenizer.fitted:
            self._fit_or_load_tokenizer()
        return {
            "vocab_size": self.tokenizer.vocab_size,
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "pad_id": self.tokenizer.pad_id,
            "max_length": self.tokenizer.max_length,
        }

    def _fit_or_load_tokenizer(self) -> None:
        """The run's saved tokenizer when there is one (resuming; DDP ranks started after rank 0), else train.

        Training on the training split is cheap, but tokenizers' subword trainers break ties between
        equally frequent merges in hash-map order, which differs between processes: two ranks may
        number, or even choose, tokens differently. So rank 0 saves what it trained into the run
        directory before any other rank starts (Lightning's launcher) and the others load it; ranks
        started all at once (srun, torchrun) get rank 0's copy in setup() (see _agree_on_tokenizer).
        """
        if self.tokenizer_file is not None and self.tokenizer_file.is_file():
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
        self.splits()

    def prepare_data(self) -> None:
        self.corpus.prepare(allow_download=True)  # one process per node: downloads happen once

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.facts()
        self._agree_on_tokenizer()
        datasets = {split: TokenizedTexts(self.tokenizer.encode(texts), labels)
                    for split, (texts, labels) in self.splits().items()}
        self.train_set, self.val_set, self.test_set = datasets["train"], datasets["val"], datasets["test"]
        trainer = self.trainer
        if trainer is not None and len(self.train_set) < trainer.world_size:
            raise DataError(f"{len(self.train_set)} training samples cannot feed {trainer.world_size} ranks",
                            hint="use more data or fewer devices")
        if trainer is not None and trainer.is_global_zero and self.tokenizer_file is None:
            self.tokenizer.save(Path(trainer.default_root_dir) / TOKENIZER_FILE)

    # -- the tokenizer travels with checkpoints ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.tokenizer.fitted:
            return {}
        return {"tokenizer": self.tokenizer.state(), "class_names": list(self.class_names or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.tokenizer.fitted and self.tokenizer.state()["tokenizer"] != state["tokenizer"]["tokenizer"]:
            raise ConfigError("the checkpoint's tokenizer differs from the one this config trains",
                              hint="resume with the run's own data.tokenizer and data.corpus settings")
        self.tokenizer.load_state(state["tokenizer"])
        self.class_names = list(state["class_names"])

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
        return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                          collate_fn=self.collate_fn())
