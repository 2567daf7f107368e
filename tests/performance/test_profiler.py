"""Without a configured profiler the Trainer (training's and evaluation's) gets lightdist's NoProfiler: Lightning wraps every hook
it calls in profiler.profile(name), and Lightning's own do-nothing profiler builds a context manager
for each (some 800 Python calls a training step); a configured profiler is left as it is."""

import lightning as L
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf

from lightdist.config import resolvers
from lightdist.config.compose import compose
from lightdist.evaluation.module import build_eval_trainer
from lightdist.no_profiler import NoProfiler
from lightdist.train import build_trainer


def trainer_for(overrides: list[str], tmp_path, build=build_trainer) -> L.Trainer:
    resolvers.register()
    cfg = compose([*overrides, "logger=csv", f"paths.output_dir={tmp_path}"])
    return build(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), tmp_path)


def test_no_profiler_by_default_and_one_empty_context_for_every_hook(tmp_path):
    trainer = trainer_for([], tmp_path)
    assert isinstance(trainer.profiler, NoProfiler)
    first, second = trainer.profiler.profile("[Callback]a.on_train_batch_end"), trainer.profiler.profile("b")
    assert first is second
    with first as entered:
        assert entered is None
    assert trainer.profiler.summary() == ""


def test_a_configured_profiler_is_kept(tmp_path):
    trainer = trainer_for(["trainer.profiler=simple"], tmp_path)
    assert isinstance(trainer.profiler, SimpleProfiler)


def test_evaluation_gets_it_too(tmp_path):
    assert isinstance(trainer_for([], tmp_path, build_eval_trainer).profiler, NoProfiler)
    assert isinstance(trainer_for(["trainer.profiler=simple"], tmp_path, build_eval_trainer).profiler, SimpleProfiler)
