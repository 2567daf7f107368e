"""Hyperparameter search and k-fold: search-space parsing, folds, pruning, summaries, and real sweeps."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lightdist.compat import trial_id
from lightdist.data.splits import KFold, stratified_folds
from lightdist.errors import ConfigError
from lightdist.sweeps import search_space, summary
from tests.helpers.cli import QUIET, read_summary, run_cli

TINY = ["+experiment=fashion_mnist_cnn", "data.train_subset=384", "data.val_subset=192", "data.test_subset=192",
        "data.augment=null", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", *QUIET]


# -- units ------------------------------------------------------------------------------------------
def test_search_space_from_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dims, fixed = search_space.parse(["optimizer.lr=tag(log,interval(1e-4,1e-1))", "model.dropout=interval(0,0.5)",
                                      "model.hidden=tag(int,interval(16,128))", "data.batch_size=range(32,257,32)",
                                      "optimizer=adamw,sgd", "trainer.max_epochs=3"])
    space = {d.key: d.distribution for d in dims}
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert space["model.hidden"] == IntDistribution(16, 128)
    assert space["data.batch_size"] == IntDistribution(32, 256, step=32)
    assert space["optimizer"] == CategoricalDistribution(["adamw", "sgd"])
    assert fixed == ["trainer.max_epochs=3"]
    assert dims[0].as_override(0.00123) == "optimizer.lr=0.00123"
    with pytest.raises(ConfigError, match="low > 0"):
        search_space.parse(["optimizer.lr=tag(log,interval(0,1))"])
    with pytest.raises(ConfigError, match="twice"):
        search_space.parse(["optimizer.lr=interval(0.1,1)", "optimizer.lr=0.1,0.2"])


def test_stratified_folds_partition_every_class_evenly():
    labels = np.repeat(np.arange(4), [50, 31, 12, 7])
    folds = stratified_folds(labels, k=5, seed=3)
    assert set(folds) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1  # fold sizes differ by one at most
    for cls in range(4):
        per_fold = np.bincount(folds[labels == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1  # each class spread evenly
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=3))  # same seed, same folds
    vals = [KFold(5, i).split(labels, seed=3)[1] for i in range(5)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(labels)))  # every sample validates once
    train, val = KFold(5, 2).split(labels, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    with pytest.raises(ValueError, match="k >= 2"):
        KFold(1)
    with pytest.raises(ValueError, match="0 <= fold < k"):
        KFold(3, 3)


def test_pruning_callback_stops_every_rank_on_the_pruners_verdict(tmp_path):
    import optuna

    from lightdist.callbacks.optuna_pruning import OptunaPruning
    from lightdist.sweeps.study import PRUNER_ATTR, make_pruner, open_storage

    storage = str(tmp_path / "study.journal")
    pruner = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize",
                                pruner=make_pruner(pruner))
    study.set_user_attr(PRUNER_ATTR, pruner)  # as the sweeper records it for the trials' runs
    for _ in range(3):  # finished trials that reached 0.9 at step 10
        trial = study.ask()
        trial.report(0.9, step=10)
        study.tell(trial, 0.9)
    running = study.ask()

    def trainer(value, rank0=True):
        import torch

        return SimpleNamespace(sanity_checking=False, is_global_zero=rank0, global_step=10, should_stop=False,
                               callback_metrics={"val/acc": torch.tensor(value)},
                               strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))

    good = OptunaPruning(storage, "s", trial_id(running), "val/acc")
    t = trainer(0.95)
    good.on_validation_end(t, None)
    assert not t.should_stop and good.pruned_at_step is None
    bad = OptunaPruning(storage, "s", trial_id(study.ask()), "val/acc")
    t = trainer(0.1)
    bad.on_validation_end(t, None)
    assert t.should_stop and bad.pruned_at_step == 10
    reloaded = optuna.load_study(study_name="s", storage=open_storage(storage))
    assert reloaded.trials[-1].intermediate_values == {10: pytest.approx(0.1)}


def test_summary_ranks_runs_and_aggregates_folds(tmp_path):
    def run(name, overrides, best, test, pruned=False):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if best is not None:
            (folder / "summary.json").write_text(json.dumps({
                "monitor": "val/acc", "best_score": best, "validation": {"val/acc": best - 0.01},
                "test": {"test/acc": test}, "pruned": pruned, "epochs": 2, "wall_time_s": 1.0}))

    run("0", ["seed=1", "optimizer.lr=0.1", "data.kfold.fold=0"], 0.80, 0.70)
    run("1", ["seed=1", "optimizer.lr=0.1", "data.kfold.fold=1"], 0.90, 0.80)
    run("2", ["seed=1", "optimizer.lr=0.01", "data.kfold.fold=0"], 0.95, 0.90)
    run("3", ["seed=1", "optimizer.lr=0.01", "data.kfold.fold=1"], None, None)  # failed: no summary
    csv_path, md_path = summary.write(tmp_path, "val/acc", "max")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["job"] for r in rows] == ["2", "1", "0", "3"]  # best first, failed last
    assert rows[-1]["status"] == "failed"
    assert "seed" not in rows[0]  # the same in every run: not a column
    cv = json.loads((tmp_path / "cv_summary.json").read_text())
    lr01 = next(e for e in cv if e["overrides"]["optimizer.lr"] == "0.1")
    assert lr01["val/acc"]["mean"] == pytest.approx(0.85)
    assert lr01["val/acc"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert lr01["test/acc"]["per_fold"] == [0.7, 0.8]
    assert "Cross-validation" in md_path.read_text()
    ascending = summary.write(tmp_path, "val/acc", "min")[0]
    assert [r["job"] for r in csv.DictReader(ascending.open())][:3] == ["0", "1", "2"]


# -- real sweeps ------------------------------------------------------------------------------------
def _sweep_dir(cwd: Path, name: str = "fashion_mnist_cnn") -> Path:
    (folder,) = (cwd / "outputs" / name).glob("multirun-*")
    return folder


@pytest.mark.slow
def test_grid_multirun_writes_the_summary_table(workdir):
    run_cli(["-m", *TINY, "optimizer.lr=0.003,0.0001"], cwd=workdir)
    folder = _sweep_dir(workdir)
    rows = list(csv.DictReader((folder / "sweep_summary.csv").open()))
    assert len(rows) == 2 and {r["optimizer.lr"] for r in rows} == {"0.003", "0.0001"}
    objective = [float(r["objective (val/acc, max)"]) for r in rows]
    assert objective == sorted(objective, reverse=True)
    for row in rows:  # the objective is each run's best validation score
        assert float(row["objective (val/acc, max)"]) == pytest.approx(read_summary(folder / row["job"])["best_score"])


@pytest.mark.slow
def test_optuna_search_with_pruning_reports_every_trial(workdir):
    import optuna

    from lightdist.sweeps.study import open_storage

    run_cli([*TINY, "hparams_search=fashion_mnist_cnn", "hydra.sweeper.n_trials=3",
             "hydra.sweeper.n_startup_trials=1"], cwd=workdir)
    folder = _sweep_dir(workdir)
    results = yaml.safe_load((folder / "optuna_results.yaml").read_text())
    assert sum(results["trials"].values()) == 3 and results["trials"]["fail"] == 0
    rows = list(csv.DictReader((folder / "sweep_summary.csv").open()))
    assert len(rows) == 3 and {"optimizer.lr", "model.dropout", "data.batch_size"} <= set(rows[0])
    study = optuna.load_study(study_name="fashion_mnist_cnn", storage=open_storage(str(folder / "optuna.journal")))
    assert all(t.intermediate_values for t in study.trials)  # each run reported to its trial (pruning)
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert results["best_value"] == max(t.value for t in completed)
    best_row = next(r for r in rows if r["status"] == "completed")
    assert float(best_row["objective (val/acc, max)"]) == pytest.approx(results["best_value"])


@pytest.mark.slow
def test_optuna_trials_run_as_ddp_jobs(workdir):
    run_cli([*TINY, "trainer=cpu_ddp", "hydra/sweeper=optuna", "-m", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.sampler=random", "optimizer.lr=tag(log,interval(1e-4,1e-2))", "trainer.max_epochs=1"],
            cwd=workdir)
    folder = _sweep_dir(workdir)
    jobs = sorted(p for p in folder.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert read_summary(job)["world_size"] == 2
    assert yaml.safe_load((folder / "optuna_results.yaml").read_text())["trials"]["complete"] == 2


@pytest.mark.slow
def test_kfold_runs_every_fold_and_reports_mean_and_std(workdir):
    run_cli([*TINY, "data.kfold.k=3", "trainer.max_epochs=1", "test_after_fit=false"], cwd=workdir)
    folder = _sweep_dir(workdir)
    folds = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(folds) == 3
    for i, fold in enumerate(folds):
        assert f"data.kfold.fold={i}" in yaml.safe_load((fold / ".hydra" / "overrides.yaml").read_text())
    (cv,) = json.loads((folder / "cv_summary.json").read_text())
    assert cv["folds"] == cv["completed"] == 3 and len(cv["val/acc"]["per_fold"]) == 3
    assert cv["val/acc"]["mean"] == pytest.approx(np.mean(cv["val/acc"]["per_fold"]))
    assert "+-" in (folder / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_optuna_trial_is_scored_by_the_mean_over_folds(workdir):
    run_cli([*TINY, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "data.kfold.k=2",
             "optimizer.lr=tag(log,interval(1e-3,1e-2))", "trainer.max_epochs=1", "test_after_fit=false"], cwd=workdir)
    folder = _sweep_dir(workdir)
    folds = [read_summary(folder / str(i))["best_score"] for i in range(2)]
    results = yaml.safe_load((folder / "optuna_results.yaml").read_text())
    assert results["trials"]["complete"] == 1
    assert results["best_value"] == pytest.approx(np.mean(folds))


def test_bad_sweeper_options_and_folders_are_clear_errors(tmp_path):
    from lightdist.commands.sweep import summarize_runs
    from lightdist.sweeps.optuna_search import OptunaSearch

    for options, message in (({"direction": "up"}, "maximize or minimize"), ({"sampler": "cmaes"}, "tpe, random, grid"),
                             ({"pruner": "asha"}, "none, median, hyperband"), ({"n_trials": 0}, "at least 1")):
        with pytest.raises(ConfigError, match=message):
            OptunaSearch(**options)
    assert OptunaSearch(direction="min").direction == "minimize"
    dims, _ = search_space.parse(["optimizer.lr=interval(0.1,1)"])
    with pytest.raises(ConfigError, match="cannot enumerate optimizer.lr"):
        OptunaSearch(sampler="grid")._sampler(dims)
    with pytest.raises(ConfigError, match="is not a directory"):
        summarize_runs(str(tmp_path / "missing"), [])
    with pytest.raises(ConfigError, match="no run directories"):
        summarize_runs(str(tmp_path), [])


# -- the sweeper under the install the tests run against ---------------------------------------------
def _installed_lightdist(cwd: Path) -> tuple[Path, bool]:
    """The lightdist a fresh interpreter outside the checkout imports, and whether pip installed it editable."""
    import subprocess
    import sys

    from tests.helpers.cli import cli_env

    probe = ("import importlib.metadata as m, json, lightdist; "
             "print(json.dumps([lightdist.__file__, m.distribution('lightdist').read_text('direct_url.json')]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                         check=True)
    module, direct_url = json.loads(out.stdout)
    return Path(module).resolve(), json.loads(direct_url or "{}").get("dir_info", {}).get("editable", False)


@pytest.mark.slow
def test_optuna_sweeper_is_found_under_this_install(workdir):
    """Hydra finds plugins by listing the directories of hydra_plugins, which `pip install -e .` hides behind
    an import hook, so lightdist registers its sweeper itself. CI runs this against a wheel and against an
    editable install and says which in LIGHTDIST_TEST_INSTALL: checked first, so each run proves its claim."""
    import os

    from tests.helpers.cli import REPO

    module, editable = _installed_lightdist(workdir)
    from_checkout = module == (REPO / "lightdist" / "__init__.py").resolve()
    expected = os.environ.get("LIGHTDIST_TEST_INSTALL")
    if expected == "editable":
        assert editable and from_checkout, f"{module} is not an editable install of {REPO}"
    elif expected == "wheel":
        assert not editable and not from_checkout, f"{module} is not a wheel's copy"
    else:
        assert expected is None, f"LIGHTDIST_TEST_INSTALL={expected}: name wheel or editable"
    run_cli([*TINY, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "trainer.max_epochs=1",
             "optimizer.lr=tag(log,interval(1e-3,1e-2))", "test_after_fit=false"], cwd=workdir)
    results = yaml.safe_load((_sweep_dir(workdir) / "optuna_results.yaml").read_text())
    assert results["trials"]["complete"] == 1
