"""Predict with a trained run: `predict(run_dir, inputs)` (the command: `lightdist predict`, lightdist.commands.predict).

Generic over task families: the data module and task are rebuilt from the run's
config.yaml, the data module's state (the tokenizer and label names for text, the
normalisation statistics for images) and the
weights come from the checkpoint, the data module turns raw inputs into a batch
(`encode_inputs`) and the task's predict_step gives the class probabilities. The dataset
itself is not needed: a run directory (or a checkpoint beside its config) is enough.

    lightdist predict run_dir=outputs/bbc_news_cnn/<run> text="Shares rose" text="The striker scored"
    lightdist predict run_dir=<run> ckpt=last input_file=texts.txt      # one input per line
    lightdist predict run_dir=outputs/fashion_mnist_cnn/<run> image=shoe.png image=shirt.npy

Images are files (PNG, JPEG... or .npy arrays) or, from Python, numpy arrays and tensors
(uint8 0-255 or float 0-1); they are converted to the run's channels and size.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lightdist.errors import ConfigError


class Prediction(NamedTuple):
    label: str
    probs: dict[str, float]  # every class name -> its probability


class Predictor:
    """A run's data module and task, restored once, for any number of predict() calls."""

    def __init__(self, run_dir: str | Path, ckpt: str = "best"):
        from lightdist.runs import is_run_dir, load_run

        self.run_dir = Path(run_dir).expanduser().resolve()
        if not is_run_dir(self.run_dir):
            raise ConfigError(f"{self.run_dir} is not a run directory (no config.yaml)",
                              hint="pass run_dir=<a directory under outputs/ that holds config.yaml>")
        run = load_run(self.run_dir, ckpt)
        self.checkpoint_path, self.datamodule, self.task = run.checkpoint, run.datamodule, run.task
        self.class_names = [str(c) for c in run.facts.get("class_names") or range(run.facts["num_classes"])]

    def predict(self, inputs: Sequence[Any], batch_size: int = 64) -> list[Prediction]:
        import torch

        out: list[Prediction] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                batch = self.datamodule.encode_inputs(list(inputs[start : start + batch_size]))
                probs = self.task.predict_step(batch, start // batch_size)
                for row in probs.tolist():
                    best = max(range(len(row)), key=row.__getitem__)
                    out.append(Prediction(self.class_names[best], dict(zip(self.class_names, row))))
        return out


def predict(run_dir: str | Path, inputs: Sequence[Any], ckpt: str = "best", batch_size: int = 64
            ) -> list[Prediction]:
    """Labels and class probabilities for raw inputs (texts; image files, arrays or tensors), with a run's
    best (or last, or given) checkpoint."""
    return Predictor(run_dir, ckpt).predict(inputs, batch_size)
