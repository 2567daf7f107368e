"""What the ranks of one torchrun job agree on before any process group exists.

torchrun names a job by its rendezvous id (`--rdzv-id`), which every agent is given, so every
rank can name the run directory after it. Static rendezvous (`--master-addr/--master-port
--node-rank`) leaves the id at "none" on every node: there the ranks agree through the
rendezvous store that torchrun's agent on node 0 already serves at MASTER_ADDR:MASTER_PORT
(the one the process group will use): the first rank to ask sets the name, every other reads it.

Ranks that torchrun restarts (`--max-restarts`) start their process group in a store of their own:
the agent's store still holds the previous attempt's keys, which torch's process-group setup
would read (pytorch/pytorch#135712).
"""

import os
import socket
from datetime import timedelta

from lightdist.errors import ConfigError

RUN_ID_KEY = "lightdist/run_id"
STORE_TIMEOUT_S = 300.0


def rendezvous_id() -> str | None:
    """torchrun's `--rdzv-id`; None outside torchrun or when it was left at its default "none"."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return value if value and value != "none" else None


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _agent_store():
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=STORE_TIMEOUT_S))


def agreed_value(key: str, candidate: str) -> str:
    """The value of `key` every rank of this torchrun job sees: the first rank's `candidate`.

    The agent's store lives as long as the agent, so ranks that torchrun restarts
    (`--max-restarts`) get the same value as the first attempt did.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        raise ConfigError("this torchrun job has no rendezvous id and no shared rendezvous store to agree on "
                          "a run directory", hint="give torchrun --rdzv-id=<job name>, or run_dir=<shared dir>")
    store = _agent_store()
    # compare_set on a missing key with an empty expected value sets it; otherwise it returns the stored one.
    return store.compare_set(key, "", candidate).decode()


def isolate_restarted_group() -> None:
    """In a restarted attempt, move the process group's rendezvous off the agent's store.

    Torch's env:// setup uses the agent's store as it is, without a per-attempt prefix, so the
    restarted ranks would read the dead attempt's addresses (gloo: "Connection refused"; NCCL: a
    stale unique id). Here rank 0 picks a free port, publishes it under this attempt's key in the
    agent's store, and every rank points MASTER_PORT at it with the agent store switched off:
    torch then starts a fresh store on rank 0. Call before the process group exists.

    Each rank counts its own attempts in the agent's store: TORCHELASTIC_RESTART_COUNT cannot
    say which attempt this is, since an agent whose ranks are healthy restarts them without
    counting when another node's agent re-joins after a failure.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return
    store, rank = _agent_store(), int(os.environ.get("RANK", "0"))
    attempt = store.add(f"lightdist/attempts/rank_{rank}", 1)
    if attempt == 1:  # the first attempt: the agent's store holds no process group's keys yet
        return
    key = f"lightdist/attempt_{attempt}/master_port"
    if rank == 0:
        with socket.socket() as probe:  # a port free on this host, where rank 0 will serve the store
            probe.bind(("", 0))
            store.set(key, str(probe.getsockname()[1]))
    port = store.get(key).decode()  # blocks until rank 0 has set it
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
