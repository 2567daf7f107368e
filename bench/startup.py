"""Start-up: seconds from the command to the end of the first optimizer step, with the real CLI.

A tiny default image run (Fashion-MNIST, the quickstart CNN, one optimizer step) as 1 process
and as a 2-process CPU DDP run (trainer=cpu_ddp trainer.devices=2 threads_per_rank=1),
alternating, several rounds; the median of each. A probe callback (bench/startup_probe.py) has
every rank write when its process started, when its Trainer was built, when Lightning's setup
ran (process group up, data set up), when training started and when the first step ended; with
the mtime of the run's config.yaml (written by rank 0 once composed and checked) these give the
phases. Each case runs side by side each round: as lightdist starts (lean) and with
LIGHTDIST_FULL_IMPORTS=1, which keeps the imports lightdist leaves out (torchmetrics' scipy and
transformers); the 2-process run also with LIGHTDIST_EARLY_RANKS=0 (rank 1 started by Lightning when
rank 0 reaches fit, instead of by rank 0 once its config is composed). Also: the 25 imports with the largest cumulative time of the 1-process run under
`python -X importtime`, seconds of import per package, and which unneeded packages it loaded.

    python bench/startup.py                 # 3 rounds
    python bench/startup.py --rounds 5
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, REPO, write_result  # noqa: E402

TINY = ["data.train_subset=64", "data.val_subset=32", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "test_after_fit=false", "trainer.enable_progress_bar=false"]
MODES = {"1 process": [], "2-process DDP": ["trainer=cpu_ddp", "trainer.devices=2", "threads_per_rank=1"]}
# Packages a default image run does not need; `loaded` in the results says which ones it imported.
HEAVY = ("scipy", "matplotlib", "transformers", "deepspeed", "optuna", "wandb", "tensorboard", "sklearn", "pandas",
         "pyarrow", "timm", "datasets", "gymnasium")


# Side by side: as lightdist starts, and with torchmetrics' optional imports (scipy, transformers) kept;
# the 2-process run also with its rank 1 started by Lightning at fit instead of early by rank 0.
VARIANTS = {"lean": {}, "full imports": {"LIGHTDIST_FULL_IMPORTS": "1"},
            "early ranks off": {"LIGHTDIST_EARLY_RANKS": "0"}}
CASES = [(m, v) for m in MODES for v in VARIANTS if v != "early ranks off" or m != "1 process"]
# (mode, variant, the variant it is compared with): per-round ratios of the first-step times.
RATIOS = [("1 process", "lean", "full imports"), ("2-process DDP", "lean", "full imports"),
          ("2-process DDP", "lean", "early ranks off")]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, LIGHTDIST_DATA=str(DATA), WANDB_MODE="offline", PYTHONPATH=str(REPO))  # the probe
    e.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: compiled modules cached
    e.pop("LIGHTDIST_FULL_IMPORTS", None)
    e.pop("LIGHTDIST_EARLY_RANKS", None)
    return {**e, **extra}


def timed_run(extra: list[str], variables: dict[str, str]) -> dict:
    """One run; moments (seconds after the command started) of each rank's start-up."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        args = [*TINY, *extra, "+callbacks.startup_probe._target_=bench.startup_probe.StartupProbe",
                f"+callbacks.startup_probe.path={probe}"]
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "lightdist", *args], cwd=tmp, env=env(**variables),
                              capture_output=True, text=True)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"lightdist {' '.join(args)} failed:\n{proc.stderr[-5000:]}")
        (config,) = [p for p in (Path(tmp) / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
        ranks = sorted(Path(tmp).glob("probe.*.json"))
        moments = [{k: round(v - started, 3) for k, v in json.loads(p.read_text()).items() if v is not None}
                   for p in ranks]
        return {"first_step_s": round(max(m["first_step"] for m in moments), 3),
                "job_config_saved_s": round(config.stat().st_mtime - started, 3),
                "ranks": moments, "command_s": round(ended - started, 3)}


def phases(run: dict) -> dict[str, float]:
    """Where the time to the first step went (seconds; rank 0 unless named)."""
    r0, rest = run["ranks"][0], run["ranks"][1:]
    out = {"imports, compose, checks (to the job config)": run["job_config_saved_s"],
           "data module, task, Trainer built": r0["trainer_built"] - run["job_config_saved_s"]}
    if rest:
        r1 = rest[0]
        out["rank 1 started (after the command)"] = r1.get("started", float("nan"))
        out["rank 1: its start to its Trainer built"] = r1["trainer_built"] - r1.get("started", float("nan"))
        out["rank 1's Trainer built after rank 0's"] = r1["trainer_built"] - r0["trainer_built"]
        out["process group and data set up (last rank)"] = max(r["setup"] for r in run["ranks"]) - max(
            r0["trainer_built"], r1["trainer_built"])
    else:
        out["data set up"] = r0["setup"] - r0["trainer_built"]
    out["model wrapped, to training start"] = max(r["train_start"] for r in run["ranks"]) - max(
        r["setup"] for r in run["ranks"])
    out["first step"] = run["first_step_s"] - max(r["train_start"] for r in run["ranks"])
    return {k: round(v, 3) for k, v in out.items()}


def import_table(top: int = 25) -> dict:
    """`python -X importtime` of the 1-process run: the imports with the largest cumulative time,
    seconds of import per top-level package, and which of HEAVY were loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lightdist", *TINY], cwd=tmp, env=env(),
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lightdist failed:\n{proc.stderr[-5000:]}")
    rows, per_package = [], Counter()
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            self_us, cumulative_us, indent, name = match.groups()
            rows.append((int(cumulative_us) / 1e6, int(self_us) / 1e6, (len(indent) - 1) // 2, name))
            per_package[name.split(".")[0]] += int(self_us) / 1e6
    loaded = {name.split(".")[0] for *_, name in rows}
    return {"top_cumulative": [{"module": n, "cumulative_s": round(c, 3), "self_s": round(s, 3), "depth": d}
                               for c, s, d, n in sorted(rows, reverse=True)[:top]],
            "per_package_s": {k: round(v, 3) for k, v in per_package.most_common(20)},
            "total_import_s": round(sum(per_package.values()), 3),
            "loaded": sorted(loaded.intersection(HEAVY))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-importtime", action="store_true", help="skip the importtime table")
    args = parser.parse_args()

    table = None if args.no_importtime else import_table()
    if table:
        print(f"python -X importtime -m lightdist {' '.join(TINY)}: {table['total_import_s']:.2f} s of imports")
        print(f"{'cumulative s':>12} {'self s':>7}  module")
        for row in table["top_cumulative"]:
            print(f"{row['cumulative_s']:12.3f} {row['self_s']:7.3f}  {'  ' * row['depth']}{row['module']}")
        print("seconds per package:", ", ".join(f"{k} {v:.2f}" for k, v in table["per_package_s"].items()))
        print("not needed by this run, yet loaded:", ", ".join(table["loaded"]) or "none")

    runs: dict[tuple[str, str], list[dict]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for (mode, variant), done in runs.items():  # alternating: every case sees the same machine load
            done.append(timed_run(MODES[mode], VARIANTS[variant]))
        print(f"round {r + 1}, to the first step: " + "; ".join(
            f"{m} ({v}) {done[-1]['first_step_s']:.2f} s" for (m, v), done in runs.items()), flush=True)

    result = {"rounds": args.rounds, "importtime": table}
    for (mode, variant), done in runs.items():
        firsts = [run["first_step_s"] for run in done]
        median_run = sorted(done, key=lambda run: run["first_step_s"])[len(firsts) // 2]
        result[f"{mode} ({variant})"] = {"first_step_s": firsts, "median_first_step_s": statistics.median(firsts),
                                         "phases_of_median_run_s": phases(median_run), "runs": done}
        print(f"\n{mode} ({variant}): command to the end of the first optimizer step, median "
              f"{statistics.median(firsts):.2f} s ({', '.join(f'{f:.2f}' for f in firsts)})")
        for name, seconds in result[f"{mode} ({variant})"]["phases_of_median_run_s"].items():
            print(f"  {seconds:7.2f} s  {name}")
    for mode, a, b in RATIOS:  # per round (the variants ran back to back, under the same load), then the median
        first, second = ([run["first_step_s"] for run in runs[(mode, v)]] for v in (a, b))
        ratios = [round(x / y, 3) for x, y in zip(first, second)]
        result[f"{mode}: {a} / {b}"] = {"per_round": ratios, "median": statistics.median(ratios)}
        print(f"{mode}: {a} / {b}, per round {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.3f}")
    print(f"written to {write_result('startup', result)}")


if __name__ == "__main__":
    main()
