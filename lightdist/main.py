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
