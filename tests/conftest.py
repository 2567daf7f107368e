"""Fixtures and the collection order; what tests import lives in tests/helpers/."""

from pathlib import Path

import pytest

from tests.helpers.data import write_generated_data


@pytest.fixture(scope="session", autouse=True)
def generated_data(tmp_path_factory) -> Path:
    """Small learnable Fashion-MNIST and BBC News stand-ins in their canonical layouts, written once per
    session (per xdist worker) and put under $LIGHTDIST_DATA for every test: the CLI in subprocesses
    (tests.helpers.cli.cli_env passes it on) and commands run in this process alike. Tests that need
    the real data pass tests.helpers.data.SHARED_DATA explicitly."""
    root = write_generated_data(tmp_path_factory.mktemp("generated-data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTDIST_DATA", str(root))
        yield root


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# The slowest files first (seconds of one worker, measured): pytest-xdist hands whole files to
# workers in collection order, so a long file collected last would run alone at the end.
SLOW_FIRST = ["test_slurm.py", "test_slurm_multinode.py", "test_strategies.py", "test_group_switching.py",
              "test_dcp_checkpoints.py", "test_compile.py", "test_fsdp2.py", "test_zero_universal.py",
              "test_e2e_image.py", "test_models_hub.py", "test_image_folder_real.py",
              "test_optimize.py", "test_transfer.py", "test_sweeps.py", "test_cli_errors.py",
              "test_exact_resume.py", "test_rl_resume.py", "test_e2e_rl.py",
              "test_e2e_text.py", "test_hf_encoder.py", "test_text_auto.py", "test_torchrun.py", "test_elastic.py", "test_imports.py",
              "test_kubeflow.py",
              "test_network.py", "test_eval.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: order within a file kept
