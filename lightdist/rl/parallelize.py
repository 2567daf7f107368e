"""Which modules of the Q-networks are blocks: the units strategy=fsdp2 shards one by one."""

from torch import nn

from lightdist.rl.qnets import MLPQNetwork, NatureCNN


def _with_parameters(modules: list[nn.Module]) -> list[nn.Module]:
    return [m for m in modules if next(m.parameters(), None) is not None]


def blocks(model: nn.Module) -> list[nn.Module] | None:
    """MLP: each linear layer and the head; Nature CNN: the convolutions, the trunk and the head;
    None for a network not defined here."""
    if isinstance(model, MLPQNetwork):
        return _with_parameters([*model.body, model.head])
    if isinstance(model, NatureCNN):
        return _with_parameters([model.body, model.trunk, model.head])
    return None
