"""A run interrupted at any batch and resumed ends bit-identical (fp64, deterministic) to the same
run never interrupted: image and text, one process and DDP, mid-epoch and mid-accumulation
window, loader workers with random crops. And without exact_resume it does not.

Each case runs the CLI: once straight through (A), and once interrupted by its own preemption
signal (tests.helpers.interrupt.SignalAt) and resumed until it completes (B).
"""

from pathlib import Path

from tests.helpers.cli import QUIET, run_cli
from tests.helpers.image_files import write_class_folders
from tests.helpers.interrupt import (
    interrupt_args,
    interrupt_env,
    max_weight_difference,
    run_interrupted,
    train_losses,
)

EXACT = ["trainer.precision=64-true", "trainer.deterministic=true", "trainer.log_every_n_steps=1",
         "trainer.num_sanity_val_steps=0", "test_after_fit=false", *QUIET]
IMAGE = ["data.train_subset=240", "data.val_subset=32", "data.test_subset=32", "data.batch_size=32",
         "model.channels=[4,8]", "model.hidden=16", "trainer.max_epochs=2", *EXACT]
TEXT = ["+experiment=bbc_news_fasttext", "data.train_subset=160", "data.val_subset=40", "data.test_subset=40",
        "data.batch_size=16", "data.tokenizer.vocab_size=500", "model.embed_dim=8", "model.buckets=1000",
        "model.dropout=0.2", "trainer.max_epochs=2", *EXACT]
NOT_RESUMABLE = "not resumable"


def straight_and_interrupted(workdir: Path, args: list[str], batches: list[int]) -> tuple[Path, Path, list[str]]:
    env = interrupt_env()
    (workdir / "a").mkdir()
    run_cli([*args, "name=a"], cwd=workdir / "a", env=env)
    (run_a,) = (workdir / "a" / "outputs" / "a").glob("*/summary.json")
    run_b, resumed = run_interrupted([*args, "name=b"], workdir / "b", batches, env=env)
    return run_a.parent, run_b, resumed


def assert_identical(run_a: Path, run_b: Path, resumed: list[str]) -> None:
    for output in resumed:
        assert NOT_RESUMABLE not in output, output[-3000:]
        # resumed from the preemption checkpoint, not from an epoch's end
        assert any(line.startswith("Restoring states") and line.endswith("checkpoints/preempted.ckpt")
                   for line in output.splitlines()), output[-3000:]
    assert train_losses(run_a) == train_losses(run_b)
    assert max_weight_difference(run_a, run_b) == 0.0


def test_image_ddp_mid_epoch_then_mid_accumulation(workdir):
    """Two ranks over gloo, windows of 3 batches (8 batches an epoch: windows 0-2, 3-5, 6-7): the
    first signal after the 3rd batch (a window's end, mid-epoch), the second after the 5th batch of
    the second epoch (inside a window: saved once it completes). Dropout and on-device augmentation
    draw from every rank's own generators."""
    (workdir / "b").mkdir()
    args = [*IMAGE, "data.batch_size=16", "trainer=cpu_ddp", "trainer.devices=2", "trainer.accumulate_grad_batches=3"]
    run_a, run_b, resumed = straight_and_interrupted(workdir, args, [3, 13])
    assert_identical(run_a, run_b, resumed)


def test_text_single_process_and_without_exact_resume(workdir):
    """Bucketed batches (BucketBatchSampler) and dropout; then the same interruption with
    exact_resume=false: the interrupted epoch's order starts again, and the run ends elsewhere."""
    (workdir / "b").mkdir()
    run_a, run_b, resumed = straight_and_interrupted(workdir, TEXT, [4])
    assert_identical(run_a, run_b, resumed)

    (workdir / "c").mkdir()
    run_c, resumed_c = run_interrupted([*TEXT, "name=c", "exact_resume=false"], workdir / "c", [4],
                                       env=interrupt_env())
    assert any(NOT_RESUMABLE in output for output in resumed_c)
    assert max_weight_difference(run_a, run_c) > 0.0


def test_text_ddp_mid_accumulation(workdir):
    """Bucketed batches sharded over two gloo ranks (each rank its own dropout generator), windows of
    2 batches, the signal inside a window."""
    (workdir / "b").mkdir()
    args = [*TEXT, "trainer=cpu_ddp", "trainer.devices=2", "trainer.accumulate_grad_batches=2"]
    run_a, run_b, resumed = straight_and_interrupted(workdir, args, [3])
    assert_identical(run_a, run_b, resumed)


def test_image_folder_with_workers_mid_accumulation(workdir):
    """Random crops and flips decoded in two loader workers (new workers after the resume), the
    signal inside an accumulation window."""
    data = write_class_folders(workdir / "images", {"red": (200, 30, 30), "green": (30, 200, 30),
                                                    "blue": (30, 30, 200)}, per_class=40)
    (workdir / "b").mkdir()
    args = ["data=image_folder", f"data.path={data}", "data.image_size=12", "data.crop_scale=[0.3,1.0]",
            "data.num_workers=2", "data.batch_size=12", "data.val_size=0.1", "data.test_size=0.1",
            "model.channels=[4,8]", "model.hidden=16", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=3",
            *EXACT]
    run_a, run_b, resumed = straight_and_interrupted(workdir, args, [4])
    assert_identical(run_a, run_b, resumed)


def test_a_crash_after_a_resumed_preemption_resumes_from_the_periodic_checkpoint(workdir):
    """Preempted after batch 5 and resumed; then killed (SIGKILL: no checkpoint of its own) after
    batch 11, and resumed from last.ckpt written every 3 steps. The preemption checkpoint counted a
    fetched batch that never trained: left counted, the later last.ckpt would be restored as taken
    mid-batch and a batch trained twice."""
    args = [*IMAGE, "checkpoint.every_n_steps=3"]
    env = interrupt_env()
    (workdir / "a").mkdir()
    run_cli([*args, "name=a"], cwd=workdir / "a", env=env)
    (run_a,) = (workdir / "a" / "outputs" / "a").glob("*/summary.json")
    run_a = run_a.parent

    def signal_at(batch: int, name: str) -> list[str]:
        return [*interrupt_args(batch), f"+callbacks.interrupt.signal={name}"]

    (workdir / "c").mkdir()
    run_cli([*args, "name=c", *signal_at(5, "SIGUSR1")], cwd=workdir / "c", env=env)
    (run_c,) = (workdir / "c" / "outputs" / "c").glob("*/summary.json")
    resume = [*args, "name=c", f"run_dir={run_c.parent}", "ckpt_path=last"]
    killed = run_cli([*resume, *signal_at(11, "SIGKILL")], cwd=workdir / "c", env=env, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # run_dir= brings back the run's own overrides, the interrupting callback included: drop it
    run_cli([*resume, "~callbacks.interrupt"], cwd=workdir / "c", env=env)
    assert train_losses(run_a) == train_losses(run_c.parent)
    assert max_weight_difference(run_a, run_c.parent) == 0.0
