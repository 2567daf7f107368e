"""Model-state bytes per rank and speed under DDP, FSDP, FSDP2 and DeepSpeed ZeRO 1/2/3, and
DDP and FSDP2 with torch.compile (Inductor), side by side in one run.

CPU (default): 2 processes over gloo, the same model, data and steps under each strategy.
GPU (--gpu): 1 GPU, bf16-mixed, ResNet-18 on CIFAR-10-format data, including a 32-true DDP
run for the bf16 speed-up. Each run is the real CLI in a subprocess; the figures come from
its summary.json: bytes of parameters, gradients and optimizer state held by each rank
after an optimizer step, and the step rate after the second step (times the global batch; a
compiled model compiles in the second step, so the rate is the compiled model's).

    python bench/strategies.py
    python bench/strategies.py --gpu --cifar-root /path/with/cifar-10-batches-py
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from bench.scaling import run, samples_per_s  # noqa: E402

OFF = "callbacks.throughput=null"
CPU_RUNS = {
    "ddp": ["strategy=ddp", OFF],
    "fsdp": ["strategy=fsdp", OFF],
    "zero1": ["strategy=deepspeed_stage_1", OFF],
    "zero2": ["strategy=deepspeed_stage_2", OFF],
    "zero3": ["strategy=deepspeed_stage_3", "strategy.param_persistence_threshold=0", OFF],
    "fsdp2": ["strategy=fsdp2", OFF],
    # compiled: the whole model inside DDP; FSDP2 compiles each block, then shards it
    "ddp+compile": ["strategy=ddp", "compile=true", OFF],
    "fsdp2+compile": ["strategy=fsdp2", "compile=true", OFF],
}
GPU_RUNS = {
    "ddp": ["strategy=ddp", OFF],
    "ddp_fp32": ["strategy=ddp", "trainer.precision=32-true", OFF],
    "ddp_nhwc_off": ["strategy=ddp", "channels_last=false", OFF],
    "ddp_no_augment": ["strategy=ddp", "data.augment=null", OFF],
    # DeepSpeed broadcasts parameters as flat byte views: no channels_last weights
    "zero2": ["strategy=deepspeed_stage_2", "channels_last=false", OFF],
    "zero3": ["strategy=deepspeed_stage_3", "channels_last=false", OFF],
    "fsdp2": ["strategy=fsdp2", "channels_last=false", OFF],
    "ddp+compile": ["strategy=ddp", "compile=true", OFF],
    "fsdp2+compile": ["strategy=fsdp2", "channels_last=false", "compile=true", OFF],
    # Lightning's ThroughputMonitor synchronises the GPU after every step: what that costs
    "ddp+monitor": ["strategy=ddp"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cifar-root", help="GPU mode: a folder holding cifar-10-batches-py (else synthetic files)")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args()

    tmp_root = Path(tempfile.mkdtemp())
    if args.gpu:
        steps, batch = args.steps or 300, 256
        root = args.cifar_root
        if root is None:  # CIFAR-10's exact on-disk format, random pixels: speed and memory only
            from tests.helpers.image_files import write_cifar10

            write_cifar10(tmp_root / "data", per_batch=4000)
            root = str(tmp_root / "data")
        common = ["+experiment=cifar_resnet", f"data.root={root}", "data.val_size=1000", f"data.batch_size={batch}",
                  "trainer.devices=1", "data.num_workers=4"]
        runs = GPU_RUNS
    else:
        steps, batch = args.steps or 60, 64
        common = ["trainer=cpu_ddp", "data=fashion_mnist", "model=simple_cnn", "model.hidden=1024",
                  "data.augment=null", "data.train_subset=20000", f"data.batch_size={batch}", "optimizer=adamw",
                  "threads_per_rank=1"]
        runs = CPU_RUNS
    common += [f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
               "test_after_fit=false", "trainer.enable_progress_bar=false", "callbacks.model_checkpoint=null",
               "logger=csv"]

    results = {}
    for name, overrides in runs.items():
        cwd = tmp_root / name
        cwd.mkdir()
        _, run_dir = run([*common, *overrides], cwd)
        summary = json.loads((run_dir / "summary.json").read_text())
        per_rank = summary["model_state_bytes_per_rank"]
        results[name] = {"overrides": overrides, "samples_per_s": samples_per_s(run_dir, batch),
                         "model_state_bytes_per_rank": per_rank,
                         "peak_gpu_memory_bytes": summary.get("peak_gpu_memory_bytes")}
        print(f"{name}: {results[name]['samples_per_s']:.1f} samples/s, rank 0 holds "
              f"{per_rank[0]['total'] / 2**20:.2f} MiB of model state", flush=True)

    ref = results["ddp"]
    header = f"{'strategy':14} {'params':>9} {'grads':>9} {'optim':>9} {'total':>9} {'vs DDP':>7} " \
             f"{'samples/s':>10} {'vs DDP':>7}" + (f" {'peak GPU MiB':>13}" if args.gpu else "")
    print("\nper-rank model state (MiB, rank 0, after an optimizer step) and speed\n" + header)
    for name, r in results.items():
        b = r["model_state_bytes_per_rank"][0]
        row = (f"{name:14} {b['parameters'] / 2**20:9.2f} {b['gradients'] / 2**20:9.2f} "
               f"{b['optimizer'] / 2**20:9.2f} {b['total'] / 2**20:9.2f} "
               f"{b['total'] / ref['model_state_bytes_per_rank'][0]['total']:7.2f} "
               f"{r['samples_per_s']:10.1f} {r['samples_per_s'] / ref['samples_per_s']:7.2f}")
        if args.gpu:
            row += f" {(r['peak_gpu_memory_bytes'] or 0) / 2**20:13.0f}"
        print(row)
    if not args.gpu:  # the goal FSDP2 is held to: about half of DDP's model state on each of 2 ranks
        ratio = results["fsdp2"]["model_state_bytes_per_rank"][0]["total"] / ref["model_state_bytes_per_rank"][0]["total"]
        print(f"fsdp2 model state per rank: {ratio:.2f}x DDP's (goal <= 0.55x)")
    payload = {"mode": "gpu" if args.gpu else "cpu", "steps": steps, "per_rank_batch": batch, "common": common,
               "runs": results}
    path = write_result("strategies_gpu" if args.gpu else "strategies_cpu", payload)
    print(f"written to {path}")
    if args.out:
        Path(args.out).write_text(path.read_text())


if __name__ == "__main__":
    main()
