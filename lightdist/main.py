"""`lightdist [command] key=value ...` and `python -m lightdist`: dispatch, and the one error report.

    lightdist +experiment=fashion_mnist_cnn trainer=cpu_ddp      # train (the default command)
    lightdist preflight +experiment=cifar_resnet trainer=gpu     # compose and check, run nothing
    lightdist sweep index=3 optimizer.lr=0.1,0.01 seed=1,2       # one point of a sweep (count=true, list=true)
    lightdist convert checkpoint=<dir or file> output=<file>     # one consolidated checkpoint file
    lightdist predict run_dir=outputs/<name>/<run> text="..."    # labels and probabilities (JSON lines)
    lightdist eval run_dir=outputs/<name>/<run> split=test       # report: metrics, ROC, calibration
    lightdist optimize run_dir=outputs/<name>/<run>              # prune, int8-quantize, export; measured

Every command raises what the user can fix (LightdistError, Hydra's and OmegaConf's errors, a
refused constructor argument, Lightning's MisconfigurationException); main() prints it as one
line "lightdist: error: ..." and exits with its code (2 unless it says otherwise). Bugs keep
their traceback; LIGHTDIST_DEBUG=1 shows it for user errors too.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys

from lightdist.commands import NAMES
from lightdist.errors import JobFailed, LightdistError, error_line, one_line


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    error: BaseException | None = None
    try:
        _dispatch(argv)
    except JobFailed as carried:  # out of a Hydra job, past Hydra's own report
        error = carried.error
    except Exception as exc:
        error = exc
    if error is not None:
        _report(error)
    _exit_if_distributed()


def _dispatch(argv: list[str]) -> None:
    _leave_out_unused_imports()  # before anything imports Lightning
    from lightdist.compat import quiet_lightning_pytree_deprecation

    quiet_lightning_pytree_deprecation()
    from lightdist.distributed import early_ranks

    if early_ranks.waiting():  # a rank > 0 rank 0 started early: imports now, then waits for its job
        from lightdist.commands.train import prepare_child

        early_ranks.wait_for_handoff(prepare_child)
    from lightdist.config import resolvers
    from lightdist.distributed.launch import child_job_config

    resolvers.register()
    child = child_job_config()
    if child is not None:  # a rank > 0 started by Lightning's launcher: rank 0's job, whatever argv says
        from lightdist.commands.train import run_child

        run_child(child)
        return
    name = argv[0] if argv and argv[0] in NAMES else "train"
    command = importlib.import_module(f"lightdist.commands.{name}")
    command.run(argv[1:] if argv and argv[0] == name else argv)


# -- start-up: what importing Lightning costs ---------------------------------------------------------
# Lightning imports torchmetrics, whose package __init__ imports scipy.signal and (through its BERTScore
# and InfoLM modules) transformers whenever they are installed, and matplotlib for its plots: about 1.7 s
# of every process's start-up, paid twice before a 2-process run's first step (Lightning starts rank 1
# when rank 0 reaches fit), for metrics lightdist never uses (audio, text embeddings) and plots it draws
# itself (lightdist.tasks.metrics). While torchmetrics is first imported they look uninstalled to it;
# afterwards they import as usual (lightdist's text models import transformers themselves, its figures
# matplotlib). torchmetrics' BERTScore, InfoLM, CLIP, scipy-backed audio metrics and Metric.plot then
# report their dependency missing: LIGHTDIST_FULL_IMPORTS=1 keeps them (and the start-up cost).
HIDDEN_FROM_TORCHMETRICS = ("scipy", "transformers", "matplotlib")


class _HiddenFromTorchmetrics(importlib.abc.MetaPathFinder):
    """While torchmetrics' package is first imported, `names` look uninstalled: to imports (find_spec)
    and to version probes (importlib.metadata). Leaves sys.meta_path once torchmetrics is imported."""

    def __init__(self, names: tuple[str, ...]):
        self.names = set(names)
        self.hiding = False

    def _hidden(self, name: str | None) -> bool:
        return self.hiding and bool(name) and name.replace("-", "_").lower().partition(".")[0] in self.names

    def find_spec(self, fullname, path=None, target=None):
        if self._hidden(fullname):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        if fullname != "torchmetrics" or self.hiding:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _HidingWhileExecuted(spec.loader, self)
        return spec

    def find_distributions(self, context=None):
        if context is not None and self._hidden(context.name):
            raise importlib.metadata.PackageNotFoundError(context.name)
        return iter(())

    def done(self) -> None:
        self.hiding = False
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        from lightning_utilities.core.imports import module_available, package_available

        package_available.cache_clear()  # their probes cached "not installed": ask again from now on
        module_available.cache_clear()


class _HidingWhileExecuted(importlib.abc.Loader):
    """torchmetrics' own loader, run with its finder hiding."""

    def __init__(self, loader, finder: _HiddenFromTorchmetrics):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.finder.hiding = True
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.done()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def _leave_out_unused_imports() -> None:
    if "torchmetrics" in sys.modules or os.environ.get("LIGHTDIST_FULL_IMPORTS"):
        return
    if not any(isinstance(f, _HiddenFromTorchmetrics) for f in sys.meta_path):
        sys.meta_path.insert(0, _HiddenFromTorchmetrics(HIDDEN_FROM_TORCHMETRICS))


def _report(exc: BaseException) -> None:
    """One line and the exit code for a user error; anything else is raised again, traceback and all."""
    message = user_message(exc)
    if message is None or os.environ.get("LIGHTDIST_DEBUG"):
        raise exc
    ours = isinstance(exc, LightdistError) or isinstance(exc.__cause__, LightdistError)
    print(error_line(message if ours else message + "  [set LIGHTDIST_DEBUG=1 for the traceback]"), file=sys.stderr)
    raise SystemExit(getattr(exc, "exit_code", 2))


def user_message(exc: BaseException) -> str | None:
    """The one-line message for errors caused by what the user asked for; None for bugs."""
    if isinstance(exc, LightdistError):
        return str(exc)
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if "lightning" in sys.modules:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    else:  # nothing of Lightning ran yet, so none of its errors can be here (and importing it costs seconds)
        MisconfigurationException = LightdistError
    if isinstance(exc, InstantiationException):
        from lightdist.config.building import explain

        return str(explain(exc))  # names the node (full_key), its target and the key to check
    if isinstance(exc, MisconfigurationException):
        return str(exc).strip().splitlines()[0]
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return one_line(exc)
    return None


def _exit_if_distributed() -> None:
    """A process that ran a process group (rank 0 of a job, or a rank started by srun/torchrun)
    ends as Lightning's children do (exit_rank): the group's C++ threads may outlive it, and
    interpreter finalization could abort in one of them."""
    from lightdist.distributed import launch

    dist = sys.modules.get("torch.distributed")
    if launch.ran_process_group or (dist is not None and dist.is_available() and dist.is_initialized()):
        from lightdist.distributed.strategy import exit_rank

        exit_rank(0)


if __name__ == "__main__":
    main()
