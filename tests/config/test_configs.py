"""Every config group option and every experiment composes, and what it composes to is valid
for the classes it names (keys accepted, Literal choices respected)."""

from pathlib import Path

import pytest

from lightdist.config import config_dir, resolvers
from lightdist.config.compose import compose
from lightdist.config.validate import check_targets

resolvers.register()
CONF = Path(config_dir())
# Groups appended with '+' (no default in config.yaml).
APPENDED = {"experiment", "debug"}
NOT_SELECTABLE = {"hydra"}


def group_options() -> list[tuple[str, str]]:
    options = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_SELECTABLE):
        for option in sorted(group.glob("*.yaml")):
            options.append((group.name, option.stem))
    return options


def override_for(group: str, option: str) -> str:
    return f"+{group}={option}" if group in APPENDED else f"{group}={option}"


def test_every_group_has_options():
    groups = {g for g, _ in group_options()}
    for expected in ("data", "task", "model", "optimizer", "scheduler", "trainer", "strategy", "logger",
                     "callbacks", "paths", "debug", "experiment"):
        assert expected in groups, f"conf/{expected}/ has no options"


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_option_composes_and_validates(group, option):
    cfg = compose([override_for(group, option)])
    check_targets(cfg)
    if group == "experiment":
        assert cfg.name == option, "an experiment names its runs after itself"


def test_loggers_combine():
    cfg = compose(["logger=[csv,tensorboard,wandb]"])
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}
    check_targets(cfg)


def test_experiment_overrides_groups():
    cfg = compose(["+experiment=cifar_resnet"])
    assert cfg.data.dataset == "cifar10"
    assert cfg.model.depth == 18
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accelerator == "gpu"
    # and the command line still wins over the experiment
    cfg = compose(["+experiment=cifar_resnet", "trainer=cpu_ddp", "trainer.max_epochs=3"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2 and cfg.trainer.max_epochs == 3


def test_trainer_overrides_reach_the_config():
    cfg = compose(["trainer=cpu_ddp", "trainer.devices=2", "trainer.num_nodes=1", "trainer.precision=bf16-mixed",
                   "trainer.accumulate_grad_batches=4", "trainer.gradient_clip_val=1.0", "trainer.max_steps=7",
                   "trainer.limit_train_batches=0.5", "trainer.deterministic=true", "seed=7"])
    t = cfg.trainer
    assert (t.devices, t.precision, t.accumulate_grad_batches, t.gradient_clip_val, t.max_steps) == (
        2, "bf16-mixed", 4, 1.0, 7)
    assert t.limit_train_batches == 0.5 and t.deterministic is True and cfg.seed == 7
    check_targets(cfg)


@pytest.mark.parametrize("search", sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")))
def test_hparams_search_space_fits_its_experiment(search):
    """Every searched key exists in the experiment the search is named after (or in the defaults),
    every sampled value passes validation, and the sweeper accepts its options."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from optuna.distributions import CategoricalDistribution

    from lightdist.sweeps import search_space
    from lightdist.sweeps.optuna_search import OptunaSearch

    experiment = [f"+experiment={search}"] if (CONF / "experiment" / f"{search}.yaml").is_file() else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*experiment, f"hparams_search={search}"], return_hydra_config=True)
    sweeper = {k: v for k, v in cfg.hydra.sweeper.items() if k != "_target_"}
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
    OptunaSearch(**sweeper)
    dims, _ = search_space.parse([f"{k}={v}" for k, v in sweeper["params"].items()])
    for edge in (0, -1):
        point = []
        for d in dims:
            dist = d.distribution
            value = dist.choices[edge] if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)[edge]
            point.append(d.as_override(value))
        check_targets(compose([*experiment, f"hparams_search={search}", *point]))


def test_more_cpu_ranks_than_cores_only_with_one_thread_each():
    from omegaconf import OmegaConf

    from lightdist.config.validate import check_devices
    from lightdist.errors import ConfigError

    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 4, "num_nodes": 1})
    with pytest.raises(ConfigError, match="trainer.devices=4 CPU processes but this machine gives 2 core"):
        check_devices(trainer, cores=2)
    check_devices(trainer, cores=2, threads_per_rank=1)  # oversubscribed on purpose: allowed
    check_devices(trainer, cores=4)
