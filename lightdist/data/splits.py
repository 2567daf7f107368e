"""Seeded, stratified splits: the same seed gives the same split on every rank and every run."""

import numpy as np


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


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `size` samples (all of them when size is None or too big)."""
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    _, subset = stratified_split(labels, int(size), seed)
    return subset
