"""End-to-end: the real CLI in a subprocess, on generated Fashion-MNIST files (the accuracy on the real ones).

One process, two processes over gloo, a multirun of DDP jobs, resuming, DDP gradient
averaging parity, and the CIFAR path on canonical files written here.
"""

import csv
import json
import os

import pytest
import torch

from tests.helpers.cli import QUIET, cli_env, read_summary, run_cli, run_dirs
from tests.helpers.data import SHARED_DATA, needs_fashion_mnist
from tests.helpers.image_files import write_cifar10

SMALL = ["data.train_subset=2000", "data.val_subset=500", "data.test_subset=1000", *QUIET]


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@needs_fashion_mnist
def test_one_process_trains_on_real_data_and_resumes(workdir):
    args = ["+experiment=fashion_mnist_cnn", "data.train_subset=6000", "data.val_subset=1000",
            "data.test_subset=2000", "trainer.max_epochs=2", "trainer.log_every_n_steps=10",
            "logger=[csv,tensorboard]", *QUIET]
    real = cli_env(LIGHTDIST_DATA=str(SHARED_DATA))
    run_cli(args, cwd=workdir, env=real)
    (run_dir,) = run_dirs(workdir, "fashion_mnist_cnn")
    for name in ("config.yaml", "run.json", "summary.json", "metrics.csv", "confusion_matrix.png", "train.log",
                 ".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name
    summary = read_summary(run_dir)
    # real-data check: 2 epochs on 6,000 images already classify most of the 2,000 test images
    assert summary["test"]["test/acc"] > 0.78, summary
    assert {"test/f1", "test/precision", "test/recall", "test/acc_top5"} <= set(summary["test"])
    assert summary["best_checkpoint"] and os.path.exists(summary["best_checkpoint"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["versions"]["torch"] and run["versions"]["lightning"] and len(run["segments"]) == 1
    steps_two_epochs = summary["global_step"]

    # resume in the same run directory: continues from the saved step, no epoch repeated (its test
    # after fit would only repeat the one asserted above)
    run_cli(["run_dir=" + str(run_dir), "ckpt_path=last", *args, "trainer.max_epochs=3", "test_after_fit=false"],
            cwd=workdir, env=real)
    assert run_dirs(workdir, "fashion_mnist_cnn") == [run_dir]
    resumed = read_summary(run_dir)
    assert resumed["global_step"] == steps_two_epochs * 3 // 2
    val_epochs = [r["epoch"] for r in metrics_rows(run_dir) if r.get("val/acc")]
    assert val_epochs == ["0", "1", "2"], val_epochs
    train_steps = [int(r["step"]) for r in metrics_rows(run_dir) if r.get("train/loss")]
    assert train_steps == sorted(set(train_steps)) and len(train_steps) == resumed["global_step"] // 10
    # TensorBoard continues in the same directory, each step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tb_steps = [e.step for e in events.Scalars("train/loss")]
    assert tb_steps == sorted(set(tb_steps)) and len(tb_steps) == len(train_steps)
    assert len(json.loads((run_dir / "run.json").read_text())["segments"]) == 2


def test_ddp_two_processes_write_one_run(workdir):
    run_cli(["trainer=cpu_ddp", "logger=[csv,wandb]", "trainer.max_epochs=1", *SMALL], cwd=workdir)
    dirs = run_dirs(workdir)
    assert len(dirs) == 1, dirs
    (run_dir,) = dirs
    # everything lives in that one directory: nothing per rank, nothing beside it
    assert sorted(p.name for p in (workdir / "outputs" / "default").iterdir()) == [run_dir.name]
    assert not (workdir / "lightning_logs").exists() and not (workdir / "wandb").exists()
    assert len(list(run_dir.rglob("config.yaml"))) == 2  # ours + Hydra's .hydra/config.yaml
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, wandb_runs
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2
    assert summary["threads_per_rank"] == max(1, len(os.sched_getaffinity(0)) // 2)
    # each validation epoch logged once, by rank 0
    assert [r["epoch"] for r in metrics_rows(run_dir) if r.get("val/acc")] == ["0"]


def test_multirun_of_ddp_jobs(workdir):
    run_cli(["-m", "trainer=cpu_ddp", "optimizer.lr=0.001,0.002", "trainer.max_steps=3", "test_after_fit=false",
             "trainer.limit_val_batches=2", *SMALL], cwd=workdir, timeout=400)
    sweeps = list((workdir / "outputs" / "default").iterdir())
    assert len(sweeps) == 1 and sweeps[0].name.startswith("multirun-")
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    import yaml

    lrs = [yaml.safe_load((job / "config.yaml").read_text())["optimizer"]["lr"] for job in jobs]
    assert lrs == [0.001, 0.002]
    for job in jobs:
        summary = read_summary(job)
        assert summary["world_size"] == 2 and summary["global_step"] == 3


def test_ddp_averages_gradients_exactly(workdir):
    """2 ranks x batch b == 1 process x batch 2b on the same samples, step for step.

    DistributedSampler without shuffling gives rank r the samples r, r+2, ...; so each
    step of the 2-rank run sees exactly the samples of the same step of the 1-process
    run. GroupNorm normalises each sample on its own (torch's SyncBatchNorm is CUDA-only),
    so only the gradient averaging links the ranks.

    In float64 the two runs agree to ~1e-16 whatever the CPU or thread count (the default
    threads_per_rank already gives the single process twice the threads of a rank); in
    float32 reduction-order rounding (~3e-7) grows ~3x per SGD step and no fixed tolerance
    holds on every machine. Summed gradients are constructed exactly by the single process
    at twice the learning rate (SGD without weight decay is linear in the gradient): that
    fault must miss the tolerance by many orders of magnitude (measured: 0.18 vs 1e-16).
    """
    common = ["data.shuffle=false", "data.augment=null", "data.train_subset=640", "model.dropout=0.0",
              "model.channels=[8,16]", "model.hidden=32", "model.norm=group", "optimizer=sgd", "optimizer.lr=0.05",
              "optimizer.weight_decay=0", "scheduler=none", "trainer.max_steps=6", "trainer.limit_val_batches=0",
              "test_after_fit=false", "trainer.num_sanity_val_steps=0", "trainer.precision=64-true", "logger=none",
              *QUIET]
    runs = {"single": ["trainer=cpu", "data.batch_size=32"], "double": ["trainer=cpu_ddp", "data.batch_size=16"],
            "summed": ["trainer=cpu", "data.batch_size=32", "optimizer.lr=0.1"]}
    states = {}
    for name, args in runs.items():
        (workdir / name).mkdir()
        run_cli([*common, *args], cwd=workdir / name)  # later overrides win
        ckpt = torch.load(run_dirs(workdir / name)[0] / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 6
        states[name] = ckpt["state_dict"]
    a, b, summed = states["single"], states["double"], states["summed"]
    assert a.keys() == b.keys()
    floats = [key for key in a if a[key].is_floating_point()]
    assert floats and all(a[key].dtype == b[key].dtype == torch.float64 for key in floats)
    atol = 1e-10  # float64 rounding after 6 steps stays below ~1e-13
    for key in floats:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)
    fault = max((summed[key] - a[key]).abs().max().item() for key in floats)
    assert fault > 1e6 * atol, fault  # the tolerance cannot hide a real averaging fault


def test_cifar10_files_fast_dev_run(workdir):
    """CIFAR-10 files in their canonical layout, ResNet-20, compiled (the eager backend: the
    compile path without minutes of C++ code generation), channels_last."""
    write_cifar10(workdir / "data", per_batch=40)
    run_cli(["data=cifar10", f"data.root={workdir / 'data'}", "data.val_size=20", "model=resnet20",
             "+debug=fast_dev_run", "data.batch_size=8", "compile=eager", "channels_last=true",
             *QUIET], cwd=workdir)


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_spawn"])
def test_fork_and_spawn_strategies(strategy, workdir):
    proc = run_cli(["trainer=cpu_ddp", f"strategy={strategy}", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                    "trainer.limit_test_batches=1", "logger=csv", *SMALL], cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    assert read_summary(run_dir)["world_size"] == 2
    assert "LeafSpec" not in proc.stderr  # torch >= 2.14's deprecation met in Lightning's code, in every rank
