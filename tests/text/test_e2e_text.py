"""End-to-end text classification: the real CLI in subprocesses, on real BBC News and on AG News
files written here in the canonical format; prediction from the saved run; bad input."""

import json

import numpy as np
import pytest
import torch

from tests.helpers.cli import QUIET, cli_env, read_summary, run_cli, run_dirs
from tests.helpers.data import SHARED_DATA, needs_bbc
from tests.helpers.text_files import write_ag_news

BBC_SMALL = ["+experiment=bbc_news_fasttext", "data.train_subset=500", "data.val_subset=100", "data.test_subset=150",
             "data.tokenizer.max_length=128", "data.tokenizer.vocab_size=4000", "model.buckets=20000",
             "optimizer.lr=0.05", "trainer.max_epochs=3", "trainer.log_every_n_steps=5", *QUIET]


@needs_bbc
def test_one_process_on_real_bbc_news_then_predict_matches_the_test_loop(workdir):
    run_cli(BBC_SMALL, cwd=workdir, env=cli_env(LIGHTDIST_DATA=str(SHARED_DATA)))  # an accuracy floor: real articles
    (run_dir,) = run_dirs(workdir, "bbc_news_fasttext")
    for name in ("config.yaml", "summary.json", "metrics.csv", "confusion_matrix.png", "tokenizer.json",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name
    summary = read_summary(run_dir)
    assert summary["test"]["test/acc"] > 0.85, summary  # 500 real articles, 3 short epochs: topics are learnt
    confusion = torch.load(run_dir / "confusion_matrix.pt")
    assert int(confusion.sum()) == 150

    # lightdist eval reloads the run: the same test predictions as the test after fit, from the cached token ids
    cached = {p: p.stat().st_mtime_ns for p in (run_dir / "cache" / "tokens").glob("*/*")}
    assert len(cached) == 2 * 3  # ids and offsets of train, val and test
    run_cli(["eval", f"run_dir={run_dir}", "trainer.enable_progress_bar=false"], cwd=workdir)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "cache" / "tokens").glob("*/*")} == cached
    (report_file,) = (run_dir / "eval").glob("*_test/report.json")
    report = json.loads(report_file.read_text())
    assert report["confusion_matrix"]["counts"] == confusion.tolist()
    assert report["accuracy"] == pytest.approx(summary["test"]["test/acc"], abs=1e-5)

    # the checkpoint alone carries the vocabulary: predict on the raw test texts, re-read from the corpus
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightdist.predict import predict

    cfg = OmegaConf.load(run_dir / "config.yaml")
    dm = instantiate(cfg.data)
    texts, labels = dm.splits()["test"]
    texts = texts.to_pylist()
    (run_dir / "tokenizer.json").unlink()  # prediction must not need it (nor the training data)
    predictions = predict(run_dir, texts, ckpt="best")
    names = dm.class_names
    predicted = np.array([names.index(p.label) for p in predictions])
    mine = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(mine, (labels, predicted), 1)
    assert np.array_equal(mine, confusion.numpy()), (mine, confusion)
    assert all(abs(sum(p.probs.values()) - 1) < 1e-5 and max(p.probs, key=p.probs.get) == p.label
               for p in predictions)

    # the CLI: JSON lines with the same answer as the Python function
    proc = run_cli(["predict", f"run_dir={run_dir}", f"text={texts[0]}", "text=", "ckpt=best"], cwd=workdir)
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["input"] for line in lines] == [texts[0], ""]
    assert lines[0]["label"] == predictions[0].label and set(lines[1]["probs"]) == set(names)
    assert lines[0]["probs"][predictions[0].label] == pytest.approx(predictions[0].probs[predictions[0].label],
                                                                     abs=1e-5)


def test_two_gloo_processes_on_ag_news_files(workdir):
    """The BiLSTM (packed sequences) under DDP, length-bucketed batches sharded over 2 ranks."""
    write_ag_news(workdir / "data", train_per_class=60, test_per_class=15)
    run_cli(["+experiment=ag_news_bilstm", "trainer=cpu_ddp", f"data.corpus.root={workdir / 'data'}",
             "data.corpus.download=false", "data.val_size=40", "data.batch_size=8", "data.tokenizer.vocab_size=300",
             "data.tokenizer.max_length=48", "model.embed_dim=16", "model.hidden=16", "optimizer.lr=0.02",
             "trainer.max_epochs=3", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "ag_news_bilstm")
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2
    # synced metrics over unpadded shards: each of the 60 test rows counted exactly once
    assert int(torch.load(run_dir / "confusion_matrix.pt").sum()) == 60
    assert summary["test"]["test/acc"] > 0.6, summary  # each class has its own topic words
    assert json.loads((run_dir / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
    assert [p.name for p in (workdir / "outputs" / "ag_news_bilstm").iterdir()] == [run_dir.name]


def test_bad_text_input_is_one_line_and_nothing_is_created(workdir):
    """Through the real CLI; every kind of bad input is covered in test_text_data.py."""
    data = workdir / "reviews.csv"
    data.write_bytes("text,label\ngood,pos\nna\u00efve but fine,neg\n".encode("latin-1"))
    before = data.read_bytes()
    proc = run_cli(["data=text_table", f"data.corpus.train={data}", "task=text_classification", "model=text_cnn",
                    "trainer.max_steps=1", *QUIET], cwd=workdir, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lightdist: error:") and "reviews.csv: line 3 is not valid utf-8" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "outputs").exists() and data.read_bytes() == before
