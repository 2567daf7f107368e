"""Hydra's sweep syntax as an Optuna search space.

The same override grammar users already write for grid sweeps describes the space:

    optimizer.lr=tag(log,interval(1e-4,1e-1))   log-uniform float
    optimizer.weight_decay=interval(0,0.1)       uniform float
    model.width=tag(int,interval(16,128))        integer
    data.batch_size=range(32,257,32)             integer grid (step 32)
    optimizer=adamw,sgd                          categorical
"""

from dataclasses import dataclass
from typing import Any

from lightdist.compat import override_value_text
from lightdist.errors import ConfigError


@dataclass
class Dimension:
    key: str
    distribution: Any  # an optuna.distributions.BaseDistribution
    override: Any  # the parsed Hydra override

    def as_override(self, value: Any) -> str:
        # Hydra's own formatting (escapes and quoting), as its basic sweeper writes sweep points.
        return f"{self.key}={override_value_text(value)}"


def parse(overrides: list[str]) -> tuple[list[Dimension], list[str]]:
    """(search dimensions, fixed overrides passed to every trial unchanged)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dims, fixed = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            dims.append(Dimension(override.get_key_element(), distribution_of(override), override))
        else:
            fixed.append(override.input_line)
    keys = [d.key for d in dims]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"the search space names {', '.join(repeated)} twice",
                          hint="give each key one range, in hydra.sweeper.params or on the command line")
    return dims, fixed


def distribution_of(override: Any) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, sweep = override.get_key_element(), override.value()
    tags = set(getattr(sweep, "tags", ()) or ())
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(f"{key}: interval({low}, {high}) is empty", hint="write interval(low, high) with low < high")
        if "log" in tags and low <= 0:
            raise ConfigError(f"{key}: a log interval needs low > 0, not {low}")
        if "int" in tags:
            return IntDistribution(int(low), int(high), log="log" in tags)
        return FloatDistribution(float(low), float(high), log="log" in tags)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty")
        if all(isinstance(v, int) for v in (start, stop, step)) and step > 0:
            # range() excludes stop, IntDistribution includes high: high is the last value.
            return IntDistribution(values[0], values[-1], step=step, log="log" in tags)
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        values = list(override.sweep_iterator())
        if len(values) < 2:
            raise ConfigError(f"{key}: a choice needs two values or more")
        unhashable = [v for v in values if isinstance(v, (list, dict))]
        if unhashable:
            raise ConfigError(f"{key}: list and dict values cannot be searched ({unhashable[0]})",
                              hint="search over a config group (e.g. model=a,b) instead")
        return CategoricalDistribution(values)
    raise ConfigError(f"{key}: {type(sweep).__name__} sweeps cannot be searched",
                      hint="use interval(...), range(...) or a,b,c")
