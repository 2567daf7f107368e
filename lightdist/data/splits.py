"""Seeded, stratified splits: the same seed gives the same split on every rank and every run."""

import numpy as np

from lightdist.errors import ConfigError


def stratified_split(labels: np.ndarray, holdout: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout) index arrays; `holdout` is a count or a fraction of len(labels).

    Each class gives the holdout its share (largest remainders get the leftover places),
    so small validation sets still see every class in proportion.
    """
    labels = np.asarray(labels)
    n = len(labels)
    n_holdout = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
    if not 0 <= n_holdout < n:
        raise ValueError(f"cannot hold out {n_holdout} of {n} samples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_holdout / n
    per_class = np.floor(exact).astype(int)
    leftover = n_holdout - per_class.sum()
    per_class[np.argsort(-(exact - per_class), kind="stable")[:leftover]] += 1
    keep, held = [], []
    for cls, k in zip(classes, per_class):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def holdout_count(holdout: int | float, n: int, key: str) -> int:
    """The number of samples `holdout` (a count or a fraction) takes from `n`; refused unless some remain."""
    count = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
    if not 0 <= count < n:
        raise ConfigError(f"{key}={holdout} holds out {count} of the {n} training samples",
                          hint=f"use {key} < {n} (a count) or a fraction such as {key}=0.1")
    return count


def pick(items: list, labels: np.ndarray, index: np.ndarray) -> tuple[list, np.ndarray]:
    """The samples at `index`: (items, labels)."""
    return [items[i] for i in index], labels[index]


def balanced_subsets(splits: dict[str, tuple[list, np.ndarray]], sizes: dict[str, int | None], seed: int
                     ) -> dict[str, tuple[list, np.ndarray]]:
    """Each split (items, labels) cut to a class-balanced subset of its size in `sizes` (None: all of it)."""
    return {split: pick(items, labels, stratified_subset(labels, sizes.get(split), seed))
            for split, (items, labels) in splits.items()}


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `size` samples (all of them when size is None or too big)."""
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    _, subset = stratified_split(labels, int(size), seed)
    return subset


class KFold:
    """k-fold cross-validation over the training data (data.kfold.k, data.kfold.fold).

    With k set, the validation split is fold `fold` of k stratified folds of all non-test
    data and the other k-1 folds train; data.val_size is then unused. The test split is
    untouched. `python -m lightdist data.kfold.k=5` runs the five folds as a multirun and
    reports mean and std over them (lightdist.sweeps.summary).
    """

    def __init__(self, k: int | None = None, fold: int | None = None):
        if k is not None and k < 2:
            raise ValueError(f"data.kfold.k={k}: k-fold needs k >= 2 (null switches it off)")
        if fold is not None and (k is None or not 0 <= fold < k):
            raise ValueError(f"data.kfold.fold={fold} needs data.kfold.k set and 0 <= fold < k")
        self.k, self.fold = k, fold

    @property
    def enabled(self) -> bool:
        return self.k is not None

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) index arrays of this fold."""
        if self.fold is None:
            raise ValueError("data.kfold.fold is not set: run every fold with data.kfold.k alone, "
                             "or pick one with data.kfold.fold=<0..k-1>")
        folds = stratified_folds(labels, self.k, seed)
        return np.flatnonzero(folds != self.fold), np.flatnonzero(folds == self.fold)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every sample: each class dealt round-robin over the folds after a seeded
    shuffle, each class starting where the previous one stopped, so fold sizes differ by one at most.

    By hand rather than scikit-learn's StratifiedKFold: one function does not justify the dependency.
    """
    labels = np.asarray(labels)
    if len(labels) < k:
        raise ValueError(f"cannot make {k} folds of {len(labels)} samples")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        folds[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return folds
