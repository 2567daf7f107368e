"""The optimisation report: report.json (everything measured) and report.md (the comparison table)."""

import json
from pathlib import Path
from typing import Any


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.3f} MB"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} ms"


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value * 100:+.2f} pp" if signed else f"{value * 100:.2f} %"


LATENCIES = ("batch", "single", "compiled_batch", "compiled_single")


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model form: float, pruned, int8, exports."""
    base = report["float"]["accuracy"]
    out = []

    def add(name: str, entry: dict[str, Any]) -> None:
        latency = entry.get("latency_ms", {})
        acc = entry.get("accuracy")
        out.append({"model": name, "accuracy": acc, "change": None if acc is None or name == "float" else acc - base,
                    "size": entry.get("size_bytes"), "gzip": entry.get("size_gzip_bytes"),
                    **{k: latency.get(k) for k in LATENCIES},
                    "sparsity": entry.get("sparsity", {}).get("weights")})

    add("float", report["float"])
    if "prune" in report:
        add(f"pruned ({report['prune']['options']['method']}, {report['prune']['options']['amount']})", report["prune"])
    if "quantize" in report:
        add(f"int8 {report['quantize']['method']}", report["quantize"])
    for fmt, entry in report.get("export", {}).items():
        if "error" not in entry:
            add(f"export {fmt}", entry)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Optimisation report: {report['run_dir']}",
        "",
        f"Checkpoint `{report['checkpoint']}`; accuracy on {report['eval']['samples']} {report['eval']['split']} "
        f"samples; latency: median of {report['latency']['runs']} calls on a batch of "
        f"{report['latency']['input_shapes'][0][0]} and on a single input, {report['latency']['threads']} CPU "
        f"thread(s){', eager and compiled (torch.compile)' if report['latency']['compile'] else ''}; torch "
        f"{report['versions']['torch']}. Size: the saved state dict "
        "(and gzip-compressed, where zeros show).",
        "",
        "| model | accuracy | change | size | gzip size | latency batch | latency single | compiled batch "
        "| compiled single | weight sparsity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(report):
        lines.append(f"| {r['model']} | {_pct(r['accuracy'])} | {_pct(r['change'], signed=True)} | {_mb(r['size'])} "
                     f"| {_mb(r['gzip'])} | {' | '.join(_ms(r[k]) for k in LATENCIES)} | {_pct(r['sparsity'])} |")
    if "prune" in report:
        layers = report["prune"]["sparsity"]["layers"]
        lines += ["", "Sparsity per layer after pruning (fraction of zero weights):", "",
                  "| layer | sparsity |", "|---|---|", *(f"| {k} | {_pct(v)} |" for k, v in layers.items())]
    for fmt, entry in report.get("export", {}).items():
        if "error" in entry:
            lines.append(f"\nExport {fmt} failed: {entry['error']}")
        else:
            p = entry["parity"]
            verdict = "passed" if entry["parity_ok"] else "FAILED"
            lines.append(f"\nExport {fmt} (`{entry['file']}`, {entry['exporter']}): parity {verdict}: max |logit difference| "
                         f"{p['max_abs_logit_diff']:.2e} (tolerance {entry['atol']:g}), top-1 agreement "
                         f"{p['top1_agreement'] * 100:.2f} %.")
    if "quantize" in report:
        q = report["quantize"]
        lines.append(f"\nint8 ({q['method']}, `{q['file']}`): top-1 agreement with the float model "
                     f"{q['agreement']['top1_agreement'] * 100:.2f} %, accuracy measured {q['accuracy_measured']}.")
    return "\n".join(lines) + "\n"


def write(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(markdown(report))
