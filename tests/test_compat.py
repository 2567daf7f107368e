"""Each item of lightdist.compat against the installed dependency: the private name it relies on is
still there and behaves as assumed. A failure names the dependency and its version: the item needs
a look before that version is used."""

import importlib.metadata
import inspect
import io
import os
import pickle
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lightdist import compat


def uses(dist: str) -> str:
    """'<distribution> <installed version>', for assertion messages."""
    return f"{dist} {importlib.metadata.version(dist)}"


def python() -> str:
    return f"CPython {sys.version.split()[0]}"


def test_run_exit_handlers_runs_and_unregisters_them():
    script = textwrap.dedent("""
        import atexit, os
        from lightdist.compat import run_exit_handlers
        atexit.register(print, "handler ran", flush=True)
        run_exit_handlers()
        run_exit_handlers()  # unregistered by the first run: nothing more
        os._exit(0)          # skips what would otherwise run them at exit
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["handler ran"], \
        f"{python()}: atexit._run_exitfuncs no longer runs the handlers once: {out.stdout!r}"


def test_omegaconf_raw_value_and_node_key():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": "${b}", "b": 1, "m": "???", "sub": {"x": "${b}"}, "seq": ["${b}", 2]})
    why = f"{uses('omegaconf')}: Container._get_node / Node._value / Node._key changed"
    assert compat.raw_value(cfg, "a") == "${b}", why
    assert compat.raw_value(cfg.sub, "x") == "${b}", why
    assert compat.raw_value(cfg.seq, 0) == "${b}", why
    assert compat.raw_value(cfg, "m") == "???", why
    assert compat.node_key(cfg.sub) == "sub" and compat.node_key(cfg.seq) == "seq", why
    assert compat.node_key(cfg) is None, why
    assert compat.child_node(cfg, "sub") is cfg.sub and compat.child_node(cfg.seq, 1) == 2, why
    missing = compat.child_node(cfg, "m")  # no exception: cfg.m would raise MissingMandatoryValue
    assert OmegaConf.is_missing(cfg, "m") and compat.node_key(missing) == "m", why
    # the public questions compat does not wrap
    assert OmegaConf.is_missing(cfg, "m") and OmegaConf.is_interpolation(cfg.seq, 0), uses("omegaconf")


@pytest.mark.parametrize("value", [1e-4, 3, "a,b", "x y", "a=b", True, None, [1, 2], {"a": 1}])
def test_hydra_override_value_text_parses_back(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = compat.override_value_text(value)
    parsed = OverridesParser.create().parse_overrides([f"key={text}"])[0]
    assert not parsed.is_sweep_override() and parsed.value() == value, \
        f"{uses('hydra-core')}: Override._get_value_element_as_str({value!r}) gave {text!r}, read back as {parsed.value()!r}"


def test_hydra_basic_sweep_batches_in_basic_sweeper_order():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3"])
    points = [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]
    why = f"{uses('hydra-core')}: hydra._internal BasicSweeper.split_arguments changed"
    assert compat.basic_sweep_batches(parsed) == [points], why
    assert compat.basic_sweep_batches(parsed, 3) == [points[:3], points[3:]], why


def _ddp(start_method: str, cls=None):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.accelerators import CPUAccelerator

    return (cls or DDPStrategy)(start_method=start_method, accelerator=CPUAccelerator(),
                                parallel_devices=[torch.device("cpu")] * 2, cluster_environment=LightningEnvironment())


def test_lightning_script_launcher_is_recognised():
    why = f"{uses('lightning')}: _SubprocessScriptLauncher (strategy ddp, start_method popen) changed"
    popen, spawn = _ddp("popen"), _ddp("spawn")
    popen._configure_launcher()
    spawn._configure_launcher()
    assert compat.is_script_launcher(popen.launcher), why
    assert list(popen.launcher.procs) == [], why  # the watch reads the ranks' Popen objects from it
    assert not compat.is_script_launcher(spawn.launcher), why


def test_lightning_script_launcher_starts_its_ranks_with_a_given_popen():
    from lightning.pytorch.strategies.launchers import subprocess_script

    why = f"{uses('lightning')}: _SubprocessScriptLauncher._call_children_scripts no longer starts ranks with " \
          "subprocess.Popen(command, env=env_copy, cwd=cwd)"
    strategy = _ddp("popen")
    strategy._configure_launcher()
    launcher = strategy.launcher
    # Checked in the source first: a launcher that started real processes here would re-run pytest.
    assert "subprocess.Popen(command, env=env_copy, cwd=cwd)" in inspect.getsource(type(launcher)._call_children_scripts), why
    calls, started = [], object()

    def popen(command, env=None, cwd=None):
        calls.append((list(command), dict(env), cwd))
        return started

    compat.start_children_with(launcher, popen)
    saved = dict(os.environ)
    try:
        launcher._call_children_scripts()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert launcher.procs == [started], why
    assert len(calls) == 1 and calls[0][1]["LOCAL_RANK"] == "1" and calls[0][1]["WORLD_SIZE"] == "2", why
    assert "MASTER_PORT" in calls[0][1], why  # the child's whole environment
    assert subprocess_script.subprocess is subprocess, why  # replaced only during the call


def end_rank() -> None:
    raise SystemExit(0)


class EndingDDP(compat.EndSpawnedRanks, DDPStrategy):  # module level, as spawn pickles it for its children
    end_spawned_rank = staticmethod(end_rank)


def test_lightning_spawn_launcher_can_end_its_children():
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    why = f"{uses('lightning')}: Strategy._configure_launcher / _MultiProcessingLauncher changed"
    params = list(inspect.signature(_MultiProcessingLauncher._wrapping_function).parameters)
    assert params[:7] == ["self", "process_idx", "trainer", "function", "args", "kwargs", "return_queue"], why
    strategy = _ddp("spawn", EndingDDP)
    strategy._configure_launcher()
    launcher = strategy.launcher
    assert type(launcher).__name__ == "EndingSpawnLauncher" and launcher.end is end_rank, why
    assert launcher._start_method == "spawn", why
    # spawn pickles the launcher (its bound _wrapping_function) for every child
    assert type(pickle.loads(pickle.dumps(launcher))) is type(launcher), why
    forked = _ddp("fork", EndingDDP)
    forked._configure_launcher()
    assert type(forked.launcher) is _MultiProcessingLauncher, why


def test_tensorboard_logger_reopens_with_purge_step(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    why = f"{uses('lightning')}: TensorBoardLogger._experiment / _kwargs changed"
    logger = TensorBoardLogger(tmp_path, name="", version=0)
    for step in range(6):
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.experiment.flush()
    compat.reopen_tensorboard(logger, purge_step=3)  # a resume from step 3: steps 3..5 are logged again
    for step in range(3, 5):
        logger.log_metrics({"loss": 10.0 + step}, step=step)
    logger.experiment.close()
    events = EventAccumulator(str(tmp_path / "version_0"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)], f"{why}: TensorBoard reads {logged}"


class _Tiny:
    """A LightningModule on 8 one-sample batches (built lazily: Lightning is imported by the tests only)."""

    @staticmethod
    def module():
        import lightning as L

        class Tiny(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)

            def training_step(self, batch, batch_idx):
                return self.layer(batch[0]).pow(2).mean()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

            def train_dataloader(self):
                data = torch.utils.data.TensorDataset(torch.ones(8, 2, dtype=torch.float32))
                return torch.utils.data.DataLoader(data, batch_size=1)

        return Tiny()


def test_lightning_logging_step_counter_after_a_save_between_steps(tmp_path):
    import lightning as L

    class SaveBetweenSteps(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "between.ckpt")
                trainer.should_stop = True

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            compat.undo_logging_step_advance(checkpoint)

    class Counter(L.Callback):
        counted = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # the first one after the restore
            self.counted = self.counted or (trainer.fit_loop.epoch_loop._batches_that_stepped, trainer.global_step)

    def trainer(*callbacks):
        return L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         default_root_dir=tmp_path)

    trainer(SaveBetweenSteps()).fit(_Tiny.module())
    saved = torch.load(tmp_path / "between.ckpt", weights_only=True)
    why = f"{uses('lightning')}: the fit loop's _batches_that_stepped counter changed"
    loop = saved["loops"]["fit_loop"]["epoch_loop.state_dict"]
    assert loop.get("_batches_that_stepped") == 1, why  # 2 stepped batches, less the one undone
    counter = Counter()
    trainer(counter).fit(_Tiny.module(), ckpt_path=tmp_path / "between.ckpt")
    assert counter.counted == (2, 2), f"{why}: resumed with (logging step, global step) = {counter.counted}"


def test_lightning_fsdp_setup_model_hook():
    from lightning.pytorch.strategies import FSDPStrategy

    why = f"{uses('lightning')}: FSDPStrategy._setup_model(model) changed"
    assert list(inspect.signature(FSDPStrategy._setup_model).parameters) == ["self", "model"], why

    class Strategy(compat.WrapBeforeFSDP, FSDPStrategy):
        def wrap_model(self, model):
            return model

    assert Strategy._setup_model is compat.WrapBeforeFSDP._setup_model, why


def test_lightning_model_parallel_double_precision_as_a_plugin():
    import lightning as L
    from lightning.pytorch.plugins import DoublePrecision
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    why = f"{uses('lightning')}: ModelParallelStrategy and precision='64-true'"
    with pytest.raises(ValueError, match="does not support"):  # else the workaround can go
        L.Trainer(accelerator="cpu", devices=2, precision="64-true", strategy=ModelParallelStrategy(), logger=False)
    plugin = compat.precision_plugin_for(ModelParallelStrategy(), "64-true")
    assert isinstance(plugin, DoublePrecision), why
    trainer = L.Trainer(accelerator="cpu", devices=2, plugins=[plugin], strategy=ModelParallelStrategy(), logger=False)
    assert trainer.precision == "64-true", why
    assert compat.precision_plugin_for(ModelParallelStrategy(), "32-true") is None
    assert compat.precision_plugin_for(DDPStrategy(), "64-true") is None  # a flag Lightning takes as it is


def test_lightning_deepspeed_setup_distributed_is_checks_plus_the_init_compat_calls():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    why = f"{uses('lightning')}: DeepSpeedStrategy.setup_distributed changed (CPUDeepSpeedStrategy copies its steps)"
    assert list(inspect.signature(DeepSpeedStrategy._init_deepspeed_distributed).parameters) == ["self"], why
    called = set(DeepSpeedStrategy.setup_distributed.__code__.co_names)
    assert {"reset_seed", "set_world_ranks", "_init_deepspeed_distributed"} <= called, why
    assert called <= {"parallel_devices", "_validate_device_index_selection", "reset_seed", "set_world_ranks",
                      "_init_deepspeed_distributed"}, f"{why}: it now also calls {sorted(called)}"


def test_deepspeed_universal_load_is_an_engine_setting_read_at_load_time():
    from types import SimpleNamespace

    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine

    why = f"{uses('deepspeed')}: where the engine keeps `checkpoint.load_universal` changed (load_universal_next)"
    assert "self.load_universal_checkpoint =" in inspect.getsource(DeepSpeedConfig), why
    engine = SimpleNamespace(_config=SimpleNamespace(load_universal_checkpoint=False))
    compat.load_universal_next(engine)
    assert DeepSpeedEngine.load_universal_checkpoint(engine) is True, why
    assert "load_universal_checkpoint" in DeepSpeedEngine.load_checkpoint.__code__.co_names, why


def test_lightning_model_pruning_targets():
    from lightning.pytorch.callbacks import ModelPruning

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    pruning = ModelPruning("l1_unstructured", amount=0.5, parameter_names=["weight"])
    pruning.setup(None, model, "fit")
    expected = [(model[0], "weight"), (model[1], "weight")]
    got = compat.pruning_targets(pruning)
    assert [(id(m), n) for m, n in got] == [(id(m), n) for m, n in expected], \
        f"{uses('lightning')}: ModelPruning._parameters_to_prune changed: {got}"


def test_optuna_trial_id_reopens_the_trial():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    first, second = study.ask(), study.ask()
    why = f"{uses('optuna')}: Trial._trial_id changed"
    assert compat.trial_id(first) != compat.trial_id(second), why
    reopened = optuna.trial.Trial(study, compat.trial_id(second))
    assert reopened.number == second.number, why
    reopened.report(0.5, step=1)
    assert study.trials[second.number].intermediate_values == {1: 0.5}, why


def test_torch_dcp_metadata_globals_and_item_location(tmp_path):
    import torch.distributed.checkpoint as dcp

    from lightdist.checkpoints import verify

    state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "extra": {"epoch": 3, "name": "x"}}
    dcp.save(state, checkpoint_id=tmp_path, no_dist=True)
    why = f"{uses('torch')}: torch.distributed.checkpoint's .metadata pickle or _StorageInfo changed"
    try:
        assert verify(tmp_path) == "fsdp", why  # unpickles .metadata with DCP_METADATA_GLOBALS only
    except Exception as exc:
        pytest.fail(f"{why}: {exc}")
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = dcp.FileSystemReader(tmp_path).read_metadata()
    items = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    assert items, why
    for fqn in items:
        relative_path, offset, length, transforms = compat.dcp_item_location(metadata, fqn)
        assert not transforms, why
        with open(tmp_path / relative_path, "rb") as f:
            f.seek(offset)
            value = torch.load(io.BytesIO(f.read(length)), weights_only=True)
        assert value == state["extra"][fqn.rsplit(".", 1)[-1]], f"{why}: item {fqn} read back as {value!r}"


def test_torch_fsdp_wrapper_prefix():
    from torch.distributed.fsdp._common_utils import FSDP_WRAPPED_MODULE

    assert f"{FSDP_WRAPPED_MODULE}." in compat.WRAPPER_PREFIXES, \
        f"{uses('torch')}: FSDP now names its wrapped module {FSDP_WRAPPED_MODULE!r}"


def test_torch_inductor_freezing_patch():
    from torch._inductor import config

    why = f"{uses('torch')}: torch._inductor.config.freezing / patch changed"
    before = config.freezing
    with compat.inductor_freezing():
        assert config.freezing is True, why
    assert config.freezing == before, why


def test_lightning_model_checkpoint_epoch_trigger_beside_a_step_trigger(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)
    assert checkpoint.every_n_epochs == 0, uses("lightning")
    compat.also_every_epoch(checkpoint)
    assert checkpoint.every_n_epochs == 1 and checkpoint._every_n_train_steps == 5, uses("lightning")
    assert "self._every_n_epochs >= 1" in inspect.getsource(ModelCheckpoint.on_train_epoch_end), uses("lightning")


def test_lightning_csv_writer_keeps_an_existing_metrics_file(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class Writer(compat.KeepMetricsFile, ExperimentWriter):
        def continue_file(self):
            self.continued = True

    why = f"{uses('lightning')}: the CSV ExperimentWriter no longer checks an existing file in _check_log_dir_exists"
    (tmp_path / "metrics.csv").write_text("loss,step\n1.0,0\n")  # Lightning's header: sorted keys
    writer = Writer(log_dir=str(tmp_path))
    assert writer.continued and (tmp_path / "metrics.csv").read_text() == "loss,step\n1.0,0\n", why
    writer.metrics_keys = ["loss", "step"]
    writer.log_metrics({"loss": 0.5}, step=1)
    writer.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["loss,step", "1.0,0", "0.5,1"], \
        f"{uses('lightning')}: ExperimentWriter.save no longer appends to the existing file"

    logger = CSVLogger(tmp_path / "logs")
    made = compat.lazy_experiment(logger, lambda: writer)
    assert made is writer and logger.experiment is writer and compat.lazy_experiment(logger, object) is writer, \
        f"{uses('lightning')}: CSVLogger no longer keeps its writer in _experiment"


def test_lightning_train_loader_states_saved_replaced_and_loaded_late(tmp_path):
    """A checkpoint taken between steps holds the loader state kept at the previous step's end
    (train_loader_states, replace_train_loader_states); a module reading estimated_stepping_batches
    in configure_optimizers makes Lightning set the data up before the loops are restored, and
    load_train_loader_states hands the state over then (it returns True: Lightning had not)."""
    import lightning as L
    from torchdata.stateful_dataloader import StatefulDataLoader

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(int(batch[0]))
            return self.layer(batch.float().view(-1, 1)).pow(2).mean()

        def configure_optimizers(self):
            assert self.trainer.estimated_stepping_batches == 8  # sets the training data up
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return StatefulDataLoader(torch.arange(8), batch_size=1)

    class SaveBetweenSteps(L.Callback):
        kept: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.kept = compat.train_loader_states(trainer)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                trainer.save_checkpoint(tmp_path / "between.ckpt")
                trainer.should_stop = True

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            compat.replace_train_loader_states(checkpoint, self.kept)

    class Load(L.Callback):
        loaded = None

        def on_train_start(self, trainer, pl_module):
            self.loaded = compat.load_train_loader_states(trainer)

    def trainer(*callbacks):
        return L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         default_root_dir=tmp_path)

    why = f"{uses('lightning')}: the fit loop's training loader state handling changed"
    trainer(SaveBetweenSteps()).fit(Module())
    saved = torch.load(tmp_path / "between.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["_num_yielded"] == 3, why
    load, module = Load(), Module()
    trainer(load).fit(module, ckpt_path=tmp_path / "between.ckpt")
    assert load.loaded is True, why
    assert module.seen == [3, 4, 5, 6, 7], f"{why}: resumed with the samples {module.seen}"


def test_lightning_rank_observer_reports_before_it_kills():
    """The observer SIGKILLs the main process when a rank dies; the report must run first."""
    import subprocess

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from lightdist.compat import before_rank_observer_kills

    calls = []
    before_rank_observer_kills(lambda: calls.append("first"))
    before_rank_observer_kills(lambda: calls.append("second"))  # replaces the first
    stand_in = subprocess.Popen(["sleep", "60"])  # takes the place of the main process it kills
    try:
        _ChildProcessObserver(main_pid=stand_in.pid, child_processes=[])._terminate_all()
        assert stand_in.wait(timeout=10) == -9
    finally:
        stand_in.kill()
    assert calls == ["second"]


def test_lightning_rank_observer_ends_its_own_process_with_exit_code_1(tmp_path):
    """In the main process itself: the ranks are killed and the process exits 1, not -9."""
    import subprocess
    import sys

    script = tmp_path / "observer.py"
    script.write_text(
        "import os, subprocess\n"
        "from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver\n"
        "from lightdist.compat import before_rank_observer_kills\n"
        "before_rank_observer_kills(lambda: print('reported', flush=True))\n"
        "rank = subprocess.Popen(['sleep', '60'])\n"
        "print(rank.pid, flush=True)\n"
        "_ChildProcessObserver(main_pid=os.getpid(), child_processes=[rank])._terminate_all()\n"
        "print('not reached', flush=True)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    pid, reported = proc.stdout.split()[:2]
    assert proc.returncode == 1 and reported == "reported" and "not reached" not in proc.stdout, proc.stderr
    waited = subprocess.run(["ps", "-o", "stat=", "-p", pid], capture_output=True, text=True).stdout.strip()
    assert waited in ("", "Z"), waited  # the rank was killed (gone, or a zombie of the exited parent)


def test_lightning_sigterm_broadcast_is_a_per_step_loop_method():
    import inspect

    import lightning as L
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    from lightdist.compat import skip_sigterm_broadcast

    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)
    assert ".item()" in inspect.getsource(_TrainingEpochLoop._broadcast_sigterm_tensor)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loop = trainer.fit_loop.epoch_loop
    restore = skip_sigterm_broadcast(trainer)
    assert loop._broadcast_sigterm_tensor() is None and "_broadcast_sigterm_tensor" in vars(loop)
    restore()
    assert "_broadcast_sigterm_tensor" not in vars(loop)


# on a CPU Lightning runs 16-mixed as bf16-mixed: the plugin says so, the precision flag does not
@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.bfloat16),
                                              ("64-true", torch.float64), ("32-true", torch.float32),
                                              ("bf16-true", torch.bfloat16)])
def test_lightning_compute_dtype_of_the_precision_plugin(precision, dtype):
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert compat.compute_dtype(trainer) == dtype


def test_lightning_ddp_arguments_are_what_the_wrapper_gets():
    strategy = DDPStrategy(static_graph=True)
    assert compat.ddp_arguments(strategy) == {"static_graph": True}
    assert "**self._ddp_kwargs" in inspect.getsource(DDPStrategy._setup_model)


def test_lightning_pytree_deprecation_is_left_out_and_nothing_else():
    """Lightning's batch flattening constructs torch's deprecated LeafSpec (a FutureWarning on torch
    >= 2.14, every run, every rank): after the filter it is not shown; the same warning from other
    code still is."""
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    def leafspec_warnings(call) -> list:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            compat.quiet_lightning_pytree_deprecation()
            call()
        return [w for w in seen if "LeafSpec" in str(w.message)]

    if not leafspec_warnings(lambda: torch.utils._pytree.LeafSpec()):
        pytest.skip("this torch does not deprecate LeafSpec")
    assert leafspec_warnings(lambda: _tree_flatten(1)) == []
