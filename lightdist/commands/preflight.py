"""`lightdist preflight <overrides> [gpus_per_node=G cpus_per_node=C tasks_per_node=T nodes=N]`:
compose and check a run (every point of a sweep) without starting it; the allocation keys check
it against the machines of a job to be submitted instead of this one."""

from dataclasses import asdict, dataclass

from lightdist.config.checks import preflight
from lightdist.config.compose import (
    command_args,
    flag_value,
    split_args,
    sweep_points,
    training_key,
)


@dataclass
class PreflightOptions:
    gpus_per_node: int | None = None  # GPUs per node of the job to be submitted
    cpus_per_node: int | None = None  # cores per node of the job
    tasks_per_node: int | None = None  # tasks (ranks) per node of the job
    nodes: int | None = None  # nodes of the job


ALIASES = {"--gpus-per-node": "gpus_per_node", "--cpus-per-node": "cpus_per_node",
           "--tasks-per-node": "tasks_per_node", "--nodes": "nodes"}
# the keys of check_devices' allocation
_ALLOCATION = {"gpus_per_node": "gpus", "cpus_per_node": "cores", "tasks_per_node": "tasks_per_node", "nodes": "nodes"}


def run(argv: list[str]) -> None:
    args = command_args(argv, "preflight", PreflightOptions, aliases=ALIASES, rest=training_key, flags=True,
                        rest_hint="other keys are overrides of the training config")
    flags, overrides = split_args(args.rest)
    allocation = {_ALLOCATION[k]: v for k, v in asdict(args.options).items() if v is not None} or None
    config_name = flag_value(flags, "-cn", "--config-name") or "config"
    for point in sweep_points(overrides):  # a sweep: every point must pass
        notes: list = []
        cfg = preflight(point, config_name, True, allocation, notes)
        for _, note in notes:
            print(f"note: {note}")
        data = cfg.data.get("dataset") or cfg.data._target_.rsplit(".", 1)[-1]
        print(f"ok: {' '.join(point) or '(defaults)'}: data={data} model={cfg.model._target_.rsplit('.', 1)[-1]} "
              f"trainer.accelerator={cfg.trainer.accelerator} devices={cfg.trainer.devices} "
              f"num_nodes={cfg.trainer.num_nodes} precision={cfg.trainer.precision}")
