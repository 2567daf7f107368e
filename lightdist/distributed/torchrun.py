"""What the ranks of one torchrun job agree on before any process group exists.

torchrun names a job by its rendezvous id (`--rdzv-id`), which every agent is given, so every
rank can name the run directory after it. Static rendezvous (`--master-addr/--master-port
--node-rank`) leaves the id at "none" on every node: there the ranks agree through the
rendezvous store that torchrun's agent on node 0 already serves at MASTER_ADDR:MASTER_PORT
(the one the process group will use): the first rank to ask sets the name, every other reads it.
"""

import os
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


def agreed_value(key: str, candidate: str) -> str:
    """The value of `key` every rank of this torchrun job sees: the first rank's `candidate`.

    The agent's store lives as long as the agent, so ranks that torchrun restarts
    (`--max-restarts`) get the same value as the first attempt did.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        raise ConfigError("this torchrun job has no rendezvous id and no shared rendezvous store to agree on "
                          "a run directory", hint="give torchrun --rdzv-id=<job name>, or run_dir=<shared dir>")
    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(seconds=STORE_TIMEOUT_S))
    # compare_set on a missing key with an empty expected value sets it; otherwise it returns the stored one.
    return store.compare_set(key, "", candidate).decode()
