"""`lightdist optimize run_dir=<run> [key=value ...]`: prune, quantize and export, each measured, one report.

    lightdist optimize run_dir=outputs/fashion_mnist_resnet/<run>
    lightdist optimize run_dir=<run> steps=[prune] prune.method=channels prune.amount=0.3
    lightdist optimize run_dir=<run> steps=[quantize,export] latency.compile=false eval_batches=10

Options: conf/optimize.yaml (Hydra overrides, checked like training's: an unknown key names the nearest).
"""

from lightdist.config.compose import compose, compose_checked
from lightdist.errors import ConfigError
from lightdist.optimize import report as rep
from lightdist.optimize.pipeline import STEPS, OptimizeFailed, failures, optimize

CONFIG_NAME = "optimize"


def compose_options(overrides: list[str]):
    from omegaconf import OmegaConf

    from lightdist.config.validate import check_targets

    if any(o.startswith("-") for o in overrides):
        bad = next(o for o in overrides if o.startswith("-"))
        raise ConfigError(f"unexpected optimize argument '{bad}'", hint="arguments are key=value")
    cfg = compose_checked(overrides, CONFIG_NAME)
    unknown = sorted(set(cfg.keys()) - set(compose([], CONFIG_NAME).keys()))
    if unknown:
        raise ConfigError(f"unknown optimize option(s): {', '.join(unknown)}")
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("optimize needs run_dir=<a run directory>")
    check_targets(cfg)
    steps = list(cfg.steps)
    if not steps or any(s not in STEPS for s in steps):
        raise ConfigError(f"steps={steps}: choose from {', '.join(STEPS)} (in that order)",
                          hint="e.g. steps=[prune,export]")
    return cfg


def run(argv: list[str]) -> None:
    folder, report = optimize(compose_options([a for a in argv if a != "--"]))
    print(rep.markdown(report))
    print(f"written to {folder}")
    problems = failures(report)
    if problems:
        raise OptimizeFailed("; ".join(problems), hint=f"see {folder / 'report.md'}")
