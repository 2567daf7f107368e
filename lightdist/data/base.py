"""What lightdist asks of every data module, and what classification data modules share."""

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lightdist.data.resumable import training_loader
from lightdist.data.samplers import UnpaddedDistributedSampler


class DataModule(L.LightningDataModule):
    """The two things train.py and the preflight ask of any data module.

    FACTS names what facts() returns, so that the preflight can tell, without building
    anything, whether the chosen model and task get every argument they need.
    """

    FACTS: tuple[str, ...] = ()
    # facts() is cheap once check_available() passed, and writes nothing: the preflight then
    # builds the model with them, so that a value the model refuses ends before any run starts.
    PREFLIGHT_FACTS: bool = False

    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about the data (num_classes, class_names, vocab_size, ...).

        train.py passes each model/task the facts its constructor accepts by name.
        """
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise DataError when the dataset is missing and cannot be fetched (called before any run)."""

    def encode_inputs(self, raw: list) -> Any:
        """Raw inputs (texts, ...) -> a batch without targets, `(inputs,)`, for `lightdist predict`.

        Called on a data module restored from a checkpoint (load_state_dict), without its dataset.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support prediction yet")


class ClassificationDataModule(DataModule):
    """Subclasses fill train_set/val_set/test_set in setup() and describe the data in facts()."""

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError("data.batch_size must be at least 1")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        # batches each worker loads ahead; torch refuses the option without workers
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        # stateful training loaders (lightdist.data.resumable); train.py sets it from `exact_resume`
        self.exact_resume = True

    def collate_fn(self):
        return None

    def _sampler(self, dataset: Dataset, training: bool) -> Sampler | None:
        """Shard over ranks ourselves: Lightning's automatic sampler always shuffles training data
        (ignoring shuffle=false) and pads evaluation data with repeated samples."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        if training:
            return DistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=self.shuffle,
                                      seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), drop_last=self.drop_last)
        return UnpaddedDistributedSampler(dataset, trainer.world_size, trainer.global_rank)

    def _overfitting(self) -> bool:
        """overfit_batches: Lightning rebuilds the training loader with a sequential sampler."""
        return self.trainer is not None and bool(self.trainer.overfit_batches)

    def _loader(self, dataset: Dataset, training: bool) -> DataLoader:
        options = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                       persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor,
                       collate_fn=self.collate_fn())
        if training and not self._overfitting():
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            return training_loader(dataset, batch_size=self.batch_size, world_size=world, rank=rank,
                                   shuffle=self.shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
                                   drop_last=self.drop_last, stateful=self.exact_resume, **options)
        sampler = self._sampler(dataset, training)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if training else self.eval_batch_size,
            shuffle=training and self.shuffle and sampler is None,
            sampler=sampler,
            drop_last=training and self.drop_last,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, training=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split as evaluation data: no shuffling, no augmentation, each sample once across ranks."""
        return self._loader(getattr(self, f"{split}_set"), training=False)
