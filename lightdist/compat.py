"""Every use of a dependency's private API (a name with a leading underscore), in one place.

Each item says what it relies on and why no public way exists; tests/test_compat.py checks, for
each, that the installed dependency still has it and that it behaves as assumed, so that an
upgrade that changes one fails there, by name, instead of somewhere in a run.
Dependencies are imported inside the items: importing this module imports none of them.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

# -- CPython ---------------------------------------------------------------------------------------


def run_exit_handlers() -> None:
    """Run the atexit handlers now (they are then unregistered), before ending with os._exit.

    Relies on: atexit._run_exitfuncs. The public atexit API registers and unregisters handlers but
    cannot run them; os._exit, which a rank needs to skip interpreter finalization, skips them.
    """
    import atexit

    atexit._run_exitfuncs()


# -- OmegaConf -------------------------------------------------------------------------------------
# OmegaConf.is_missing(cfg, key) and OmegaConf.is_interpolation(cfg, key) are the public way to ask
# about a child without resolving it; only the raw value and a node's own key have none.


def child_node(cfg: Any, key: Any) -> Any:
    """The child node itself (a DictConfig, ListConfig or value node), nothing resolved or validated.

    Relies on: Container._get_node(key). cfg[key] resolves an interpolation and raises on `???`.
    """
    return cfg._get_node(key)


def raw_value(cfg: Any, key: Any) -> Any:
    """The child's value as written, without resolving it (an interpolation stays its `${...}` text).

    Relies on: Container._get_node(key) and Node._value(). Public access (cfg[key], cfg.get(key),
    OmegaConf.to_container(cfg, resolve=False)) resolves the child or copies the whole container.
    """
    return cfg._get_node(key)._value()


def node_key(node: Any) -> Any:
    """The key under which `node` sits in its parent (None at the root).

    Relies on: Node._key(). OmegaConf has no public accessor for it; the full path is not public either.
    """
    return node._key()


# -- Hydra -----------------------------------------------------------------------------------------


def override_value_text(value: Any) -> str:
    """A value written as the right-hand side of a Hydra override (quoting and escapes), as Hydra's
    basic sweeper writes sweep points.

    Relies on: hydra.core.override_parser.overrides_parser.Override._get_value_element_as_str (a
    static method). Hydra has no public formatter for override values.
    """
    from hydra.core.override_parser.overrides_parser import Override

    return Override._get_value_element_as_str(value)


def basic_sweep_batches(overrides: list[Any], max_batch_size: int | None = None) -> list[list[list[str]]]:
    """The points of a sweep (parsed overrides) in Hydra's basic-sweeper order, in batches.

    Relies on: hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments. The sweeper
    is a plugin Hydra instantiates for a multirun; the expansion it performs has no public entry.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, max_batch_size)


# -- Lightning -------------------------------------------------------------------------------------


def is_script_launcher(launcher: Any) -> bool:
    """Whether `launcher` is Lightning's launcher that starts ranks > 0 as new script processes
    (strategy ddp with start_method popen); its `procs` are the Popen objects of those ranks.

    Relies on: lightning.pytorch.strategies.launchers.subprocess_script._SubprocessScriptLauncher
    and its `procs` attribute. Launchers are private classes; no public property tells them apart.
    """
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    return isinstance(launcher, _SubprocessScriptLauncher)


class _SubprocessWithPopen:
    """The subprocess module, with its Popen replaced."""

    def __init__(self, module: Any, popen: Callable[..., Any]):
        self._module, self.Popen = module, popen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def start_children_with(launcher: Any, popen: Callable[..., Any]) -> None:
    """Make a script launcher (is_script_launcher) start each rank > 0 with `popen(command, env=...,
    cwd=...)` in place of subprocess.Popen; what it returns is kept in `launcher.procs`.

    Relies on: _SubprocessScriptLauncher._call_children_scripts calling `subprocess.Popen(command,
    env=env_copy, cwd=cwd)` through its module's `subprocess` name, once per local rank, with the
    child's whole environment in env_copy (LOCAL_RANK set). Lightning has no hook for how the ranks
    are started; the replacement is in place only during that call.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script as module

    call = launcher._call_children_scripts

    def call_children_scripts() -> None:
        real = module.subprocess
        module.subprocess = _SubprocessWithPopen(real, popen)
        try:
            call()
        finally:
            module.subprocess = real

    launcher._call_children_scripts = call_children_scripts


def _ending_spawn_launcher_class() -> type:
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    class EndingSpawnLauncher(_MultiProcessingLauncher):
        def __init__(self, strategy: Any, end: Callable[[], NoReturn]):
            super().__init__(strategy, start_method="spawn")
            self.end = end

        def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
            # A spawned rank starts a new interpreter, without main()'s warning filter.
            quiet_lightning_pytree_deprecation()
            # The result is on Lightning's SimpleQueue (written synchronously) when this returns;
            # a failure raises past this line and keeps torch's error report and exit code 1.
            super()._wrapping_function(*args, **kwargs)
            self.end()

    EndingSpawnLauncher.__module__, EndingSpawnLauncher.__qualname__ = __name__, "EndingSpawnLauncher"
    return EndingSpawnLauncher


def __getattr__(name: str) -> Any:
    # Classes derived from private Lightning classes are built on first use (importing compat does
    # not import Lightning) and kept as module attributes, where pickle finds them (spawn pickles
    # the launcher for its children).
    if name == "EndingSpawnLauncher":
        globals()[name] = cls = _ending_spawn_launcher_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EndSpawnedRanks:
    """Mixin for a Lightning DDP-family strategy: under start_method="spawn", each child calls
    `end_spawned_rank()` (a picklable function the subclass sets) once its result is handed over.

    Relies on: Strategy._configure_launcher (the hook that builds the launcher), the strategy's
    _start_method and _launcher attributes, and _MultiProcessingLauncher(strategy, start_method)
    running the work in _wrapping_function(...) in each child. Lightning offers no public way to
    choose a launcher or to run code in a spawned child after its result was sent.
    """

    end_spawned_rank: Callable[[], NoReturn]

    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        if self._start_method == "spawn":  # type: ignore[attr-defined]
            self._launcher = __getattr__("EndingSpawnLauncher")(self, type(self).end_spawned_rank)


def reopen_tensorboard(logger: Any, purge_step: int) -> None:
    """Make a TensorBoardLogger open a new writer with SummaryWriter(purge_step=...) on its next use.

    Relies on: TensorBoardLogger._experiment (the writer, created lazily when None) and _kwargs (the
    SummaryWriter arguments). The purge step is known only once a checkpoint is restored, after the
    logger was built; the logger has no public way to change writer arguments or close its writer.
    """
    if logger._experiment is not None:
        logger._experiment.close()
        logger._experiment = None
    logger._kwargs["purge_step"] = purge_step


def undo_logging_step_advance(checkpoint: dict[str, Any]) -> None:
    """In a checkpoint saved between training steps, undo the +1 Lightning applies to its logging-step
    counter on restore (it assumes a save at a step's end, before the counter moved on).

    Relies on: the checkpoint layout loops.fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"]
    (the training epoch loop's state). The counter is private loop state; no API sets it.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    if loop.get("_batches_that_stepped", 0) > 0:
        loop["_batches_that_stepped"] -= 1


def before_rank_observer_kills(report: Any) -> None:
    """Call `report()` in Lightning's child-process observer just before it kills this process and
    its ranks, which it does (SIGKILL) as soon as it sees a rank gone: a message this process prints
    from its own watch could otherwise come too late. Replaces the report of an earlier call.

    When this process is the one to kill, it ends with exit code 1 (a failed job) instead of being
    SIGKILLed (-9, which tells a scheduler or a shell nothing of a failure): its ranks are
    signalled as Lightning does, then it exits.

    Relies on: lightning.fabric.strategies.launchers.subprocess_script._ChildProcessObserver, its
    _terminate_all method and its _main_pid, _child_processes and _termination_signal attributes
    (private; no hook exists).
    """
    import os
    import sys

    from lightning.fabric.strategies.launchers import subprocess_script

    observer = subprocess_script._ChildProcessObserver
    original = observer.__dict__.get("_lightdist_original", observer._terminate_all)

    def terminate_all(self: Any) -> None:
        try:
            report()
        finally:
            if self._main_pid == os.getpid():
                for child in self._child_processes:
                    child.send_signal(self._termination_signal)
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(1)
            original(self)

    observer._lightdist_original = original
    observer._terminate_all = terminate_all


def settle_batch_totals(trainer: Any) -> None:
    """After a restore, count a batch that was fetched but never trained (a checkpoint saved before a
    batch, on preemption) as not fetched in the run's totals too. Lightning resets only the epoch's
    counters on restart; with the totals left one ahead, the next checkpoint saved at a batch's end
    would be restored as one saved in the middle of a batch, and one batch repeated.

    Relies on: fit_loop.epoch_loop.batch_progress.total (ready counts fetched batches, started those
    whose on_train_batch_start ran). Called at on_train_start: after Lightning decided its restart
    stage from the restored counters, before the epoch loop acts on it (a checkpoint saved at a
    batch's end still has its completed counter one behind there: left alone).
    """
    total = trainer.fit_loop.epoch_loop.batch_progress.total
    if total.ready > total.started:  # fetched, never started: saved at on_train_batch_start
        total.ready = total.started


def train_loader_states(trainer: Any) -> list[dict[str, Any]]:
    """The state of each stateful training loader, as Lightning puts it in a checkpoint.

    Relies on: FitLoop._combined_loader (the training CombinedLoader) and CombinedLoader._state_dicts,
    which Lightning's own FitLoop.on_save_checkpoint calls; trainer.train_dataloader gives the loaders
    but not Lightning's choice and order of the stateful ones.
    """
    loader = trainer.fit_loop._combined_loader
    return loader._state_dicts() if loader is not None else []


def replace_train_loader_states(checkpoint: dict[str, Any], states: list[dict[str, Any]]) -> None:
    """Put `states` in place of the training loaders' states Lightning saved in `checkpoint`
    (an empty list: the resumed run starts its loaders' epoch afresh).

    Relies on: the checkpoint layout loops.fit_loop["state_dict"]["combined_loader"] (what
    FitLoop.on_save_checkpoint returns, restored by FitLoop.on_load_checkpoint). No API writes it.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict")
    if loop is not None:
        loop["combined_loader"] = states


def load_train_loader_states(trainer: Any) -> bool:
    """Give the training loaders the states a resumed fit read from its checkpoint, if Lightning has
    not (then their iterator is made again, to start where the state says); True when it had not.

    Lightning hands the states over when it sets up the training data, but only if that happens
    after the loops were restored; `trainer.estimated_stepping_batches` (a schedule's length, read in
    configure_optimizers) sets the data up earlier, and the states are then never loaded.
    Relies on: FitLoop._combined_loader_states_to_load, _load_combined_loader_states and
    _data_fetcher (the iterator FitLoop.setup_data made), as Lightning 2.6 uses them.
    """
    loop = trainer.fit_loop
    if not (loop.restarting and loop._combined_loader_states_to_load and loop._combined_loader is not None):
        return False
    loop._load_combined_loader_states()
    if loop._data_fetcher is not None:
        iter(loop._data_fetcher)
    return True


def also_every_epoch(checkpoint: Any) -> None:
    """Let a ModelCheckpoint built with a step or time trigger save at every epoch end as well.

    Relies on: ModelCheckpoint._every_n_epochs, the epoch trigger its epoch-end hooks read. Its
    constructor refuses two triggers at once and no public setter exists.
    """
    checkpoint._every_n_epochs = 1


class KeepMetricsFile:
    """Mixin for Lightning's CSV ExperimentWriter: `continue_file()` (defined by the subclass) runs
    where Lightning would delete an existing metrics.csv.

    Relies on: _ExperimentWriter.__init__ calling self._check_log_dir_exists(), which warns that
    the directory is not empty and deletes metrics.csv. Lightning has no option to keep the file.
    """

    def _check_log_dir_exists(self) -> None:
        self.continue_file()  # type: ignore[attr-defined]


def lazy_experiment(logger: Any, make: Callable[[], Any]) -> Any:
    """A logger's experiment object, made by `make()` on first use and kept (Lightning's pattern).

    Relies on: Logger._experiment, where Lightning's loggers keep the object their `experiment`
    property returns. CSVLogger offers no public way to choose its writer class.
    """
    if logger._experiment is None:
        logger._experiment = make()
    return logger._experiment


class WrapBeforeFSDP:
    """Mixin for Lightning's FSDPStrategy: `wrap_model(model)` (defined by the subclass) runs first,
    then Lightning's own setup, which leaves a module that already contains FSDP modules as it is.

    Relies on: FSDPStrategy._setup_model(model), the hook that wraps the module. Lightning exposes
    no public way to give FSDP arguments it computes itself (device_id) other values.
    """

    def _setup_model(self, model: Any) -> Any:
        return super()._setup_model(self.wrap_model(model))  # type: ignore[misc, attr-defined]


def pruning_targets(callback: Any) -> list[tuple[Any, str]]:
    """The (module, parameter name) pairs a ModelPruning callback prunes, once set up.

    Relies on: ModelPruning._parameters_to_prune, set in its setup from filter_parameters_to_prune.
    The callback keeps them in no public attribute; apply_pruning, which subclasses override to
    prepare the tensors, needs them.
    """
    return list(callback._parameters_to_prune)


def init_deepspeed_distributed(strategy: Any) -> None:
    """Initialise the process group the way DeepSpeedStrategy.setup_distributed does, after its checks.

    Relies on: DeepSpeedStrategy._init_deepspeed_distributed(), which setup_distributed calls after
    a CUDA device-index check that CPU devices cannot pass; no public method does the rest alone.
    """
    strategy._init_deepspeed_distributed()


def load_universal_next(engine: Any) -> None:
    """Make a built DeepSpeed engine's next load_checkpoint read a universal checkpoint.

    Relies on: DeepSpeedEngine._config.load_universal_checkpoint, the `checkpoint.load_universal`
    setting, which the engine reads at load time only. The public way, the DeepSpeed config, is
    fixed when Lightning builds the engine, before the checkpoint to resume from is known.
    """
    engine._config.load_universal_checkpoint = True


def precision_plugin_for(strategy: Any, precision: Any) -> Any:
    """The precision as a plugin object where Lightning refuses it as a flag, else None.

    Relies on: AcceleratorConnector._validate_precision_choice refusing precision="64-true" with a
    ModelParallelStrategy by the flag alone (FSDP2 shards float64 parameters like any others); a
    DoublePrecision plugin given through `plugins` (Trainer precision left unset) is not checked.
    """
    from lightning.pytorch.plugins import DoublePrecision
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy) and str(precision) in ("64-true", "64", "double"):
        return DoublePrecision()
    return None


def compute_dtype(trainer: Any) -> Any:
    """The dtype the trainer's precision plugin computes in, for the peak FLOP/s it is measured against.

    Relies on: lightning.pytorch.callbacks.throughput_monitor._plugin_to_compute_dtype, what
    Lightning's own ThroughputMonitor uses; it knows every plugin (FSDP's reduce dtype, DeepSpeed's,
    bitsandbytes', Transformer Engine's int8), which the precision flag alone does not say.
    """
    from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

    return _plugin_to_compute_dtype(trainer.precision_plugin)


def ddp_arguments(strategy: Any) -> dict[str, Any]:
    """The keyword arguments a Lightning DDPStrategy hands to DistributedDataParallel (mutable: a
    change before configure_ddp reaches the wrapper).

    Relies on: DDPStrategy._ddp_kwargs, which DDPStrategy._setup_model passes on as they are. The
    constructor takes them, nothing sets them later; lightdist decides one by the process group's
    backend, which is known only once the group exists.
    """
    return strategy._ddp_kwargs


def quiet_lightning_pytree_deprecation() -> None:
    """Leaves out the FutureWarning torch >= 2.14 prints, in every run and on every rank, when
    Lightning flattens a loader's batch: the deprecation is of torch's LeafSpec, which Lightning's
    code constructs, and nothing a user runs or configures can change it.

    Relies on: lightning.pytorch.utilities._pytree._tree_flatten building torch.utils._pytree.LeafSpec.
    Only that warning, only from that module, is ignored.
    """
    import warnings

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


# -- Optuna ----------------------------------------------------------------------------------------


def trial_id(trial: Any) -> int:
    """The storage id of a trial, which optuna.trial.Trial(study, trial_id) takes to reopen it in
    another process.

    Relies on: Trial._trial_id. Optuna exposes the id to no public attribute (`number` counts
    within the study) while its public Trial constructor needs it.
    """
    return trial._trial_id


# -- torch -----------------------------------------------------------------------------------------
# Names that wrappers insert into state-dict keys: FSDP's wrapped-module attribute
# (torch.distributed.fsdp._common_utils.FSDP_WRAPPED_MODULE; FSDP's public state-dict APIs drop it
# only inside a process group) and the `_forward_module.` of checkpoints of Lightning < 2.1.
WRAPPER_PREFIXES = ("_forward_module.", "_fsdp_wrapped_module.")
# torch.distributed.checkpoint's `.metadata` is a plain pickle. These are the globals it holds
# (private names among them), for a restricted unpickler: torch offers no weights-only reader.
DCP_METADATA_GLOBALS: dict[str, set[str]] = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    **{module: {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}
       for module in ("pathlib", "pathlib._local")},  # Python 3.13 moved the classes
}


def dcp_item_location(metadata: Any, fqn: str) -> tuple[str, int, int, list]:
    """Where FileSystemWriter stored item `fqn`: (file relative to the checkpoint, offset, length,
    transform descriptors).

    Relies on: Metadata.storage_data[MetadataIndex(fqn)] being a
    torch.distributed.checkpoint.filesystem._StorageInfo. The public reader loads items with
    weights_only=False; reading one item's bytes to check them first needs its location.
    """
    from torch.distributed.checkpoint.metadata import MetadataIndex

    info = metadata.storage_data[MetadataIndex(fqn)]
    return str(info.relative_path), info.offset, info.length, list(info.transform_descriptors or ())


@contextmanager
def inductor_freezing() -> Iterator[None]:
    """Inductor's freezing for every compilation inside the block, recompilations included.

    Relies on: torch._inductor.config.patch(freezing=True). The public way is per call,
    torch.compile(model, options={"freezing": True}); this block form serves callers that build
    the compiled model elsewhere.
    """
    from torch._inductor import config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def skip_sigterm_broadcast(trainer: Any) -> Callable[[], None]:
    """Stop Lightning's per-step SIGTERM broadcast for this fit; returns what turns it back on.

    Relies on: _TrainingEpochLoop.advance calls self._broadcast_sigterm_tensor() before every
    batch of a multi-process run; it broadcasts rank 0's trainer.received_sigterm in a tensor on
    the training device and reads it back (.item(): on GPUs the host waits for the device at
    every step). The preemption handler that owns SIGTERM agrees on signals itself, over a CPU
    group, so Lightning's flag is never set and the broadcast only costs that wait.
    """
    loop = trainer.fit_loop.epoch_loop
    if not callable(getattr(type(loop), "_broadcast_sigterm_tensor", None)):
        return lambda: None
    loop._broadcast_sigterm_tensor = lambda: None  # an instance attribute shadows the method

    def restore() -> None:
        loop.__dict__.pop("_broadcast_sigterm_tensor", None)

    return restore
