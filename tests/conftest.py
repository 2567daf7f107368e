"""Shared fixtures: where the real data is, and how to run the CLI in a subprocess.

End-to-end tests never run Lightning's DDP launcher inside pytest (it re-executes the
command line for ranks > 0, which would re-run pytest): they start the CLI in a
subprocess, in a temporary working directory, exactly as a user would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGHTDIST_DATA") or REPO.parent / "shared" / "data").resolve()

# Options that keep end-to-end runs small and quiet; tests add what they exercise.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def have_fashion_mnist() -> bool:
    return (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()


needs_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(),
                                         reason=f"Fashion-MNIST not found under {SHARED_DATA}")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # halves `import lightning` time in every subprocess
    env["LIGHTDIST_DATA"] = str(SHARED_DATA)
    env["WANDB_MODE"] = "offline"
    env.pop("WANDB_API_KEY", None)
    for name in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "RANK", "WORLD_SIZE",
                 "LIGHTDIST_JOB_CONFIG", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, check: bool = True, env: dict | None = None,
            module: str = "lightdist") -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lightdist {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def run_dirs(cwd: Path, name: str = "default") -> list[Path]:
    """Run directories (those holding a config.yaml) under cwd/outputs/<name>/."""
    return sorted(p.parent for p in (cwd / "outputs" / name).rglob("config.yaml") if p.parent.name != ".hydra")


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# The slowest files first (seconds of one worker, measured): pytest-xdist hands whole files to
# workers in collection order, so a long file collected last would run alone at the end.
SLOW_FIRST = ["test_slurm.py", "test_strategies.py", "test_group_switching.py", "test_e2e_image.py",
              "test_optimize.py", "test_transfer.py", "test_sweeps.py", "test_cli_errors.py", "test_e2e_rl.py",
              "test_e2e_text.py", "test_eval.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: order within a file kept
