"""`lightdist predict run_dir=<run> [ckpt=best|last|<path>] text="..." | image=<file> | input_file=<file>
[batch_size=64]`: one JSON line per input (its label and every class's probability).

text= and image= are repeatable and mean the same (a raw input: the run's data module knows
which); input_file holds one input per line.
"""

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightdist.config.compose import command_args
from lightdist.errors import ConfigError, DataError
from lightdist.predict import Prediction, predict


@dataclass
class PredictOptions:
    run_dir: str  # the run directory (holding config.yaml and checkpoints/)
    ckpt: str = "best"  # best, last, or a checkpoint path
    text: list[str] = field(default_factory=list)  # raw inputs (image= adds here too)
    input_file: str | None = None  # one input per line (utf-8)
    batch_size: int = 64


def run(argv: list[str]) -> None:
    opts = command_args(argv, "predict", PredictOptions, aliases={"image": "text"}).options
    if opts.batch_size < 1:
        raise ConfigError(f"batch_size={opts.batch_size} must be a positive integer")
    inputs = list(opts.text) + (_read_inputs(opts.input_file) if opts.input_file else [])
    if not inputs:
        raise ConfigError("nothing to predict",
                          hint='pass text="..." or image=<file> (repeatable), or input_file=<one input per line>')
    for line in _json_lines(inputs, predict(opts.run_dir, inputs, opts.ckpt, opts.batch_size)):
        sys.stdout.write(line + "\n")


def _read_inputs(path: str) -> list[str]:
    file = Path(path).expanduser()
    try:
        content = file.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"input_file {file} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"input_file {file} is not valid utf-8 (offset {exc.start})",
                        hint="save it as utf-8, one input per line") from exc
    return [line for line in content.splitlines() if line.strip()]


def _json_lines(inputs: list[str], predictions: list[Prediction]) -> Iterator[str]:
    for raw, p in zip(inputs, predictions):
        yield json.dumps({"input": raw, "label": p.label, "probs": {k: round(v, 6) for k, v in p.probs.items()}},
                         ensure_ascii=False)
