"""Bad input ends in one clear line naming the fix, a non-zero exit, and nothing created or lost."""

import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from lightdist.errors import ConfigError
from tests.helpers.cli import QUIET, cli_env, run_cli
from tests.helpers.image_files import write_mnist

FAST = ["trainer.max_steps=1", *QUIET]  # every case fails in the preflight, before any data is read
MNIST = ["data=mnist", "data.root={data}", "data.val_size=50"]  # a small MNIST-format folder written here

CASES = {
    "unknown_experiment": (["+experiment=no_such_recipe"], "unknown experiment 'no_such_recipe'; available:"),
    "unknown_group_option": (["model=resnet99"], "unknown model 'resnet99'; available:"),
    "unknown_key": (["trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'; did you mean trainer.max_epochs?"),
    "unknown_added_key": (["+trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
    "unknown_optimizer_key": (["optimizer.lrr=0.1"], "did you mean optimizer.lr?"),
    "unknown_data_key": (["data.batchsize=3"], "did you mean data.batch_size?"),
    "unknown_model_key": (["model.chanels=3"], "did you mean model.channels?"),
    "known_key_left_out": (["trainer.barebones=true"], "use +trainer.barebones=true"),
    "unknown_top_level_key": (["+learning_rate=3"], "unknown top-level key(s): learning_rate"),
    "callback_without_target": (["+callbacks.extra.bar=1"], "callbacks.extra has no _target_"),
    "refused_by_the_optimizer": ([*MNIST, "optimizer.lr=-1"],
                                 "optimizer (torch.optim.adamw.AdamW): Invalid learning rate: -1 (check optimizer.lr)"),
    "refused_by_the_scheduler": ([*MNIST, "scheduler=plateau", "scheduler.factor=2"], "(check scheduler.factor)"),
    "refused_by_the_model": ([*MNIST, "model.dropout=2.0"], "dropout probability has to be between 0 and 1, but "
                                                           "got 2.0 (check model.dropout)"),
    "refused_by_the_data_module": ([*MNIST, "data.kfold.k=1"], "data.kfold.k=1: k-fold needs k >= 2"),
    # data.root may also name the dataset's own folder
    "val_size_beyond_the_data": (["data=mnist", "data.root={data}/mnist", "data.val_size=500"],
                                 "data.val_size=500 holds out 500 of the 300 training samples"),
    "wrong_type": (["trainer.max_epochs=ten"], "'trainer.max_epochs' must be"),
    "bad_choice": (["trainer.precision=17"], "invalid value 17 for 'trainer.precision'"),
    "zero_devices": (["trainer.devices=0"], "trainer.devices=0 is not a device count"),
    "too_many_cpu_devices": (["trainer=cpu_ddp", "trainer.devices=64"], "trainer.devices=64 CPU processes"),
    "gpu_on_cpu_machine": (["trainer=gpu"], "trainer=gpu needs CUDA GPUs"),
    "fp16_on_cpu": (["trainer.precision=16-mixed"], "needs a GPU"),
    "sync_batchnorm_on_cpu": (["trainer=cpu_ddp", "trainer.sync_batchnorm=true"], "CUDA-only"),
    "missing_dataset": (["data=cifar10", "data.download=false"], "CIFAR-10 not found under"),
    "data_that_does_not_fit_the_task": (["data=cartpole"], "task ClassificationTask needs num_classes"),
}


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=300, n_test=100)
    return root


def main_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """lightdist's main() in this process, in `cwd`: what the command line prints and its exit code.

    Every case fails in the preflight, before Hydra runs anything, so the 20-odd cases share one
    import of the libraries instead of paying it per process. Cases that ask for several ranks run
    as real processes (should the preflight ever let them through, Lightning's launcher must not
    re-execute pytest).
    """
    import contextlib
    import io

    from lightdist.main import main

    out, err, code, here = io.StringIO(), io.StringIO(), 0, os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # a bug, not a user error: shows as the traceback the CLI would print
        import traceback

        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, mnist_root) -> dict:
    """Every case's outcome: in this process, or as a CLI process for multi-rank cases."""
    results = {}
    for case in sorted(CASES):
        cwd = tmp_path_factory.mktemp("case")
        args = [*(a.format(data=mnist_root) for a in CASES[case][0]), *FAST]
        ranks = any(a.startswith("trainer=cpu_ddp") for a in args)
        results[case] = cwd, (run_cli(args, cwd=cwd, check=False, timeout=180) if ranks
                              else main_in_process(args, cwd))
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case, outcomes):
    workdir, proc = outcomes[case]
    assert_one_line(proc, CASES[case][1])
    assert not (workdir / "outputs").exists(), "a rejected command must not create a run directory"


def assert_one_line(proc: subprocess.CompletedProcess, expected: str, code: int = 2) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightdist: error:")]
    assert proc.returncode == code and len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_a_refused_value_names_its_key_at_run_time_too():
    """The optimizer is built by the task inside fit (on every rank): the same one line there."""
    from lightdist.tasks.optim import build_optimizer

    with pytest.raises(ConfigError, match=r"optimizer \(torch\.optim\.sgd\.SGD\): Invalid learning rate: -0\.5 "
                                          r"\(check optimizer\.lr\)"):
        build_optimizer(partial(torch.optim.SGD, lr=-0.5, momentum=0.9), torch.nn.Linear(2, 2))


def test_a_constructor_error_names_the_node_and_the_key():
    """Anything Hydra builds from a config node: its refusal becomes one line naming node, target and key."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightdist.config.building import building
    from lightdist.main import user_message

    cfg = OmegaConf.create({"model": {"_target_": "torch.nn.Dropout", "p": 2.0, "inplace": False}})
    with pytest.raises(ConfigError) as info, building("model", cfg.model):
        instantiate(cfg.model)
    assert str(info.value) == ("model (torch.nn.Dropout): dropout probability has to be between 0 and 1, "
                               "but got 2.0 (check model.p)")
    with pytest.raises(Exception) as info:  # unwrapped, as Lightning's or Hydra's callers see it
        instantiate(cfg.model)
    assert user_message(info.value).startswith("model (torch.nn.modules.dropout.Dropout): dropout probability")


def test_a_failed_download_leaves_nothing_behind(workdir):
    """Offline, a dataset that is not there ends in one line, and the data folder stays as it was."""
    empty = workdir / "data"
    empty.mkdir()
    # An unreachable proxy: the download fails at once here, online or not.
    env = cli_env(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    proc = run_cli(["data=mnist", f"data.root={empty}", *FAST], cwd=workdir, check=False, env=env, timeout=120)
    assert_one_line(proc, f"MNIST not found under {empty} and it could not be downloaded")
    assert list(empty.iterdir()) == [], "a failed download must not leave folders or partial files"
    assert not (workdir / "outputs").exists()


def test_corrupt_checkpoint_leaves_the_run_untouched(workdir):
    bad = workdir / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a complete zip archive")
    proc = run_cli([f"ckpt_path={bad}", *FAST], cwd=workdir, check=False, timeout=120)
    assert proc.returncode != 0
    assert "not a readable PyTorch checkpoint" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert bad.read_bytes().startswith(b"PK"), "the checkpoint must not be touched"
    assert not (workdir / "outputs").exists()


def test_last_without_a_run_dir(workdir):
    proc = run_cli(["ckpt_path=last", f"run_dir={workdir / 'nowhere'}", *FAST], cwd=workdir, check=False)
    assert proc.returncode != 0
    assert "ckpt_path=last" in proc.stderr.strip().splitlines()[-1]
    assert not (workdir / "nowhere").exists()


def _rank_one(pid: int) -> int | None:
    """The child of `pid` that Lightning's launcher started as LOCAL_RANK=1."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            if b"LOCAL_RANK=1" in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                return int(child)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank's process through /proc")
def test_a_killed_rank_is_named_in_one_line(workdir, mnist_root):
    """kill -9 of rank 1 during training: rank 0 ends the job with the rank, how it died and where its log is."""
    args = ["trainer=cpu_ddp", *MNIST, "trainer.max_steps=100000", "trainer.max_epochs=10000",
            "logger=none", "callbacks=none", "test_after_fit=false", *QUIET]
    proc = subprocess.Popen([sys.executable, "-m", "lightdist", *[a.format(data=mnist_root) for a in args]],
                            cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline, child = time.monotonic() + 180, None
        while child is None or not list((workdir / "outputs").rglob("rank1.log")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before rank 1 started"
            child = child or _rank_one(proc.pid)
            time.sleep(0.2)
        time.sleep(1.0)  # rank 1 is past its start: in DDP setup or training
        os.kill(child, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    line = assert_one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr),
                           f"rank 1 (pid {child}) died (killed by signal 9); its log: ", code=1)
    log = Path(re.search(r"its log: (\S+)$", line).group(1))
    assert log.is_file() and log.name == "rank1.log"


def test_locate_reads_the_dataset_folder_itself_and_a_failed_download_creates_no_folder(tmp_path, mnist_root):
    from lightdist.data.download import RemoteFile, fetch_files, locate
    from lightdist.errors import DataError
    from lightdist.vision.idx import IDX_FILES

    assert locate(mnist_root / "mnist", ("mnist",), IDX_FILES, "MNIST", False, fetch_files(())) == mnist_root / "mnist"
    nowhere = tmp_path / "not" / "yet"
    refused = (RemoteFile(IDX_FILES[0], "http://127.0.0.1:9/" + IDX_FILES[0], "0" * 32),)  # nothing listens
    with pytest.raises(DataError, match="could not be downloaded"):
        locate(nowhere, ("mnist",), IDX_FILES, "MNIST", True, fetch_files(refused))
    assert list(tmp_path.iterdir()) == []


# -- main(): one translation for every command ----------------------------------------------------
def _main(args: list[str]) -> tuple[int, str]:
    """main(args) in this process: (exit code, stderr)."""
    import contextlib
    import io

    from lightdist.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, err.getvalue()


def _raising(exc: BaseException):
    def run(argv):
        raise exc

    return run


def _instantiation_error() -> Exception:
    from hydra.utils import instantiate

    try:
        instantiate({"_target_": "torch.nn.Dropout", "p": 2.0})
    except Exception as exc:  # Hydra's InstantiationException around torch's ValueError
        return exc
    raise AssertionError("torch.nn.Dropout(p=2.0) was accepted")


def _families() -> dict[str, tuple[Exception, str, int]]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import ValidationError

    from lightdist.errors import RankFailed

    return {
        "lightdist": (ConfigError("bad value", hint="use another"), "bad value (use another)", 2),
        "exit_code": (RankFailed("rank 1 died"), "rank 1 died", 1),
        "omegaconf": (ValidationError("Value 'x' of\n'a.b' is not an int"), "Value 'x' of 'a.b' is not an int", 2),
        "instantiation": (_instantiation_error(), "dropout probability has to be between 0 and 1", 2),
        "lightning": (MisconfigurationException("no GPU here\nmore detail"), "no GPU here", 2),
    }


@pytest.mark.parametrize("family", ["lightdist", "exit_code", "omegaconf", "instantiation", "lightning"])
def test_main_reports_each_family_of_user_error_once(family, monkeypatch):
    import lightdist.commands.convert as convert

    exc, expected, code = _families()[family]
    monkeypatch.setattr(convert, "run", _raising(exc))
    got, err = _main(["convert"])
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("lightdist: error: "), err
    assert expected in lines[0] and "Traceback" not in err


def test_main_keeps_the_traceback_of_bugs_and_of_everything_under_debug(monkeypatch):
    import lightdist.commands.convert as convert
    from lightdist.main import main

    monkeypatch.setattr(convert, "run", _raising(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):  # not turned into a line: the traceback shows where
        main(["convert"])
    monkeypatch.setattr(convert, "run", _raising(ConfigError("bad value")))
    monkeypatch.setenv("LIGHTDIST_DEBUG", "1")
    with pytest.raises(ConfigError, match="bad value"):
        main(["convert"])


def test_main_names_a_bad_override_and_a_mistyped_command_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _main(["trainer.max_epoch=3"])  # training: Hydra's composition error, one line
    assert code == 2 and err.count("lightdist: error:") == 1 and "did you mean trainer.max_epochs?" in err
    code, err = _main(["sweep", "indx=3", "optimizer.lr=0.1,0.01"])
    assert code == 2 and err.strip().splitlines() == [
        "lightdist: error: unknown sweep key 'indx' (sweep keys: count, index, list, summarize; other keys are "
        "overrides of the training config; did you mean index?)"]
    assert not (tmp_path / "outputs").exists()


def test_an_error_inside_the_hydra_job_reaches_main(tmp_path, mnist_root, monkeypatch):
    """run_job raises after Hydra started the job: the same one line (not Hydra's report), or the bug itself."""
    import lightdist.commands.train as train_command
    from lightdist.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = [*(a.format(data=mnist_root) for a in MNIST), *FAST]
    monkeypatch.setattr(train_command, "run_job", _raising(ConfigError("refused in the job")))
    code, err = _main(args)
    assert code == 2 and err.strip().splitlines() == ["lightdist: error: refused in the job"], err
    monkeypatch.setattr(train_command, "run_job", _raising(ZeroDivisionError("a bug in the job")))
    with pytest.raises(ZeroDivisionError, match="a bug in the job"):
        main(args)
    assert "HYDRA_FULL_ERROR" not in os.environ  # set for the app only


# -- the key=value options of every command -------------------------------------------------------
def test_command_args_types_aliases_and_the_rest():
    from dataclasses import dataclass, field
    from typing import Literal

    from lightdist.config.compose import command_args, training_key

    @dataclass
    class Options:
        path: str
        index: int | None = None
        ratio: float = 0.5
        count: bool = False
        mode: Literal["fast", "slow"] = "fast"
        tags: list[str] = field(default_factory=list)

    aliases = {"--index": "index", "--count": "count", "-o": "path", "tag": "tags"}

    def parse(*argv, **kw):
        return command_args(list(argv), "demo", Options, aliases=aliases, **kw)

    args = parse("path=a", "index=3", "ratio=0.25", "count=true", "mode=slow", "tag=x", "tags=y")
    assert vars(args.options) == {"path": "a", "index": 3, "ratio": 0.25, "count": True, "mode": "slow",
                                  "tags": ["x", "y"]}
    assert args.given == ["path=a", "index=3", "ratio=0.25", "count=true", "mode=slow", "tags=x", "tags=y"]
    # the older flag forms, a positional argument and a lone `--`
    for argv in (["--index", "3", "--count", "--", "p"], ["--index=3", "--count", "-o", "p"]):
        options = command_args(argv, "demo", Options, aliases=aliases, positional="path").options
        assert (options.index, options.count, options.path, options.ratio) == (3, True, "p", 0.5)
    assert parse("path=a", "index=null").options.index is None
    # training overrides and Hydra's flags go on, in order
    args = parse("path=a", "+experiment=x", "-m", "optimizer.lr=0.1,0.2", "seed=3", rest=training_key, flags=True)
    assert args.rest == ["+experiment=x", "-m", "optimizer.lr=0.1,0.2", "seed=3"]
    refusals = [
        (["path=a", "indx=2"], {}, "unknown demo key 'indx' (demo keys: count, index, mode, path, ratio, tag, tags; "
                                   "did you mean index?)"),
        (["path=a", "indx=2"], {"rest": training_key}, "did you mean index?"),
        (["path=a", "index=three"], {}, "demo index=three: 'index' must be int"),
        (["path=a", "count=maybe"], {}, "demo count=maybe: 'count' must be bool"),
        (["path=a", "mode=medium"], {}, "invalid value 'medium' for 'mode' (choose from fast, slow)"),
        (["index=1"], {}, "demo needs path=<value>"),
        (["path=a", "--index"], {}, "demo --index needs a value (or index=<value>)"),
        (["path=a", "-m"], {"rest": training_key}, "unexpected demo argument '-m' (arguments are key=value)"),
    ]
    for argv, kw, message in refusals:
        with pytest.raises(ConfigError) as info:
            parse(*argv, **kw)
        assert message in str(info.value), (argv, str(info.value))
