"""Samplers that Lightning or torch do not offer as public API."""

from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Shards an evaluation set across ranks without repeating samples.

    torch's DistributedSampler pads the dataset to a multiple of the world size by
    repeating samples, so validation/test metrics of a DDP run would count some samples
    twice. Here rank r takes indices r, r + W, r + 2W, ...: ranks may get one sample
    fewer, which evaluation tolerates (no gradient collectives), and synced torchmetrics
    then see each sample exactly once. Lightning keeps the same idea private (for
    predict only) and leaves DistributedSampler subclasses in place, so this one is used
    as is.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples

