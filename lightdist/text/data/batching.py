"""Token-id datasets and dynamic padding: a batch is padded to its own longest text, not to max_length."""

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset


class TokenizedTexts(Dataset):
    """(token ids, label) pairs; indexing with a list returns a list of them (bucketed batches)."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]):
        if len(ids) != len(labels):
            raise ValueError("ids and labels differ in length")
        self.ids = [torch.tensor(x, dtype=torch.long) for x in ids]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.lengths = [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple)):
            return [(self.ids[i], self.labels[i]) for i in index]
        return self.ids[index], self.labels[index]


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
