"""Optimising trained models: pruning (after and during training), int8 quantisation, export with parity
checks, the exported-model runner, and the command's errors.

Unit tests build models directly; one tiny Fashion-MNIST run (trained with the pruning callback) and
one tiny BBC News BiLSTM run, both on the generated stand-ins of those datasets, each made once per
module by the CLI in a subprocess, serve the end-to-end tests.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightdist.callbacks.pruning import SparsitySchedule
from lightdist.errors import ConfigError
from lightdist.optimize import export as ex
from lightdist.optimize import prune, quantize
from lightdist.optimize.batches import agreement
from lightdist.text.models.rnn import RNNClassifier
from lightdist.text.models.transformer import TransformerClassifier
from lightdist.vision.models.cnn import SimpleCNN
from tests.helpers.cli import QUIET, cli_env, run_cli, run_dirs

# Small and quick: no compilation, few timed calls, a few hundred test samples.
FAST = ["latency.compile=false", "latency.runs=3", "latency.warmup=1", "latency.batch_size=32",
        "quantize.calibration_batches=4"]


def tokens_batch(batch: int, length: int, vocab: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    tokens = torch.randint(1, vocab, (batch, length), generator=g)
    tokens[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


# -- pruning ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [0.3, 0.8])
def test_global_l1_pruning_reaches_the_requested_sparsity_and_is_permanent(amount):
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[8, 16], hidden=32)
    prune.prune_model(model, prune.PruneOptions("l1_unstructured", amount))
    stats = prune.sparsity(model)
    assert stats["weights"] == pytest.approx(amount, abs=1e-3)
    assert set(stats["layers"]) == {name for name, _, _ in prune.prunable_weights(model)}
    # permanent: plain parameters, no masks, no forward pre-hooks left by torch.nn.utils.prune
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert not [n for n in names if n.endswith(("_orig", "_mask"))]
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not [k for k in model.state_dict() if "mask" in k]


def test_channel_pruning_zeroes_whole_output_channels_of_every_layer_but_the_output():
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[8, 16], hidden=32)
    prune.prune_model(model, prune.PruneOptions("channels", 0.25, norm=2))
    last = prune.output_layer(model)
    for name, module in model.named_modules():
        if isinstance(module, prune._CHANNEL_LAYERS):
            zero_rows = int((module.weight.flatten(1).abs().sum(1) == 0).sum())
            assert zero_rows == (0 if name == last else round(0.25 * module.weight.shape[0])), name
    assert prune.sparsity(model)["channels"] == pytest.approx(0.25, abs=0.01)


def test_sparsity_schedule_composes_to_the_final_sparsity():
    schedule = SparsitySchedule(final=0.7, start_epoch=1, end_epoch=4)
    remaining = 1.0
    for epoch in range(8):
        remaining *= 1.0 - schedule(epoch)
        assert 1.0 - remaining == pytest.approx(schedule.sparsity(epoch))
    assert 1.0 - remaining == pytest.approx(0.7)
    assert schedule(0) == 0.0 and schedule(5) == 0.0
    with pytest.raises(ConfigError):
        SparsitySchedule(final=1.5)


# -- quantisation and export, unit level --------------------------------------------------------------
def test_static_quantisation_of_an_lstm_is_refused_with_the_fix():
    model = RNNClassifier(300, 4, embed_dim=8, hidden=8)
    with pytest.raises(ConfigError, match="quantize.method=dynamic"):
        quantize.resolve_method(model, "static")
    assert quantize.resolve_method(model, "auto") == "dynamic"
    assert quantize.resolve_method(SimpleCNN(1, 10, 28, channels=[4], hidden=8), "auto") == "static"


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_export_of_a_packed_sequence_lstm_falls_back_and_matches_on_other_shapes(tmp_path, fmt):
    model = RNNClassifier(300, 4, embed_dim=16, hidden=16).eval()
    example = tokens_batch(6, 20)
    exported = (ex.export_onnx(model, example, tmp_path / "model.onnx") if fmt == "onnx"
                else ex.export_program(model, example, tmp_path))
    assert "torchscript" in exported.exporter and exported.fallback_reason  # torch.export refuses packed sequences
    loaded = ex.load_exported(exported.path)
    data = [(tokens_batch(b, n, seed=b), None) for b, n in [(3, 35), (9, 7), (1, 12)]]
    parity = agreement(model, loaded, data)
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["top1_agreement"] == 1.0


def test_parity_check_catches_an_export_that_froze_a_length(tmp_path):
    # The transformer slices to the longest text; the TorchScript exporter records that slice as a constant.
    model = TransformerClassifier(300, 4, max_length=64, d_model=16, heads=2, layers=1, ff_dim=32).eval()
    exported = ex.export_onnx(model, tokens_batch(4, 10), tmp_path / "model.onnx")
    parity = agreement(model, ex.load_exported(exported.path), [(tokens_batch(4, 40, seed=3), None)])
    assert parity["max_abs_logit_diff"] > 1e-4


# -- end to end: Fashion-MNIST CNN trained with pruning, then optimized --------------------------------
@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("fashion")
    run_cli(["+experiment=fashion_mnist_cnn", "callbacks=[default,pruning]", "callbacks.pruning.amount.final=0.3",
             "callbacks.pruning.amount.end_epoch=0", "trainer.max_epochs=2", "data.train_subset=2000",
             "data.val_subset=300", "data.test_subset=500", "model.channels=[16,32]", "model.hidden=64", *QUIET],
            cwd=cwd)
    (run_dir,) = run_dirs(cwd, "fashion_mnist_cnn")
    proc = run_cli(["optimize", f"run_dir={run_dir}", "prune.amount=0.6", *FAST], cwd=cwd)
    (folder,) = (run_dir / "optimized").iterdir()
    return run_dir, folder, json.loads((folder / "report.json").read_text()), proc


def test_pruning_during_training_ends_at_the_requested_sparsity(fashion_run):
    from lightdist.runs import load_run

    run_dir, _, report, _ = fashion_run
    model = load_run(run_dir, "last").model
    assert prune.sparsity(model)["weights"] == pytest.approx(0.3, abs=1e-3)
    # what optimize measured before its own pruning is the trained (already pruned) model
    assert report["float"]["sparsity"]["weights"] == pytest.approx(0.3, abs=1e-3)


def test_optimize_prunes_quantizes_and_exports_a_cnn(fashion_run):
    run_dir, folder, report, proc = fashion_run
    assert folder.parent == run_dir / "optimized"
    for name in ("report.json", "report.md", "pruned.ckpt", "model_int8.pt2", "model.onnx", "model.pt2",
                 "model.json", "samples.npz"):
        assert (folder / name).is_file(), name
    assert report["prune"]["sparsity"]["weights"] == pytest.approx(0.6, abs=1e-3)
    assert report["float"]["accuracy"] > 0.6 and report["prune"]["accuracy"] > 0.5
    # the saved pruned checkpoint loads as a normal one and keeps its zeros
    from lightdist.runs import load_run

    assert prune.sparsity(load_run(run_dir, str(folder / "pruned.ckpt")).model)["weights"] == pytest.approx(0.6, abs=1e-3)
    q = report["quantize"]
    assert q["method"] == "static"
    # int8 vs float predictions on 500 generated test images. int8 rounding moves logits by up to ~0.1 here,
    # which dwarfs any CPU or thread-count difference of the float reference (~1e-6); measured 1.0 (0.998 on
    # the real images, whose top-2 gaps are far smaller). A wrong scale or calibration falls far below.
    assert q["agreement"]["top1_agreement"] >= 0.97
    assert abs(q["accuracy"] - report["prune"]["accuracy"]) <= 0.03
    assert q["size_bytes"] < 0.35 * report["prune"]["size_bytes"]  # int8 weights: about a quarter
    # 1e-4 from the float32 rounding scale of these logits (|logit| < 10): the same model in float64
    # differs from float32 by 1.3e-6 (1 thread) to 1.5e-6 (2 threads), and any float32 implementation
    # (ONNX Runtime's kernels on any x86-64: measured 2.9e-6; torch.export: 0) lies within a few times
    # that of the exact logits. Top-2 gaps are far wider (0.75 at the smallest of the saved samples here,
    # 5e-3 of all real test images), so no prediction can flip either.
    # A faulty export (a frozen shape, a lost normalisation) misses by orders of magnitude.
    for fmt in ("onnx", "torch_export"):
        entry = report["export"][fmt]
        assert entry["parity_ok"] and entry["parity"]["max_abs_logit_diff"] < 1e-4, entry
    md = (folder / "report.md").read_text()
    assert "| float |" in md and "int8 static" in md and "latency single" in md
    assert "written to" in proc.stdout


def test_runner_predicts_raw_images_and_checks_the_saved_samples(fashion_run, generated_data):
    _, folder, _, _ = fashion_run
    for model in ("model.onnx", "model.pt2"):
        proc = subprocess.run([sys.executable, "-m", "lightdist.optimize.run_exported", str(folder / model)],
                              capture_output=True, text=True, env=cli_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "max |logit - PyTorch logit|" in proc.stderr
    images = generated_data / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    proc = subprocess.run([sys.executable, "-m", "lightdist.optimize.run_exported", str(folder / "model.onnx"),
                           "--images", str(images), "--limit", "5"], capture_output=True, text=True, env=cli_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 5 and all(0 < line["prob"] <= 1 and isinstance(line["label"], str) for line in lines)


def optimize_error(argv: list[str], capsys) -> str:
    """The one line `lightdist optimize` prints for a mistake (run in this process: no start-up cost)."""
    from lightdist.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lightdist: error:"), err
    return err[-1]


def test_optimize_never_overwrites_and_errors_are_one_line(fashion_run, tmp_path, capsys):
    run_dir, folder, _, _ = fashion_run
    cases = [
        ([f"run_dir={tmp_path / 'nowhere'}"], "does not exist"),
        (["ckpt=last"], "optimize needs run_dir="),
        ([f"run_dir={run_dir}", f"output_dir={folder}"], "already exists; optimize never overwrites"),
        ([f"run_dir={run_dir}", "ckpt=missing.ckpt"], "does not exist"),
        ([f"run_dir={run_dir}", "steps=[distill]"], "choose from prune, quantize, export"),
        ([f"run_dir={run_dir}", "prune.amount=1.5"], "must be a fraction"),
        ([f"run_dir={run_dir}", "prune.method=random"], "prune.method"),
    ]
    for args, expected in cases:
        assert expected in optimize_error(args, capsys), args
    assert sorted(p.name for p in (run_dir / "optimized").iterdir()) == [folder.name]  # nothing left behind


# -- end to end: BBC News BiLSTM, dynamic int8 --------------------------------------------------------
@pytest.fixture(scope="module")
def bbc_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bbc")
    run_cli(["+experiment=bbc_news_bilstm", "data.train_subset=400", "data.val_subset=100", "data.test_subset=200",
             "data.tokenizer.max_length=64", "data.tokenizer.vocab_size=3000", "model.embed_dim=32",
             "model.hidden=32", "optimizer.lr=0.02", "trainer.max_epochs=3", *QUIET], cwd=cwd)
    (run_dir,) = run_dirs(cwd, "bbc_news_bilstm")
    return cwd, run_dir


def test_dynamic_int8_lstm_agrees_with_float_and_exports_match(bbc_run):
    cwd, run_dir = bbc_run
    run_cli(["optimize", f"run_dir={run_dir}", "steps=[quantize,export]", *FAST], cwd=cwd)
    (folder,) = (run_dir / "optimized").iterdir()
    report = json.loads((folder / "report.json").read_text())
    q = report["quantize"]
    assert q["method"] == "dynamic" and q["file"] == "model_int8_dynamic.pt"
    assert q["agreement"]["top1_agreement"] >= 0.95  # on 200 generated test articles
    assert abs(q["accuracy"] - report["float"]["accuracy"]) <= 0.05
    assert q["size_bytes"] < report["float"]["size_bytes"]
    for entry in report["export"].values():
        assert entry["parity_ok"] and "torchscript" in entry["exporter"], entry
    # the runner takes pre-encoded inputs: the saved samples (tokens and lengths)
    proc = subprocess.run([sys.executable, "-m", "lightdist.optimize.run_exported", str(folder / "model.onnx")],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    samples = np.load(folder / "samples.npz")
    assert len(proc.stdout.splitlines()) == len(samples["logits"])
    encoded = folder.parent / "encoded.npz"  # token ids and lengths, as an application would encode them
    np.savez(encoded, input0=samples["input0"][:3], input1=samples["input1"][:3])
    proc = subprocess.run([sys.executable, "-m", "lightdist.optimize.run_exported", str(folder / "model.torchscript.pt"),
                           "--inputs", str(encoded)], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = samples["logits"][:3].argmax(1)
    labels = json.loads((folder / "model.json").read_text())["class_names"]
    assert [json.loads(line)["label"] for line in proc.stdout.splitlines()] == [labels[i] for i in expected]


def test_static_quantisation_of_the_bilstm_run_is_one_line(bbc_run, capsys):
    _, run_dir = bbc_run
    err = optimize_error([f"run_dir={run_dir}", "quantize.method=static"], capsys)
    assert "static int8 quantisation has no LSTM kernels" in err and "quantize.method=dynamic" in err
