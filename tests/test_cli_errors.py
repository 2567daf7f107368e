"""Bad input ends in one clear line naming the fix, a non-zero exit, and nothing created or lost."""

import pytest

from tests.conftest import QUIET, run_cli

FAST = ["trainer.max_steps=1", *QUIET]  # every case fails in the preflight, before any data is read

CASES = {
    "unknown_experiment": (["+experiment=no_such_recipe"], "unknown experiment 'no_such_recipe'; available:"),
    "unknown_group_option": (["model=resnet99"], "unknown model 'resnet99'; available:"),
    "unknown_key": (["trainer.max_epoch=3"], "Could not override 'trainer.max_epoch'"),
    "unknown_added_key": (["+model.depthh=3"], "unknown key 'model.depthh'"),
    "unknown_top_level_key": (["+learning_rate=3"], "unknown top-level key(s): learning_rate"),
    "wrong_type": (["trainer.max_epochs=ten"], "'trainer.max_epochs' must be"),
    "bad_choice": (["trainer.precision=17"], "invalid value 17 for 'trainer.precision'"),
    "zero_devices": (["trainer.devices=0"], "trainer.devices=0 is not a device count"),
    "too_many_cpu_devices": (["trainer=cpu_ddp", "trainer.devices=64"], "trainer.devices=64 CPU processes"),
    "gpu_on_cpu_machine": (["trainer=gpu"], "trainer=gpu needs CUDA GPUs"),
    "fp16_on_cpu": (["trainer.precision=16-mixed"], "needs a GPU"),
    "sync_batchnorm_on_cpu": (["trainer=cpu_ddp", "trainer.sync_batchnorm=true"], "CUDA-only"),
    "missing_dataset": (["data=cifar10", "data.download=false"], "CIFAR-10 not found under"),
    "data_that_does_not_fit_the_task": (["data=cartpole"], "task ImageClassificationTask needs num_classes"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """Every case's CLI run, several at a time: each is a separate process that mostly imports."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(case: str):
        cwd = tmp_path_factory.mktemp("case")
        return cwd, run_cli([*CASES[case][0], *FAST], cwd=cwd, check=False, timeout=180)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(sorted(CASES), pool.map(attempt, sorted(CASES))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case, outcomes):
    workdir, proc = outcomes[case]
    expected = CASES[case][1]
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err, proc.stdout
    last = err[-1]
    assert last.startswith("lightdist: error:") and expected in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (workdir / "outputs").exists(), "a rejected command must not create a run directory"


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
