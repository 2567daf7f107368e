"""Reloading a trained run: its config, data module, task and weights, from a run directory.

Fine-tuning (weights of another run), distillation (a teacher run) and the optimisation
commands (prune, quantize, export) all start from a run directory or a checkpoint in one.
Everything is rebuilt the way train.py built it (`build_datamodule`, its facts,
`build_task`, defined here for both), so any task family whose model is a plain nn.Module
reloads the same way.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightdist.checkpoints import CHECKPOINT_DIR, verify
from lightdist.errors import CheckpointError, ConfigError

# A model config's node naming the tokenizer the model reads text with (a pretrained encoder's own):
# the data module encodes with it; it is no argument of the model.
DATA_TOKENIZER = "data_tokenizer"


def build_datamodule(cfg: Any) -> Any:
    """The data module of config `cfg`, encoding with the model's own tokenizer when the model names one."""
    from hydra.utils import instantiate

    from lightdist.config.building import building

    datamodule = instantiate(cfg.data)
    node = (cfg.get("model") or {}).get(DATA_TOKENIZER)
    if node:
        if not hasattr(datamodule, "use_tokenizer"):
            raise ConfigError(f"model.{DATA_TOKENIZER} gives a tokenizer, but data {type(datamodule).__name__} "
                              "reads no text", hint="use a text data config (data=text_table, bbc_news, ...)")
        with building(f"model.{DATA_TOKENIZER}", node):
            datamodule.use_tokenizer(instantiate(node))
    return datamodule


def build_task(cfg: Any, facts: dict[str, Any]) -> Any:
    """The task (LightningModule) that config `cfg` describes, for data with these facts (num_classes...)."""
    import copy

    from hydra.utils import instantiate
    from omegaconf import open_dict

    from lightdist.config.building import instantiate_with_facts

    if DATA_TOKENIZER in (cfg.get("model") or {}):  # the data module's business (build_datamodule)
        cfg = copy.deepcopy(cfg)  # a whole copy: interpolations in the model node still resolve
        with open_dict(cfg.model):
            cfg.model.pop(DATA_TOKENIZER)
    model = instantiate_with_facts(cfg.model, facts)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate_with_facts(cfg.task, facts, model=model, optimizer=optimizer, scheduler=scheduler)


def _saved_task_upgraded(cfg: Any) -> Any:
    """A run saved before transfer, distill, channels_last and compile left the task node (and the
    image task its own class): those keys are dropped from its task, which reloads without them."""
    from omegaconf import open_dict

    from lightdist.config.validate import MOVED_KEYS

    task = cfg.get("task")
    if task is None:
        return cfg
    with open_dict(task):
        for old in MOVED_KEYS:
            task.pop(old.removeprefix("task."), None)
        if task.get("_target_") == "lightdist.vision.task.ImageClassificationTask":
            task._target_ = "lightdist.tasks.classification.ClassificationTask"
    return cfg


def is_run_dir(path: Path) -> bool:
    from lightdist import run_dir as rd

    return path.is_dir() and (path / rd.CONFIG_FILE).is_file()


def find_checkpoint(run_dir: Path, ckpt: str = "best") -> Path:
    """`best` (summary.json's best checkpoint, else the only non-last one), `last`, or a path."""
    from lightdist import run_dir as rd

    folder = run_dir / CHECKPOINT_DIR
    if ckpt == "last":
        path = folder / "last.ckpt"
    elif ckpt == "best":
        best = rd.read_json(run_dir / rd.SUMMARY_FILE).get("best_checkpoint")
        candidates = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(("last", "preempted")))
        if best and Path(best).exists():
            path = Path(best)
        elif len(candidates) == 1:
            path = candidates[0]
        elif (folder / "last.ckpt").exists() and not candidates:
            path = folder / "last.ckpt"
        else:
            found = ", ".join(p.name for p in candidates) or "none"
            raise CheckpointError(f"no single best checkpoint in {folder} (found: {found})",
                                  hint="pass ckpt=last or ckpt=<path to a checkpoint>")
    else:
        path = Path(ckpt).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="pass ckpt=best, ckpt=last or an existing path")
    return path


def locate(source: str | Path, ckpt: str = "best") -> tuple[Path | None, Path]:
    """(run directory or None, checkpoint) for a run directory or a checkpoint (inside a run's checkpoints/)."""
    path = Path(source).expanduser().resolve()
    if is_run_dir(path):
        return path, find_checkpoint(path, ckpt)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist", hint="pass a run directory or a checkpoint")
    verify(path)  # a readable file or a sharded checkpoint directory, holding data only
    run = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
    return (run if run is not None and is_run_dir(run) else None), path


def model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's own state_dict from a task checkpoint (keys under the task's `model.`) or a plain state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not state:
        raise CheckpointError("the file holds no state dict", hint="save one with torch.save(model.state_dict(), path)")
    prefixed = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return prefixed or dict(state)


def read_weights(source: str | Path, ckpt: str = "best") -> dict[str, Any]:
    """A model state_dict from a run directory, any checkpoint (sharded ones too) or a state-dict file.

    Files are unpickled with weights_only=True (a file that needs more is refused: UnsafeCheckpoint).
    """
    from lightdist.checkpoints import checkpoint_kind, load_consolidated, load_file, strip_wrappers

    path = Path(source).expanduser()
    if is_run_dir(path.resolve()):
        return model_state(load_consolidated(find_checkpoint(path.resolve(), ckpt)))
    if path.is_file():
        checkpoint_kind(path)  # a torch.save zip file
        loaded = load_file(path)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict",
                                  hint="save weights with torch.save(model.state_dict(), path)")
        if isinstance(loaded.get("state_dict"), dict):  # a Lightning checkpoint
            loaded["state_dict"] = strip_wrappers(loaded["state_dict"])
        return model_state(loaded)
    return model_state(load_consolidated(locate(path, ckpt)[1]))


@dataclass
class Run:
    """A trained run, rebuilt: config, data module (with its saved state), task with the checkpoint's weights."""

    run_dir: Path
    checkpoint: Path
    cfg: Any
    datamodule: Any
    facts: dict[str, Any]
    task: Any

    @property
    def model(self):
        return self.task.model


def without_pretrained(cfg: Any) -> Any:
    """`cfg` with its model built from scratch: the checkpoint holds every weight, so a pretrained
    backbone (model.pretrained, model.weights) is not read, or downloaded, again."""
    from omegaconf import OmegaConf

    model = cfg.get("model") or {}
    off = {key: value for key, value in (("pretrained", False), ("weights", None)) if model.get(key)}
    return OmegaConf.merge(cfg, {"model": off}) if off else cfg


def load_run(source: str | Path, ckpt: str = "best", cfg: Any = None) -> Run:
    """Rebuild the run that `source` (a run directory or a checkpoint inside one) belongs to, in eval mode.

    `cfg` replaces the run's saved config (e.g. the saved config with data overrides, as
    `lightdist eval` builds it); the model it describes must be the checkpoint's.
    """
    from lightdist import run_dir as rd
    from lightdist.checkpoints import load_consolidated
    from lightdist.config import resolvers

    resolvers.register()
    run, checkpoint_path = locate(source, ckpt)
    if run is None:
        raise ConfigError(f"{source} is not inside a run directory, so its config is unknown",
                          hint="pass a run directory (holding config.yaml) or a checkpoint in its checkpoints/")
    cfg = _saved_task_upgraded(rd.load_config(run / rd.CONFIG_FILE) if cfg is None else cfg)
    checkpoint = load_consolidated(checkpoint_path)
    datamodule = build_datamodule(cfg)
    # Data modules with learned state (a text vocabulary) keep it in the checkpoint under their class name.
    state = checkpoint.get(type(datamodule).__qualname__)
    if state and hasattr(datamodule, "load_state_dict"):
        datamodule.load_state_dict(state)
    facts = datamodule.facts()
    task = build_task(without_pretrained(cfg), facts)
    missing, unexpected = task.load_state_dict(checkpoint["state_dict"], strict=False)
    if [k for k in missing if k.startswith("model.")] or unexpected:
        raise CheckpointError(f"{checkpoint_path} does not fit the model of {run / rd.CONFIG_FILE} "
                              f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})")
    task.eval()
    return Run(run, checkpoint_path, cfg, datamodule, facts, task)
