"""Bayesian (TPE), random and grid hyperparameter search with Optuna, as a Hydra sweeper.

Written here rather than taken from hydra-optuna-sweeper: that plugin pins optuna<3 (2021), whose
storages do not work with SQLAlchemy 2, and it gives trials no way to report to the study, so
unpromising trials cannot be pruned. This sweeper asks Optuna for trials, launches them through
Hydra's launcher (each trial an ordinary run with its own run directory, DDP included), tells
Optuna each run's result, and hands every trial what it needs to report intermediate values
(`search_trial.*`, read by callbacks/optuna_pruning.py).

The study lives in a storage (a journal file in the sweep directory unless hydra.sweeper.storage
names one), so a sweep can be resumed and several jobs (SLURM array tasks) can share one study.
A `data.kfold.fold` sweep (k-fold cross-validation) is not searched: every trial runs each fold
and is scored by the mean over folds.

Importing this module must stay cheap: Hydra imports every plugin at start-up.
"""

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lightdist.compat import trial_id
from lightdist.errors import ConfigError
from lightdist.sweeps import FOLD_KEY

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
LAUNCH_TAG = "lightdist_launch"
FOLLOW_TIMEOUT_S = 600


class OptunaSearch(Sweeper):
    def __init__(
        self,
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: str = "tpe",
        seed: int | None = None,
        n_startup_trials: int = 5,
        pruner: str = "none",
        pruner_warmup_steps: int = 0,
        study_name: str = "lightdist",
        storage: str | None = None,
        params: dict[str, Any] | None = None,
    ):
        self.direction = {"max": "maximize", "min": "minimize"}.get(direction, direction)
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={direction}: choose maximize or minimize (max, min)")
        if sampler not in SAMPLERS:
            raise ConfigError(f"hydra.sweeper.sampler={sampler}: choose from {', '.join(SAMPLERS)}")
        if pruner not in PRUNERS:
            raise ConfigError(f"hydra.sweeper.pruner={pruner}: choose from {', '.join(PRUNERS)}")
        if n_trials < 1 or n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_name, self.seed, self.n_startup_trials = sampler, seed, n_startup_trials
        self.pruner_name, self.pruner_warmup_steps = pruner, pruner_warmup_steps
        self.study_name, self.storage = study_name, storage
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- building the study ---------------------------------------------------------------------
    def _sampler(self, dims: list) -> Any:
        import optuna

        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler_name == "grid":
            from optuna.distributions import CategoricalDistribution, IntDistribution

            space = {}
            for d in dims:
                dist = d.distribution
                if isinstance(dist, CategoricalDistribution):
                    space[d.key] = list(dist.choices)
                elif isinstance(dist, IntDistribution) and not dist.log:
                    space[d.key] = list(range(dist.low, dist.high + 1, dist.step))
                else:
                    raise ConfigError(f"sampler=grid cannot enumerate {d.key} (an interval)",
                                      hint="give it a range(...) or a list of values, or use sampler=tpe/random")
            return optuna.samplers.GridSampler(space, seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials)

    def _pruner_spec(self) -> dict[str, Any]:
        return {"name": self.pruner_name, "n_startup_trials": self.n_startup_trials,
                "n_warmup_steps": self.pruner_warmup_steps}

    def _storage_spec(self, sweep_dir: Path) -> str:
        return self.storage or str((sweep_dir / "optuna.journal").resolve())

    # -- the sweep ------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from lightdist.sweeps import search_space

        assert self.config is not None and self.launcher is not None
        params = [f"{key}={value}" for key, value in self.params.items()]
        dims, fixed = search_space.parse(params + list(arguments))
        folds = [d for d in dims if d.key == FOLD_KEY]
        dims = [d for d in dims if d.key != FOLD_KEY]
        fold_values = list(folds[0].override.sweep_iterator()) if folds else [None]
        if not dims:
            raise ConfigError("the Optuna sweep has nothing to search",
                              hint="add ranges, e.g. 'optimizer.lr=tag(log,interval(1e-4,1e-1))', on the command "
                                   "line or in hydra.sweeper.params (see conf/hparams_search/)")
        from lightdist.distributed.ranks import is_rank_zero

        # Under srun/torchrun every rank runs this sweep: rank 0 asks the study for trials and tells it
        # the results; the other ranks follow, running the trials rank 0 was given (found by a tag).
        leader = is_rank_zero()
        group = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
        sweep_dir = Path(self.config.hydra.sweep.dir)
        storage = self._storage_spec(sweep_dir)
        if leader:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self._open_study(storage, dims, leader)
        distributions = {d.key: d.distribution for d in dims}
        pruning = self.pruner_name != "none"
        log.info("Optuna %s search of %s: %d trials, study '%s' in %s", self.sampler_name,
                 ", ".join(distributions), self.n_trials, self.study_name, storage)

        launched = 0
        while launched < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - launched)
            trials = [self._next_trial(study, distributions, f"{group}/{launched + i}", leader) for i in range(batch)]
            jobs, owners = [], []
            for trial in trials:
                chosen = [d.as_override(trial.params[d.key]) for d in dims]
                for fold in fold_values:
                    job = [*fixed, *chosen]
                    if fold is not None:
                        job.append(f"{FOLD_KEY}={fold}")
                    if pruning and fold is None:  # one trial, one run: the run reports to the trial
                        job += [f"search_trial.storage='{storage}'", f"search_trial.study={self.study_name}",
                                f"search_trial.trial_id={trial_id(trial)}"]
                    jobs.append(job)
                    owners.append(trial)
            self.validate_batch_is_legal(jobs)
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            launched += batch
            for trial in trials if leader else ():
                self._tell(study, trial, [r for r, o in zip(returns, owners) if o is trial])
        return self._report(study, sweep_dir, storage) if leader else None

    def _open_study(self, storage: str, dims: list, leader: bool) -> Any:
        import optuna

        from lightdist.sweeps.study import PRUNER_ATTR, make_pruner, open_storage

        if leader:
            study = optuna.create_study(study_name=self.study_name, storage=open_storage(storage),
                                        sampler=self._sampler(dims), pruner=make_pruner(self._pruner_spec()),
                                        direction=self.direction, load_if_exists=True)
            study.set_user_attr(PRUNER_ATTR, self._pruner_spec())
            return study
        return _poll(lambda: optuna.load_study(study_name=self.study_name, storage=open_storage(storage)),
                     f"study {self.study_name} in {storage}")

    def _next_trial(self, study: Any, distributions: dict, tag: str, leader: bool) -> Any:
        if leader:
            trial = study.ask(distributions)
            trial.set_user_attr(LAUNCH_TAG, tag)
            return trial

        def given() -> Any:
            found = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(LAUNCH_TAG) == tag]
            if not found:
                raise LookupError(tag)
            return found[0]

        return _poll(given, f"the trial rank 0 launched as {tag}")

    def _tell(self, study: Any, trial: Any, returns: list) -> None:
        """Tell the study how the trial's run(s) ended: complete with a value, pruned or failed."""
        from optuna.trial import TrialState

        values, pruned = [], False
        for ret in returns:
            try:
                value = ret.return_value
            except Exception as exc:  # the run raised: the trial failed, the search goes on
                log.warning("trial %d failed: %s", trial.number, exc)
                study.tell(trial, state=TrialState.FAIL)
                return
            pruned = pruned or _summary(ret).get("pruned", False)
            values.append(value)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            return
        if not values or any(v is None or not math.isfinite(float(v)) for v in values):
            log.warning("trial %d returned %s: no finite value of the optimized metric", trial.number, values)
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, sum(float(v) for v in values) / len(values))

    def _report(self, study: Any, sweep_dir: Path, storage: str) -> dict[str, Any]:
        from optuna.trial import TrialState

        states = [t.state for t in study.trials]
        result: dict[str, Any] = {
            "study": self.study_name, "storage": storage, "direction": self.direction,
            "sampler": self.sampler_name, "pruner": self.pruner_name,
            "trials": {s.name.lower(): states.count(s) for s in
                       (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
        }
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            result.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
            log.info("best trial %d: %s = %s with %s", best.number, self.direction, best.value, best.params)
        else:
            log.warning("no trial completed")
        OmegaConf.save(OmegaConf.create(result), sweep_dir / "optuna_results.yaml")
        return result


def _summary(ret: Any) -> dict[str, Any]:
    """The summary.json of a finished job, from its run directory."""
    import json

    try:
        folder = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        return json.loads((folder / "summary.json").read_text())
    except Exception:  # no summary (the run failed early): nothing to add
        return {}


def _poll(fetch: Any, what: str) -> Any:
    """fetch() until it stops raising: a rank > 0 waiting for what rank 0 writes to the storage."""
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while True:
        try:
            return fetch()
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {FOLLOW_TIMEOUT_S}s for {what}; is rank 0 running?") from None
            time.sleep(0.5)
