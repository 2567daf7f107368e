"""A run imports what its config needs and nothing else: every module a run has imported by the
time training starts adds to the start-up of every rank (Lightning's ddp launcher starts ranks
> 0 only once rank 0 reaches fit, so their imports come on top of rank 0's).

Lightning imports torchmetrics, which imports matplotlib, scipy, transformers and torchvision
whenever they are installed. scipy, transformers and matplotlib are left out (lightdist.main hides
them from torchmetrics while Lightning is imported); torchvision (the image family's own) is not
checked. kornia is imported only by the augmentations that need it (affine, erasing).
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import QUIET, REPO, cli_env, run_cli

# Optional dependencies that only a config naming them may import.
OPTIONAL = ("deepspeed", "optuna", "wandb", "tensorboard", "tensorboardX", "timm", "datasets", "gymnasium",
            "pyarrow", "sklearn", "onnx", "onnxruntime")
# What torchmetrics would import for what lightdist does not use (its text and audio metrics, its plots),
# and kornia, which the default flips and crops do not need.
LEFT_OUT = ("scipy", "transformers", "matplotlib", "kornia")

TINY = [*QUIET, "data.train_subset=64", "data.val_subset=32", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test_after_fit=false"]


def test_a_default_image_run_imports_no_optional_dependency(workdir):
    probe = workdir / "modules"
    run_cli([*TINY, "+callbacks.modules._target_=tests.helpers.modules_probe.ModulesAtTrainStart",
             f"+callbacks.modules.path={probe}"], cwd=workdir, env=cli_env(PYTHONPATH=str(REPO)))  # imports tests.
    loaded = {name.split(".")[0] for name in Path(f"{probe}.0").read_text().split()}
    assert "lightning" in loaded and "torchvision" in loaded  # the probe saw the run
    assert sorted(loaded.intersection(OPTIONAL)) == []
    assert sorted(loaded.intersection(LEFT_OUT)) == []


# Lightning imported as the command line imports it; afterwards the packages left out import as
# usual and torchmetrics computes what lightdist uses.
LEAN = """
import importlib, importlib.util, json, sys
from lightdist.main import HIDDEN_FROM_TORCHMETRICS, _leave_out_unused_imports

installed = [name for name in HIDDEN_FROM_TORCHMETRICS if importlib.util.find_spec(name) is not None]
_leave_out_unused_imports()
import lightning
loaded = [name for name in ("lightning", *HIDDEN_FROM_TORCHMETRICS) if name in sys.modules]
import torch
for name in installed:  # scipy is not a dependency of lightdist: a fresh install may not have it
    importlib.import_module(name)
from lightning_utilities.core.imports import package_available
from torchmetrics.classification import MulticlassAccuracy

accuracy = MulticlassAccuracy(3, average="micro")(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])).item()
print(json.dumps({"loaded": loaded, "installed": installed, "found": [package_available(n) for n in installed],
                  "finders": [type(f).__name__ for f in sys.meta_path], "accuracy": accuracy}))
"""


def test_lightning_is_imported_without_torchmetrics_optional_imports_and_they_import_afterwards(workdir):
    proc = subprocess.run([sys.executable, "-c", LEAN], cwd=workdir, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == ["lightning"]
    assert {"transformers", "matplotlib"} <= set(result["installed"])  # dependencies: the check below sees them
    assert all(result["found"]) and "_HiddenFromTorchmetrics" not in result["finders"]
    assert abs(result["accuracy"] - 2 / 3) < 1e-6


# What train.run builds for a strategy, logger and augmentation that a config names, in a fresh
# interpreter: the packages among `watched` loaded after lightdist's modules and after the build.
# (A DeepSpeed run itself starts slowly on CPU: DeepSpeed compiles its shared-memory op first.)
BUILD = """
import json, sys
from lightdist import runs, train
from lightdist.config import resolvers
from lightdist.config.compose import compose
from lightdist.distributed.strategy import build_strategy

watched = sys.argv[2].split(",")
loaded = lambda: sorted(name for name in watched if name in sys.modules)
imported = loaded()
resolvers.register()
cfg = compose([*sys.argv[3:], "paths.output_dir=" + sys.argv[1]])
build_strategy(cfg.strategy, cfg.trainer, cfg.data.batch_size)
for logger in train.build_loggers(cfg):
    logger.experiment  # what a logger writes with, made at its first write
runs.build_datamodule(cfg)
print(json.dumps({"imported": imported, "built": loaded()}))
"""


def test_what_a_config_names_is_imported_when_built_and_only_that(workdir):
    watched = (*OPTIONAL, "kornia")
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(workdir), ",".join(watched), "strategy=deepspeed_stage_2",
         "logger=[csv,tensorboard]", "data.augment.rotation_degrees=10"],  # rotations are kornia's
        cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"imported": [], "built": ["deepspeed", "kornia", "tensorboard"]}
