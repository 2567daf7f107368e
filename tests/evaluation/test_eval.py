"""`lightdist eval` and image prediction on a tiny real run: DDP parity on a test set of 101
samples (not divisible by 2 ranks), predict from files and arrays, mistakes are one line."""

import json

import numpy as np
import pytest
import torch

from lightdist.main import main
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs

TINY = ["data.train_subset=400", "data.val_subset=100", "data.test_subset=101", "trainer.max_epochs=2",
        "model.channels=[8,16]", "model.hidden=32", "trainer.log_every_n_steps=1", *QUIET]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A run trained (and tested after fit) by 2 gloo processes."""
    workdir = tmp_path_factory.mktemp("eval")
    run_cli(["trainer=cpu_ddp", *TINY], cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    return workdir, run_dir


def reports(run_dir):
    return sorted((run_dir / "eval").glob("*/report.json"))


def test_training_under_ddp_counts_each_test_sample_once_and_draws_curves(ddp_run):
    _, run_dir = ddp_run
    assert read_summary(run_dir)["world_size"] == 2
    assert int(torch.load(run_dir / "confusion_matrix.pt").sum()) == 101
    assert (run_dir / "learning_curves.png").stat().st_size > 0


def test_eval_single_process_and_ddp_give_the_same_report(ddp_run):
    workdir, run_dir = ddp_run
    # float64 forward passes: batch size and thread count then change the logits by ~1e-15, which
    # the float32 cast of the report rounds away, so no near-tie prediction or calibration bin can
    # flip between the two evaluations on any CPU; only the float32 sums over ranks differ.
    exact = ["trainer.precision=64-true", "trainer.enable_progress_bar=false"]
    # the run trained on 2 ranks: eval uses the run's trainer unless told otherwise
    run_cli(["eval", f"run_dir={run_dir}", "trainer=cpu", *exact], cwd=workdir)
    # 2 ranks, batches of 7: ranks get 51 and 50 samples in 8 and 8 batches, uneven last batches.
    # strategy=ddp_spawn (a run trained so): eval starts its ranks as processes of its own instead,
    # since spawned ranks would keep their results to themselves
    proc = run_cli([f"run_dir={run_dir}", "trainer=cpu_ddp", "strategy=ddp_spawn", "data.eval_batch_size=7",
                    *exact], cwd=workdir, module="lightdist.eval")
    assert "report:" in proc.stdout
    single, double = (json.loads(p.read_text()) for p in reports(run_dir))
    assert (single["world_size"], double["world_size"]) == (1, 2)
    for report in (single, double):
        assert report["num_samples"] == 101
        assert sum(map(sum, report["confusion_matrix"]["counts"])) == 101
        assert sum(row["support"] for row in report["per_class"]) == 101
        assert report["per_class"][0]["label"] == "T-shirt/top"
        assert report["ece"] == pytest.approx(report["ece_of_bins"], abs=1e-5)
        assert sum(b["count"] for b in report["reliability"]) == 101
    assert single["confusion_matrix"] == double["confusion_matrix"]
    # abs=1e-5 bounds float32 sums of <= 101 terms of size <= 1 in any order ((n-1) * 2**-24 < 6e-6);
    # a sample counted twice or dropped moves the accuracy alone by ~0.01 (1/101).
    for key in ("accuracy", "accuracy_top5", "loss", "ece"):
        assert single[key] == pytest.approx(double[key], abs=1e-5), key
    for average in ("macro", "weighted"):
        assert single[average] == pytest.approx(double[average], abs=1e-5)
    for a, b in zip(single["per_class"], double["per_class"]):
        assert a == pytest.approx(b, abs=1e-5)
    # the training-time test of the best checkpoint saw the same predictions; it ran in float32, where
    # a near-tie (top two logits within ~1e-6) may flip one prediction: at most one sample moves cell
    at_training = torch.load(run_dir / "confusion_matrix.pt")
    assert (torch.tensor(single["confusion_matrix"]["counts"]) - at_training).abs().sum() <= 2
    for report_file in reports(run_dir):
        folder = report_file.parent
        for name in ("report.md", "config.yaml", "confusion_matrix.png", "roc.png", "reliability.png"):
            assert (folder / name).stat().st_size > 0, name
        assert "| *macro average* |" in (folder / "report.md").read_text()


def test_predict_images_from_arrays_and_files_matches_eval(ddp_run, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from PIL import Image

    from lightdist.predict import Predictor

    workdir, run_dir = ddp_run
    cfg = OmegaConf.load(run_dir / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    images, labels = dm.test_set.tensors
    predictor = Predictor(run_dir)  # normalisation from the checkpoint, not from the data
    predictions = predictor.predict(list(images.squeeze(1).numpy()))  # raw uint8 HxW arrays
    names = predictor.class_names
    mine = np.zeros((10, 10), dtype=np.int64)
    np.add.at(mine, (labels.numpy(), [names.index(p.label) for p in predictions]), 1)
    # float32 in other batches than the training-time test: a near-tie may flip one prediction
    assert np.abs(mine - torch.load(run_dir / "confusion_matrix.pt").numpy()).sum() <= 2

    # files: a PNG (RGB, twice the size: converted and resized) and a .npy array, through the CLI
    png, npy = tmp_path / "first.png", tmp_path / "second.npy"
    Image.fromarray(images[0, 0].numpy()).convert("RGB").resize((56, 56), Image.NEAREST).save(png)
    np.save(npy, images[1, 0].numpy())
    proc = run_cli(["predict", f"run_dir={run_dir}", f"image={png}", f"image={npy}"], cwd=workdir)
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["input"] for line in lines] == [str(png), str(npy)]
    assert lines[1]["label"] == predictions[1].label
    assert lines[1]["probs"][predictions[1].label] == pytest.approx(predictions[1].probs[predictions[1].label],
                                                                     abs=1e-5)
    assert lines[0]["label"] in names and abs(sum(lines[0]["probs"].values()) - 1) < 1e-4
    # float tensors in [0, 1] are the same images as uint8 arrays
    as_float = predictor.predict([images[1, 0].float() / 255])
    assert as_float[0].probs == pytest.approx(predictions[1].probs, abs=1e-5)


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightdist: error:"), err
    return err[0]


@pytest.mark.parametrize(("argv", "expected"), [
    (["split=test"], "eval needs run_dir="),
    (["run_dir={tmp}/none"], "is not a run directory (no config.yaml)"),
    (["run_dir={tmp}", "split=tst"], "invalid value 'tst' for 'split'"),
    (["run_dir={tmp}", "model.hidden=3"], "eval cannot override 'model.hidden'"),
    (["run_dir={tmp}", "calibration_bin=3"], "eval cannot override 'calibration_bin' (eval keys: calibration_bins,"),
    (["run_dir={tmp}", "--cfg"], "unexpected eval argument '--cfg'"),
    (["run_dir={rl}"], "eval applies to classification runs"),
])
def test_bad_eval_arguments_are_one_line(tmp_path, capsys, argv, expected):
    rl = tmp_path / "rl_run"
    rl.mkdir()
    (rl / "config.yaml").write_text("task:\n  _target_: lightdist.rl.dqn.DQNTask\n")
    message = _one_line_error(capsys, [a.format(tmp=tmp_path, rl=rl) for a in argv])
    assert expected in message, message


def test_eval_errors_on_a_real_run_create_nothing(ddp_run, capsys):
    _, run_dir = ddp_run
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert "checkpoint" in _one_line_error(capsys, [f"run_dir={run_dir}", "ckpt=/nowhere/x.ckpt"])
    assert "unknown trainer 'gpux'" in _one_line_error(capsys, [f"run_dir={run_dir}", "trainer=gpux"])
    assert "unknown key 'data.bogus'" in _one_line_error(capsys, [f"run_dir={run_dir}", "data.bogus=1"])
    assert "Fashion-MNIST" in _one_line_error(capsys, [f"run_dir={run_dir}", "data.root=/nowhere",
                                                       "data.download=false"])
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
