"""Where a default training run makes the host wait for the GPU, found by CUDA itself.

Trains the default image run (the default callbacks, CSV logger and progress display; Fashion-MNIST
format data, from $LIGHTDIST_DATA or generated) on one GPU in this process, with
torch.cuda.set_sync_debug_mode("warn") from the start of training: every operation that makes the
host wait for the GPU (a value read on the host, a blocking copy, a data-dependent shape) warns,
and each warning is recorded with its Python stack and the batch it came from (from one batch's
on_train_batch_start to the next's: its step, its logging, and the next batch's fetch and
transfer). Steps whose metrics Lightning logs (trainer.log_every_n_steps), epoch ends (validation,
checkpoints) and the first `--warmup` steps may wait; any other step must not. Exit 1 if one does.

    python bench/sync_check.py                          # GPU, bf16-mixed, default run
    python bench/sync_check.py --mode error             # raise at the first wait instead (traceback)
    python bench/sync_check.py --override callbacks.progress_log=null   # the live (Rich) bar instead
    python bench/sync_check.py --smoke                  # the same code on the CPU (no CUDA: nothing
                                                        # is flagged; checks that the script runs)

The CPU counterpart (no GPU needed) is tests/performance/test_sync_points.py; its counter,
tests/helpers/sync_points.py, explains what counts. Results: bench/results/sync_check_gpu.json.
"""

import argparse
import json
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compose_resolved, write_result  # noqa: E402


def fashion_mnist_root(tmp: Path) -> str:
    from bench.common import DATA

    if (DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        return str(DATA / "fashion-mnist")
    from tests.helpers.data import write_generated_data

    return str(write_generated_data(tmp / "data") / "fashion-mnist")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps allowed to wait (allocation, set-up)")
    parser.add_argument("--mode", choices=["warn", "error"], default="warn")
    parser.add_argument("--override", action="append", default=[], help="more config overrides")
    parser.add_argument("--smoke", action="store_true", help="on the CPU, a few steps, no result written")
    args = parser.parse_args()

    import lightning as L
    import torch

    from lightdist import train

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to exercise the script on the CPU")
        return 2
    steps = 12 if args.smoke else args.steps
    waits: list[dict] = []
    batches: list[dict] = []

    class SyncDebug(L.Callback):
        def setup(self, trainer, pl_module, stage):
            trainer.callbacks.remove(self)  # first: a batch's span starts with its first hook
            trainer.callbacks.insert(0, self)

        def on_train_start(self, trainer, pl_module):
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(args.mode)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            every = trainer.log_every_n_steps
            batches.append({"batch": len(batches), "step": trainer.global_step + 1,
                            "logging": bool(every) and (trainer.global_step + 1) % every == 0,
                            "epoch_end": batch_idx + 1 == trainer.num_training_batches,
                            "warmup": trainer.global_step < args.warmup})

        def on_train_end(self, trainer, pl_module):
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(0)

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return previous(message, category, filename, lineno, file, line)
        stack = [f"{f.filename}:{f.name}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                 if "/torch/" not in f.filename and "warnings" not in f.filename]
        waits.append({"batch": len(batches) - 1, "site": stack[-1] if stack else f"{filename}:{lineno}",
                      "stack": stack[-8:], "message": str(message)})

    previous = warnings.showwarning
    warnings.showwarning = record
    warnings.simplefilter("always")
    overrides = ["trainer=gpu" if torch.cuda.is_available() else "trainer=cpu",
                 "trainer.devices=1", f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={args.log_every}",
                 "data.val_subset=512", "data.test_subset=512", "test_after_fit=false", *args.override]
    with tempfile.TemporaryDirectory() as tmp:
        overrides.append(f"data.root={fashion_mnist_root(Path(tmp))}")
        if args.smoke:
            overrides += ["data.train_subset=256", "data.batch_size=32", "trainer.log_every_n_steps=4"]
        cfg = compose_resolved(overrides, Path(tmp) / "run")
        original = train.build_callbacks
        train.build_callbacks = lambda c, has_logger: [*original(c, has_logger), SyncDebug()]
        try:
            train.run(cfg, Path(tmp) / "run")
        finally:
            train.build_callbacks = original
            warnings.showwarning = previous

    allowed = {b["batch"] for b in batches if b["logging"] or b["epoch_end"] or b["warmup"]}
    before = [w for w in waits if w["batch"] < 0]
    bad = [w for w in waits if w["batch"] >= 0 and w["batch"] not in allowed]
    per_kind = {kind: Counter(w["site"] for w in waits if w["batch"] >= 0 and (w["batch"] in allowed) == ok)
                for kind, ok in (("allowed", True), ("steady", False))}
    logging_steps = [b["batch"] for b in batches if b["logging"] and not b["epoch_end"] and not b["warmup"]]
    per_logging_step = [sum(w["batch"] == i for w in waits) for i in logging_steps]
    print(f"{len(batches)} batches, {len(waits)} waits in all ({len(before)} before the first batch)")
    print(f"steady steps (not logging, not epoch end, after {args.warmup} warm-up steps): {len(bad)} waits")
    for site, n in per_kind["steady"].most_common():
        print(f"  {n:4d}  {site}")
    print(f"logging steps: waits per step {per_logging_step}")
    for site, n in per_kind["allowed"].most_common(20):
        print(f"  {n:4d}  {site}")
    if bad:
        print("first steady-step wait, its stack:\n  " + "\n  ".join(bad[0]["stack"]))
    if not args.smoke:
        path = write_result("sync_check_gpu", {
            "device": torch.cuda.get_device_name(), "overrides": overrides[:-1], "batches": len(batches),
            "steady_waits": len(bad), "steady_sites": dict(per_kind["steady"]),
            "waits_per_logging_step": per_logging_step, "allowed_sites": dict(per_kind["allowed"]),
            "first_steady_stack": bad[0]["stack"] if bad else None})
        print(f"written {path}")
    print(json.dumps({"steady_waits": len(bad)}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
