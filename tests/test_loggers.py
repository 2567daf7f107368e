"""The CSV logger survives ddp_spawn: each spawned stage unpickles it after another process wrote the file."""

import csv
import pickle

from lightdist.loggers import ContinuingCSVLogger


def test_unpickled_csv_writer_reads_columns_written_meanwhile(tmp_path):
    main = ContinuingCSVLogger(save_dir=str(tmp_path), name="", version="")
    main.log_hyperparams({"lr": 0.1})  # the main process creates the writer before any stage runs
    fit = pickle.loads(pickle.dumps(main))  # the process that fits
    fit.log_metrics({"train/loss": 1.0}, step=0)
    fit.log_metrics({"val/acc": 0.5}, step=1)
    fit.save()
    test = pickle.loads(pickle.dumps(main))  # the process that tests, from the main process's copy
    test.log_metrics({"test/acc": 0.7}, step=1)
    test.save()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["train/loss"] for r in rows] == ["1.0", "", ""]
    assert [r["val/acc"] for r in rows] == ["", "0.5", ""]
    assert [r["test/acc"] for r in rows] == ["", "", "0.7"]
