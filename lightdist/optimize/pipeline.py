"""The steps of `lightdist optimize` (lightdist.commands.optimize) in order, each measured, one report.

optimize(cfg) takes the composed conf/optimize.yaml: prune, int8-quantize and export a run's
model, measure each (test accuracy, size, CPU latency) against the float model, and write
everything to a new folder beside the run.
"""

import copy
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lightdist.errors import ConfigError, LightdistError
from lightdist.optimize import export as ex
from lightdist.optimize import measure, prune, quantize
from lightdist.optimize import report as rep
from lightdist.optimize.batches import accuracy, agreement, batches

STEPS = ("prune", "quantize", "export")


class OptimizeFailed(LightdistError):
    """A step ran but its result is wrong (an export that does not reproduce the model)."""


def new_output_dir(run_dir: Path, requested: str | None) -> Path:
    folder = Path(requested).expanduser() if requested else (
        run_dir / "optimized" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(2)}")
    if folder.exists():
        raise ConfigError(f"{folder} already exists; optimize never overwrites", hint="pick another output_dir")
    folder.mkdir(parents=True)
    return folder


def latency_args(data: list[tuple[tuple, torch.Tensor]], batch_size: int) -> tuple:
    """One batch of `batch_size` test inputs (joined from consecutive batches where they are smaller)."""
    parts, n = [], 0
    for args, _ in data:
        parts.append(args)
        n += len(args[0])
        if n >= batch_size:
            break
    if any(len({tuple(a.shape[1:]) for a in column}) > 1 for column in zip(*parts)):
        return parts[0]  # variable-length inputs (text) cannot be joined: time the first batch as it is
    return tuple(torch.cat(column)[:batch_size].clone() for column in zip(*parts))


def measure_model(model, args: tuple, data, opts: measure.LatencyOptions, compiled: bool) -> dict[str, Any]:
    entry = {"accuracy": accuracy(model, data), **measure.state_bytes(model),
             "latency_ms": measure.latencies(model, args, opts)}
    if compiled:
        with quantize.inductor_freezing():
            fast = torch.compile(model, dynamic=False)
            entry["latency_ms"] |= measure.latencies(fast, args, opts, prefix="compiled_")
    return entry


def save_pruned(run, model, path: Path) -> None:
    """A checkpoint like the run's own (state_dict under `model.`), so eval, fine-tuning and optimize read it."""
    from lightdist.checkpoints import load_consolidated

    checkpoint = {k: v for k, v in load_consolidated(run.checkpoint).items()
                  if not k.startswith("optimizer") and k not in ("lr_schedulers", "callbacks", "loops")}
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(checkpoint, path)


def save_dynamic(qmodel, args, data, folder: Path, threads: int) -> tuple[Path, str]:
    """A graph (torch.export, else TorchScript) when the loaded file reproduces the model on the test
    batches: loading it runs no Python. Else (dynamic int8 recurrent layers on packed sequences: no
    exporter captures them, a trace freezes the batch size) a pickled module, which runs any code it
    names when loaded: the runner loads it only with --trust-pickle."""
    try:
        exported = ex.export_program(qmodel, args, folder, stem="model_int8_dynamic")
        same = agreement(qmodel, ex.load_exported(exported.path, threads), data)
        if same["top1_agreement"] == 1.0 and same["max_abs_logit_diff"] <= ex.ExportOptions.atol:
            return exported.path, exported.exporter
        exported.path.unlink()
    except Exception:  # a model no exporter captures, or a trace that fails on other shapes
        for stale in folder.glob("model_int8_dynamic.*"):
            stale.unlink()
    path = folder / ex.PICKLED_DYNAMIC_FILE
    torch.save(qmodel, path)
    return path, "pickled module (run_exported --trust-pickle)"


def run_quantize(run, model, args, data, opts, lat: measure.LatencyOptions, folder: Path) -> dict[str, Any]:
    method = quantize.resolve_method(model, opts.method)
    if method == "static":
        calibration = (a for a, _ in batches(run, "train", opts.calibration_batches))
        qmodel = quantize.quantize_static(model, args, calibration)
        path = folder / "model_int8.pt2"
        traced = quantize.example(args)
        torch.export.save(torch.export.export(qmodel, traced, dynamic_shapes=quantize.batch_dynamic_shapes(traced)),
                          str(path))
    else:
        qmodel = quantize.quantize_dynamic(model)
        path, saved_as = save_dynamic(qmodel, args, data, folder, lat.threads)
    entry = {"method": method, "options": vars(opts), "file": path.name, "file_bytes": measure.file_bytes(path),
             **measure.state_bytes(qmodel), "latency_ms": measure.latencies(qmodel, args, lat)}
    if method == "dynamic":
        entry["saved_as"] = saved_as
    entry["accuracy"] = accuracy(qmodel, data)
    entry["accuracy_measured"] = "eager"
    if method == "static" and lat.compile:
        # The int8 kernels exist only in the compiled graph: time it, and measure the accuracy it delivers.
        with quantize.inductor_freezing():
            fast = torch.compile(qmodel, dynamic=False)  # Inductor's int8 conv lowering fails on symbolic batch sizes
            entry["latency_ms"] |= measure.latencies(fast, args, lat, prefix="compiled_")
            entry["accuracy"] = accuracy(fast, data)
            entry["accuracy_measured"] = "compiled (int8 kernels)"
    elif method == "static":
        entry["accuracy_measured"] = "eager (reference: dequantize + float kernels, same int8 numerics)"
    entry["agreement"] = agreement(model, qmodel, data)
    return entry


def run_export(run, model, args, data, opts: ex.ExportOptions, lat: measure.LatencyOptions,
               folder: Path) -> dict[str, Any]:
    results = {}
    for fmt in opts.formats:
        try:
            if fmt == "onnx":
                exported = ex.export_onnx(model, args, folder / ex.FILES[fmt], opts.opset)
            else:
                exported = ex.export_program(model, args, folder)
            loaded = ex.load_exported(exported.path, lat.threads)
        except Exception as exc:  # a model no exporter can capture: reported, the other formats still run
            results[fmt] = {"error": ex._reason(exc)}
            continue
        parity = agreement(model, loaded, data)
        results[fmt] = {"file": exported.path.name, "exporter": exported.exporter, "size_bytes":
                        measure.file_bytes(exported.path), "parity": parity, "atol": opts.atol,
                        # logits within atol, and no prediction changed
                        "parity_ok": parity["max_abs_logit_diff"] <= opts.atol and parity["top1_agreement"] == 1.0,
                        "accuracy": accuracy(loaded, data), "latency_ms": measure.latencies(loaded, args, lat)}
        if exported.fallback_reason:
            results[fmt]["fallback_reason"] = exported.fallback_reason
    samples = tuple(a[:16] for a in args)
    with torch.inference_mode():
        expected = model(*samples)
    mean, std = getattr(run.datamodule, "mean", None), getattr(run.datamodule, "std", None)
    normalize = ({"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
                 if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) else None)
    ex.write_sidecar(folder, samples, expected, run.facts, normalize)
    return results


def optimize(cfg) -> tuple[Path, dict[str, Any]]:
    from hydra.utils import instantiate

    from lightdist.runs import load_run
    from lightdist.tasks.classification import ClassificationTask

    options = {k: instantiate(cfg[k]) for k in ("prune", "quantize", "export", "latency")}
    quantize.quiet_logs()
    run = load_run(cfg.run_dir, cfg.ckpt)
    if not isinstance(run.task, ClassificationTask):
        raise ConfigError(f"{run.run_dir} is a {type(run.task).__name__} run; optimize measures classifiers "
                          "(image and text runs) by their test accuracy",
                          hint="pass run_dir=<an image or text classification run>")
    if "quantize" in cfg.steps:  # a method that cannot work on this model fails before anything is measured
        quantize.resolve_method(run.model, options["quantize"].method)
    folder = new_output_dir(run.run_dir, cfg.output_dir)
    try:
        return folder, _optimize(cfg, run, options, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half-written results beside the run
        raise


def _optimize(cfg, run, options: dict[str, Any], folder: Path) -> dict[str, Any]:
    from lightdist.run_dir import versions

    lat: measure.LatencyOptions = options["latency"]
    torch.manual_seed(0)
    data = list(batches(run, cfg.eval_split, cfg.eval_batches))
    args = latency_args(data, lat.batch_size)
    # Trained channels_last (a GPU speed option) or not, the CPU tools want plain contiguous weights.
    model = run.model.to(memory_format=torch.contiguous_format).eval()
    report: dict[str, Any] = {
        "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "output_dir": str(folder),
        "steps": list(cfg.steps), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
        "eval": {"split": cfg.eval_split, "samples": sum(len(t) for _, t in data)},
        "latency": vars(lat) | {"input_shapes": [list(a.shape) for a in args]},
    }
    report["float"] = measure_model(model, args, data, lat, lat.compile) | {"sparsity": prune.sparsity(model)}
    current = model
    if "prune" in cfg.steps:
        pruned = prune.prune_model(copy.deepcopy(model), options["prune"])
        save_pruned(run, pruned, folder / "pruned.ckpt")
        report["prune"] = {"options": vars(options["prune"]), "file": "pruned.ckpt", "sparsity": prune.sparsity(pruned),
                           **measure_model(pruned, args, data, lat, compiled=False)}
        current = pruned
    if "quantize" in cfg.steps:
        report["quantize"] = run_quantize(run, current, args, data, options["quantize"], lat, folder)
    if "export" in cfg.steps:
        report["export"] = run_export(run, current, args, data, options["export"], lat, folder)
    rep.write(folder, report)
    return report


def failures(report: dict[str, Any]) -> list[str]:
    out = []
    for fmt, entry in report.get("export", {}).items():
        if "error" in entry:
            out.append(f"export {fmt} failed ({entry['error']})")
        elif not entry["parity_ok"]:
            out.append(f"export {fmt} differs from the PyTorch model by {entry['parity']['max_abs_logit_diff']:.2e} "
                       f"(> {entry['atol']:g})")
    return out
