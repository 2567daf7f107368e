"""What rank 0 makes of a failed collective (lightdist.distributed.launch.rank_failure), with the ranks
it started stood in for by processes that are alive (stuck) or dead: a dead rank is named; where none
died, the ranks it started are ended when it exits, whatever words the error uses, so that none
outlives the job (the end-to-end hung-rank run is tests/distributed/test_torchrun.py)."""

import signal
from types import SimpleNamespace

import pytest

from lightdist.distributed import launch
from lightdist.errors import RankFailed


class Rank:
    def __init__(self, code: int | None):
        self.code, self.pid = code, 4242

    def poll(self) -> int | None:
        return self.code


@pytest.fixture
def started(monkeypatch):
    """A launcher that started one rank (its exit code settable); the exit handlers registered."""
    rank = Rank(None)
    killed: list = []
    launcher = SimpleNamespace(procs=[rank], num_processes=2, kill=killed.append,
                               cluster_environment=SimpleNamespace(node_rank=lambda: 0))
    at_exit: list = []
    monkeypatch.setattr(launch, "_launcher", launcher)
    monkeypatch.setattr(launch, "_reported", None)
    monkeypatch.setattr(launch, "is_script_launcher", lambda candidate: candidate is launcher)
    monkeypatch.setattr(launch.atexit, "register", lambda fn, *args: at_exit.append((fn, args)))
    return SimpleNamespace(rank=rank, launcher=launcher, at_exit=at_exit, killed=killed)


def run_exit_handlers(at_exit: list) -> None:
    for fn, args in at_exit:
        fn(*args)


def test_a_stuck_rank_after_a_timeout_is_named_and_ended_at_exit(started, tmp_path):
    exc = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 20000ms for send operation")
    failure = launch.rank_failure(exc, tmp_path, wait_s=0.05)
    assert isinstance(failure, RankFailed) and "distributed.timeout_s" in str(failure)
    run_exit_handlers(started.at_exit)
    assert started.killed == [signal.SIGKILL]


def test_a_stuck_rank_is_ended_at_exit_whatever_the_error_says(started, tmp_path):
    """A pair that the timeout closed reads as a lost peer without the word timeout: rank 0's own error
    stands, and the rank it started is still ended when it exits (before, it was left running)."""
    exc = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:40000")
    assert launch.rank_failure(exc, tmp_path, wait_s=0.05) is None
    run_exit_handlers(started.at_exit)
    assert started.killed == [signal.SIGKILL]


def test_a_dead_rank_is_named_and_nothing_is_killed(started, tmp_path):
    started.rank.code = -signal.SIGKILL
    exc = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:40000")
    failure = launch.rank_failure(exc, tmp_path, wait_s=0.05)
    assert isinstance(failure, RankFailed) and "rank 1 (pid 4242) died (killed by signal 9)" in str(failure)
    assert started.at_exit == []


def test_an_error_that_is_not_a_collectives_leaves_the_ranks_to_follow(started, tmp_path):
    assert launch.rank_failure(ValueError("a bug in a callback"), tmp_path, wait_s=0.05) is None
    assert started.at_exit == []
