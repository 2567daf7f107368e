"""Pieces of evaluation, prediction and learning curves that need no trained run."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lightdist.callbacks.learning_curves import draw_learning_curves, epoch_means, panels
from lightdist.errors import DataError
from lightdist.evaluation.metrics import ReliabilityBins, expected_calibration_error
from lightdist.vision.images import to_chw_uint8


def test_reliability_bins_give_torchmetrics_ece():
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 5), dim=-1)
    probs[:3] = torch.eye(5)[:3]  # confidence exactly 1: torchmetrics' extra last slot
    target = torch.randint(0, 5, (300,))
    bins = ReliabilityBins(10)
    bins.update(probs[:150], target[:150])
    bins.update(probs[150:], target[150:])
    ece = MulticlassCalibrationError(5, n_bins=10, norm="l1")(probs, target)
    assert expected_calibration_error(bins.compute()) == pytest.approx(float(ece), abs=1e-6)
    assert float(bins.compute()["bin_count"].sum()) == 300


def test_images_are_converted_to_the_training_shape():
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert torch.equal(to_chw_uint8(grey, 1, 28), torch.from_numpy(grey).unsqueeze(0))
    assert torch.equal(to_chw_uint8(torch.from_numpy(grey).float() / 255, 1, 28)[0], torch.from_numpy(grey))
    rgb = np.stack([grey] * 3, axis=-1)  # HxWxC grey in RGB: luma gives the grey back
    assert (to_chw_uint8(rgb, 1, 28)[0].int() - torch.from_numpy(grey).int()).abs().max() <= 1
    assert to_chw_uint8(grey, 3, 32).shape == (3, 32, 32)
    assert to_chw_uint8(np.zeros((4, 10, 12)), 3, 32).shape == (3, 32, 32)  # RGBA CxHxW
    with pytest.raises(DataError, match="HxW, HxWxC or CxHxW"):
        to_chw_uint8(np.zeros((2, 5, 5, 5)), 1, 28)
    with pytest.raises(DataError, match="does not exist"):
        to_chw_uint8("/nowhere/image.png", 1, 28)


def test_learning_curves_draw_what_exists(tmp_path):
    metrics = tmp_path / "metrics.csv"
    # an RL run: a step-level loss and a validation return, no val/loss, an empty column
    metrics.write_text("epoch,step,train/loss,val/return_mean,train/epsilon,unused\n"
                       "0,9,1.0,,0.9,\n0,19,3.0,,0.8,\n0,19,,0.5,,\n1,29,1.0,,0.5,\n1,39,1.0,,0.4,\n1,39,,0.9,,\n")
    curves = epoch_means(metrics)
    assert curves["train/loss"] == {0: 2.0, 1: 1.0} and curves["val/return_mean"] == {0: 0.5, 1: 0.9}
    assert "unused" not in curves
    assert panels(curves, "val/return_mean") == [("loss", ["train/loss"]), ("return_mean", ["val/return_mean"])]
    out = draw_learning_curves(metrics, tmp_path / "learning_curves.png", "val/return_mean")
    assert out and out.stat().st_size > 0
    # nothing it knows: no figure, no error
    metrics.write_text("epoch,step,lr-AdamW\n0,1,0.1\n")
    assert draw_learning_curves(metrics, tmp_path / "none.png", "val/acc") is None
    assert not (tmp_path / "none.png").exists()
