"""`lightdist sweep index=<i> | count=true | list=true | summarize=<dir>  <overrides with sweeps (key=a,b)>`.

Point i of a Hydra sweep as its own run (what each task of a SLURM job array runs), the number
of points, each point's overrides, or the sweep summary of runs already made. The older flags
(`--index 3`, `--count`, `--list`, `--summarize DIR`) work too.
"""

from dataclasses import dataclass
from pathlib import Path

from lightdist.commands import train
from lightdist.config.compose import command_args, compose, sweep_points, training_key
from lightdist.errors import ConfigError


@dataclass
class SweepOptions:
    index: int | None = None  # run the point with this index (0-based)
    count: bool = False  # print the number of points
    list: bool = False  # print each point's overrides
    summarize: str | None = None  # write sweep_summary.csv/.md for the runs in this folder


ALIASES = {"--index": "index", "--count": "count", "--list": "list", "--summarize": "summarize"}


def run(argv: list[str]) -> None:
    args = command_args(argv, "sweep", SweepOptions, aliases=ALIASES, rest=training_key, flags=True,
                        rest_hint="other keys are overrides of the training config")
    opts, overrides = args.options, args.rest
    chosen = [k for k, v in vars(opts).items() if v is not None and v is not False]  # index=0 counts
    if len(chosen) != 1:
        raise ConfigError(f"sweep takes one of index=<i>, count=true, list=true, summarize=<dir>; "
                          f"got {', '.join(chosen) or 'none'}")
    if opts.summarize:
        summarize_runs(opts.summarize, overrides)
        return
    points = sweep_points(overrides)
    if opts.count:
        print(len(points))
    elif opts.list:
        for i, point in enumerate(points):
            print(i, " ".join(point))
    elif not 0 <= opts.index < len(points):
        raise ConfigError(f"sweep point {opts.index} does not exist: the sweep has {len(points)} point(s) "
                          f"(0-{len(points) - 1})")
    else:
        train.run(points[opts.index])


def summarize_runs(folder: str, overrides: list[str]) -> None:
    """The sweep summary of the runs under `folder`, ranked by the optimized metric of their config."""
    from lightdist.sweeps import summary

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory", hint="pass the folder that holds the sweep's run directories")
    cfg = compose(overrides)
    written = summary.write(path, cfg.optimized_metric, cfg.monitor.mode)
    if written is None:
        raise ConfigError(f"no run directories under {path}", hint="pass the folder that holds the runs")
    print(written[1].read_text(), end="")
