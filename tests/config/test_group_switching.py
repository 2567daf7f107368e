"""Switching a group on top of an experiment: every experiment x every option of the scheduler,
optimizer, model, strategy, trainer and logger groups composes to a valid config whose objects
build, or is refused by the preflight in one line when the pairing cannot work. End-to-end:
the switches that used to crash, as a multirun, and sharded runs that end before their first
checkpoint."""

from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate

from lightdist.commands.preflight import run as preflight_command
from lightdist.config import config_dir, resolvers
from lightdist.config.checks import check_wiring
from lightdist.config.groups import adapt_composed
from lightdist.config.validate import check_precision, check_targets, strategy_family
from lightdist.errors import ConfigError
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs

resolvers.register()
CONF = Path(config_dir())
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWITCHED = ("scheduler", "optimizer", "model", "strategy", "trainer", "logger")
BUILT = ("scheduler", "optimizer", "model")  # groups whose switch changes what build_task builds
# Stand-ins for the data's facts (what build_task passes models and tasks), per kind of data module.
FACTS = {
    "VisionDataModule": {"num_classes": 10, "in_channels": 3, "image_size": 32, "class_names": list("abcdefghij")},
    "TextDataModule": {"vocab_size": 120, "num_classes": 4, "class_names": list("abcd"), "pad_id": 0,
                       "max_length": 64},
    "EnvDataModule": {"observation_shape": (4,), "num_actions": 3},
}
FACTS["ImageFilesDataModule"] = FACTS["VisionDataModule"]  # a user's images: the same facts as canonical ones
MODEL_KIND = {"mlp_qnet": "EnvDataModule", "nature_cnn": "EnvDataModule", "hf_encoder": "TextDataModule"}
# Models read from a pretrained folder (model.path, required): a tiny random one written for this module.
FROM_FOLDER = ("lightdist.text.models.pretrained.HFEncoderClassifier",)
# Data modules whose inputs are of the same kind: any image model takes either.
SAME_INPUTS = {"ImageFilesDataModule": "VisionDataModule"}


def model_kind(option: str) -> str:
    return MODEL_KIND.get(option, "TextDataModule" if option.startswith("text_") else "VisionDataModule")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    from tests.helpers.hf_models import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def compose():
    """One Hydra initialisation for every composition; adapted as lightdist.config.compose.compose adapts."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        def composed(overrides: list[str], notes: list | None = None):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
            return adapt_composed(cfg, "config", notes)

        yield composed
    GlobalHydra.instance().clear()


def facts_for(cfg) -> dict:
    kind = get_class(cfg.data._target_).__name__
    facts = dict(FACTS[kind])
    if kind == "EnvDataModule" and str(cfg.data.get("env_id", "")).startswith("ALE/"):
        facts["observation_shape"] = (4, 84, 84)  # stacked Atari frames
    return facts


def build(cfg, group: str) -> None:
    """What the run builds from the switched group: the task around a switched model; the optimizer
    and schedule on a probe otherwise (the experiment's model is not what changed)."""
    from lightdist.runs import build_task, without_pretrained
    from lightdist.tasks.optim import build_optimizer

    if group == "model":
        # pretrained weights are not the subject here (and offline they are not there: test_models_hub)
        build_task(without_pretrained(cfg), facts_for(cfg))
        return
    factory = instantiate(cfg.optimizer)
    if not str(cfg.optimizer._target_).startswith("torch."):
        return  # DeepSpeed's CPU Adam compiles a kernel when built: its arguments are checked above
    optimizer = build_optimizer(factory, torch.nn.Linear(2, 2))
    if cfg.get("scheduler"):
        assert "scheduler" in instantiate(cfg.scheduler)(optimizer, total_steps=100, steps_per_epoch=10)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_option_switches_on_top_of_the_experiment(compose, hf_model, experiment):
    """Composes and validates; the model/optimizer/scheduler build; a model of another kind of data
    than the experiment's is refused by check_wiring, with one line naming the missing facts."""
    for group in SWITCHED:
        for option in options(group):
            overrides = [f"+experiment={experiment}", f"{group}={option}"]
            if experiment == "mnist_finetune_from_fashion":
                overrides.append("transfer.init_from=/nonexistent")  # required; never read here
            notes: list = []
            cfg = compose(overrides, notes)
            if cfg.model.get("_target_") in FROM_FOLDER:  # composed again only then: compositions are the cost
                overrides.insert(2, f"model.path={hf_model}")  # required; read when the model is built
                notes = []
                cfg = compose(overrides, notes)
            data_kind = get_class(cfg.data._target_).__name__
            data_kind = SAME_INPUTS.get(data_kind, data_kind)
            where = " ".join(overrides)
            check_targets(cfg)
            if group == "model" and model_kind(option) != data_kind:
                with pytest.raises(ConfigError, match=r"^model \w+ (needs .* which neither its config nor "
                                                      r"data|is not built for the inputs of data)"):
                    check_wiring(cfg)
                continue
            check_wiring(cfg)
            if group == "strategy":
                check_precision(cfg.trainer, cfg.strategy)
                if strategy_family(cfg.strategy) != "ddp":
                    assert not cfg.get("channels_last"), where
            if group == "scheduler" and option == "none":
                assert cfg.scheduler is None, where
            if group == "logger" and option == "none":
                assert cfg.logger is None, where
            assert sum(level == 20 for level, _ in notes) <= 1, f"{where}: one info line at most: {notes}"
            if option == "nature_cnn" and experiment != "rl_dqn_atari_pong":
                # takes the environment's facts, but needs image observations: refused when built
                with pytest.raises(Exception, match=r"NatureCNN needs C x H x W observations"):
                    build(cfg, group)
            elif group in BUILT:
                try:
                    build(cfg, group)
                except Exception as exc:
                    raise AssertionError(f"{where} does not build: {exc!r}") from exc


def test_dropped_keys_are_named_once(compose):
    notes: list = []
    cfg = compose(["+experiment=fashion_mnist_cnn", "scheduler=cosine", "model=resnet20"], notes)
    assert "pct_start" not in cfg.scheduler and "channels" not in cfg.model
    assert cfg.model.dropout == 0.3 and cfg.trainer.max_epochs == 8  # what the new option accepts is kept
    (info,) = [message for level, message in notes if level == 20]
    assert info == ("experiment fashion_mnist_cnn: dropped model.channels, model.hidden (set for simple_cnn, "
                    "model=resnet20 chosen); dropped scheduler.pct_start (set for one_cycle, scheduler=cosine chosen)")
    # the experiment's own choices keep every key it set; the command line's keys are never dropped
    notes.clear()
    assert compose(["+experiment=fashion_mnist_cnn"], notes).scheduler.pct_start == 0.2 and not notes
    kept = compose(["+experiment=fashion_mnist_cnn", "scheduler=cosine", "scheduler.pct_start=0.5"])
    with pytest.raises(ConfigError, match="scheduler.pct_start"):
        check_targets(kept)


def test_preflight_names_what_it_drops(capsys):
    preflight_command(["+experiment=fashion_mnist_cnn", "scheduler=none", "strategy=fsdp"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("note: experiment fashion_mnist_cnn: dropped scheduler.pct_start (set for one_cycle, "
                      "scheduler=none chosen)")
    assert out[1].startswith("note: channels_last=true turned off under fsdp")
    assert out[2].startswith("ok: ")


TINY = ["data.train_subset=512", "data.val_subset=64", "data.test_subset=64", "data.batch_size=32",
        "data.augment=null", "model.channels=[8,16]", "model.hidden=64", "trainer.num_sanity_val_steps=0",
        "logger=csv", *QUIET]


def test_switched_scheduler_runs_as_a_multirun(workdir):
    """The two switches that crashed (none: a stray dict; cosine: one-cycle's pct_start), one job each."""
    proc = run_cli(["-m", "+experiment=fashion_mnist_cnn", "scheduler=none,cosine", "trainer.max_steps=3",
                    "trainer.limit_val_batches=1", *TINY], cwd=workdir)
    runs = run_dirs(workdir, "fashion_mnist_cnn")
    assert len(runs) == 2
    for run, option in zip(sorted(runs, key=lambda p: p.name), ("none", "cosine")):
        config = (run / "config.yaml").read_text()
        assert read_summary(run)["global_step"] == 3
        assert "pct_start" not in config
        assert f"dropped scheduler.pct_start (set for one_cycle, scheduler={option} chosen)" in (
            run / "train.log").read_text()
    assert proc.stdout.count("dropped scheduler.pct_start") + proc.stderr.count("dropped scheduler.pct_start") == 2


def _test_loss_of(run_dir: Path, checkpoint: Path) -> dict[str, float]:
    """Test metrics of the consolidated checkpoint, on one process without any strategy."""
    import lightning as L

    from lightdist import run_dir as rd
    from lightdist.checkpoints import load_consolidated
    from lightdist.train import build_task

    cfg = rd.load_config(run_dir / "config.yaml")
    datamodule = instantiate(cfg.data)
    task = build_task(cfg, datamodule.facts())
    task.load_state_dict(load_consolidated(checkpoint)["state_dict"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(run_dir / "reference"))
    (results,) = trainer.test(task, datamodule=datamodule, verbose=False)
    return results


def test_sharded_run_ending_before_its_first_checkpoint_tests_its_final_weights(workdir):
    """3 steps of a 8-step epoch: no validation, no best checkpoint. The test phase tests the final
    weights (those of last.ckpt, written at the stop) instead of crashing on the module fit sharded.
    The experiment's channels_last is turned off for the sharding strategy, with one warning.
    (DeepSpeed takes the same path, sharding.needs_consolidated_weights: FSDP stands for both here.)"""
    proc = run_cli(["+experiment=fashion_mnist_cnn", "trainer=cpu_ddp", "strategy=fsdp",
                    "trainer.max_steps=3", *TINY], cwd=workdir)
    (run,) = run_dirs(workdir, "fashion_mnist_cnn")
    summary = read_summary(run)
    assert summary["best_checkpoint"] is None and summary["global_step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (proc.stdout + proc.stderr).count("channels_last=true turned off") == 1
    last = run / "checkpoints" / "last.ckpt"
    expected = _test_loss_of(run, last)
    # fp32 (FSDP refuses 64-true): the sharded and the single-process test may round a near-tie
    # differently, so at most one of the 64 test predictions may flip
    assert summary["test"]["test/acc"] == pytest.approx(expected["test/acc"], abs=1 / 64 + 1e-9)
    torch.testing.assert_close(torch.tensor(summary["test"]["test/loss"], dtype=torch.float64),
                               torch.tensor(expected["test/loss"], dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_a_model_name_is_not_carried_to_another_library():
    """model.name names an architecture of the experiment's library: another model option gets its own."""
    from lightdist.config.compose import compose

    notes: list = []
    cfg = compose(["+experiment=imagefolder_finetune", "model=torchvision"], notes=notes)
    assert cfg.model.name == "resnet18" and cfg.model._target_.endswith("torchvision_model")
    assert any("dropped model.name" in message for _, message in notes)
    # the same library keeps it, and the user's own name is never dropped
    assert compose(["+experiment=imagefolder_finetune"]).model.name == "resnet50.a1_in1k"
    assert compose(["+experiment=imagefolder_finetune", "model=torchvision", "model.name=vgg11"]).model.name == "vgg11"
