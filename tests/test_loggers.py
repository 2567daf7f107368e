"""The CSV logger survives ddp_spawn and ddp_fork: each stage runs in new processes holding a copy of
the main process's logger, made before another process wrote the file."""

import csv
import pickle

import pytest

from lightdist.loggers import ContinuingCSVLogger


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_a_stale_copy_of_the_csv_writer_keeps_columns_written_meanwhile(tmp_path, start):
    main = ContinuingCSVLogger(save_dir=str(tmp_path), name="", version="")
    main.log_hyperparams({"lr": 0.1})  # the main process creates the writer before any stage runs
    fit = pickle.loads(pickle.dumps(main))  # the process that fits
    fit.log_metrics({"train/loss": 1.0}, step=0)
    fit.log_metrics({"val/acc": 0.5}, step=1)
    fit.save()
    # the process that tests: unpickled from (spawn) or inheriting (fork) the main process's state
    test = pickle.loads(pickle.dumps(main)) if start == "spawn" else main
    test.log_metrics({"test/acc": 0.7}, step=1)
    test.save()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["train/loss"] for r in rows] == ["1.0", "", ""]
    assert [r["val/acc"] for r in rows] == ["", "0.5", ""]
    assert [r["test/acc"] for r in rows] == ["", "", "0.7"]
