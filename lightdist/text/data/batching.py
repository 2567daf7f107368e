"""Token-id datasets and dynamic padding: a batch is padded to its own longest text, not to max_length."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from lightdist.text.data.token_cache import read_entry


class TokenizedTexts(Dataset):
    """(token ids, label) pairs over one flat id array: text i is ids[offsets[i]:offsets[i + 1]].

    The arrays are memory-mapped when they come from the token cache (`entry`), so a split costs
    no memory of its own and DataLoader workers share the pages; pickled (spawned workers), such a
    dataset carries the entry's path, not the ids. Indexing with a list returns a list of pairs
    (bucketed batches).
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: Sequence[int], entry: Path | None = None):
        if len(offsets) != len(labels) + 1:
            raise ValueError("offsets and labels differ in length")
        self.ids, self.offsets, self.entry = ids, offsets, entry
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.lengths = np.diff(offsets)

    @classmethod
    def from_entry(cls, entry: Path, labels: Sequence[int]) -> "TokenizedTexts":
        return cls(*read_entry(entry), labels, entry=entry)

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> "TokenizedTexts":
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids], dtype=np.int64)]).astype(np.int64)
        flat = np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, labels)

    def __len__(self) -> int:
        return len(self.labels)

    def _sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(np.array(self.ids[start:end], dtype=np.int64)), self.labels[i]

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            return [self._sample(i) for i in index]
        return self._sample(index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.entry is not None:
            del state["ids"], state["offsets"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "ids" not in state:
            self.ids, self.offsets = read_entry(self.entry)


class PadCollate:
    """Samples -> ((token ids B x T, lengths B), labels B) with T the batch's longest text.

    A class rather than a closure so that DataLoader workers can pickle it.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        ids = [s[0] for s in samples]
        tokens = pad_sequence(ids, batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        labels = torch.stack([s[1] for s in samples])
        return (tokens, lengths), labels

    def inputs(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs for unlabelled token ids (prediction)."""
        tensors = [torch.tensor(x, dtype=torch.long) for x in ids]
        return pad_sequence(tensors, batch_first=True, padding_value=self.pad_id), torch.tensor(
            [len(x) for x in ids], dtype=torch.long)
