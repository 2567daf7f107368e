"""torch.compile (the top-level `compile` key) in one process, under DDP and under FSDP2, on CPU
with Inductor (real C++ code generation), in float64: the compiled run trains like the eager one.

Each mode trains the same small model twice from the same seed, eager and compiled (one
module-scoped fixture per mode, so `-k ddp` runs only DDP's two runs). An Inductor compile of
this model takes about 30 s of one core here (a fresh cache per compiled run, whose generated
code shows that Inductor did compile), so the runs are 4 steps long.

Tolerance: Inductor fuses and reorders float64 arithmetic (sums in another order), which
changes results by a few units in the last place (2.2e-16 relative) per operation; SGD
amplifies a last-bit difference about 4x per step (measured in tests/distributed/
test_strategies.py), so after 4 steps the bound is ~1e-16 * 4^4 ~ 3e-14 (measured: 3e-16). A
compiled graph that computed something else (a lost normalisation, a gradient not averaged
across ranks, parameters not gathered) moves the loss by 1e-3 or more.
"""

import re
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightdist.callbacks.model_options import ModelOptions, model_options
from lightdist.checkpoints import load_consolidated
from lightdist.config.checks import check_compile
from lightdist.errors import ConfigError
from lightdist.tasks.classification import ClassificationTask
from tests.distributed.test_strategies import train_losses
from tests.helpers.cli import QUIET, cli_env, read_summary, run_cli, run_dirs

RTOL = 1e-11  # see the module docstring
# hidden=256: the first dense layer (784 x 256 float64, 1.6 MB) exceeds DDP's 1 MiB bucket, so
# DDP's gradients fall into 2 buckets and the compiled graph is split in 2 at that boundary.
COMMON = ["model.norm=group", "model.dropout=0.0", "model.channels=[8,16]", "model.hidden=256", "data.augment=null",
          "data.train_subset=512", "data.val_subset=64", "data.test_subset=64", "data.batch_size=32",
          "trainer.limit_train_batches=4", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
          "trainer.num_sanity_val_steps=0", "trainer.precision=64-true", "optimizer=sgd", "optimizer.lr=0.05",
          "scheduler=none", "logger=csv", "seed=3", *QUIET]
SHORT = ["trainer.limit_val_batches=0", "test_after_fit=false"]
MODES = {
    # one process: validation and the test after fit too (eval-mode graphs, a freshly built task)
    "single": ["trainer=cpu", "trainer.limit_val_batches=1"],
    "ddp": ["trainer=cpu_ddp", "strategy=ddp", "strategy.bucket_cap_mb=1", *SHORT],
    "fsdp2": ["trainer=cpu_ddp", "strategy=fsdp2", *SHORT],
}


def generated_graphs(cache: Path) -> int:
    """Graphs Inductor compiled into a fresh cache: it writes each one's code as a module there."""
    return len({p.name for p in cache.rglob("*.py")})


def train_pair(tmp_path_factory, mode: str) -> dict:
    """The mode's eager and compiled runs, and the compiled run's stderr and Inductor cache."""
    out = {}
    for compile in (False, True):
        cwd = tmp_path_factory.mktemp(f"{mode}-{'compiled' if compile else 'eager'}")
        # the DDP optimizer reports its graph split at INFO level in this logger
        env = cli_env(TORCHINDUCTOR_CACHE_DIR=str(cwd / "inductor"), TORCH_LOGS="torch._dynamo.backends.distributed")
        proc = run_cli([*MODES[mode], *COMMON, f"compile={str(compile).lower()}"], cwd=cwd, env=env, timeout=600)
        (run_dir,) = run_dirs(cwd)
        out["compiled" if compile else "eager"] = run_dir
        if compile:
            out["stderr"], out["cache"] = proc.stderr, cwd / "inductor"
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train_pair(tmp_path_factory, "single")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return train_pair(tmp_path_factory, "ddp")


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory):
    return train_pair(tmp_path_factory, "fsdp2")


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_compiled_run_trains_like_eager(request, mode):
    runs = request.getfixturevalue(mode)
    assert generated_graphs(runs["cache"]) >= 2  # Inductor compiled (forward and backward at least)
    eager, compiled = train_losses(runs["eager"]), train_losses(runs["compiled"])
    assert len(eager) == len(compiled) == 4 and eager[-1] < eager[0]
    torch.testing.assert_close(torch.tensor(compiled, dtype=torch.float64),
                               torch.tensor(eager, dtype=torch.float64), rtol=RTOL, atol=0)
    # checkpoints keep the plain model's keys (compiled in place, no `_orig_mod.`), and equal weights
    plain = load_consolidated(runs["eager"] / "checkpoints" / "last.ckpt")["state_dict"]
    weights = load_consolidated(runs["compiled"] / "checkpoints" / "last.ckpt")["state_dict"]
    assert list(weights) == list(plain)
    for key, value in plain.items():
        torch.testing.assert_close(weights[key], value, rtol=RTOL, atol=1e-15, msg=key)


@pytest.mark.slow
def test_single_process_evaluates_compiled(single):
    """Validation and the test after fit run the compiled model in eval mode: the same metrics."""
    eager, compiled = read_summary(single["eager"])["test"], read_summary(single["compiled"])["test"]
    assert eager.keys() == compiled.keys() and "test/loss" in eager
    for key, value in eager.items():
        assert compiled[key] == pytest.approx(value, rel=RTOL), key


@pytest.mark.slow
def test_ddp_splits_the_compiled_graph_at_its_buckets(ddp):
    """torch._dynamo's DDP optimizer ran: one compiled graph per DDP gradient bucket, on each rank."""
    buckets = [int(n) for n in re.findall(r"DDPOptimizer used bucket cap 1048576 and created (\d+) buckets",
                                          ddp["stderr"])]
    assert len(buckets) >= 2 and min(buckets) == 2, ddp["stderr"][-3000:]


@pytest.mark.slow
def test_fsdp2_compiles_every_block(fsdp2):
    """Each of SimpleCNN's 2 stages compiled (forward and backward) before sharding."""
    assert generated_graphs(fsdp2["cache"]) >= 4


class _TwoPartNet(nn.Module):
    """A model with a graph break in the middle: torch.compile makes two graphs of it."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        torch._dynamo.graph_break()
        return self.second(h)


def test_only_the_model_is_compiled_not_the_optimizer_step():
    """The graphs torch.compile makes hold the model's layers only; the optimizer step runs eagerly."""
    graphs, steps = [], []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    class WatchStep(L.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_pre_hook(lambda *_: steps.append(torch.compiler.is_compiling()))

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 6), torch.randint(0, 3, (24,)))
    task = ClassificationTask(_TwoPartNet(), 3, partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelOptions(compile=record), WatchStep()])
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=8))
    assert steps == [False] * 3  # each step ran, none inside a compiled region
    assert len(graphs) == 2  # the two halves of the model, compiled once each
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert any("linear" in t for t in targets)
    assert not any(word in t for t in targets for word in ("sgd", "foreach", "add_", "cross_entropy"))


def test_what_compile_cannot_do_is_refused(workdir):
    """DDP buckets under 1 MiB (torch's DDP optimizer refuses them) and FSDP1 (dynamo fails on its
    flat parameters): one line each, naming the fix."""
    from omegaconf import OmegaConf

    fsdp1 = {"_target_": "lightdist.distributed.sharding.fsdp"}
    for strategy, fix in [({"bucket_cap_mb": 0.5}, "bucket_cap_mb=1"), (fsdp1, "strategy=fsdp2")]:
        with pytest.raises(ConfigError, match=fix):
            check_compile(True, OmegaConf.create(strategy))
        check_compile(False, OmegaConf.create(strategy))
    check_compile("inductor", OmegaConf.create({"bucket_cap_mb": 1}))
    assert len(model_options(OmegaConf.create({"compile": True, "strategy": {"bucket_cap_mb": 1}}))) == 1
    # through the CLI: refused before any run directory exists
    proc = run_cli(["compile=true", "strategy=fsdp", *QUIET], cwd=workdir, check=False)
    assert proc.returncode == 2 and "strategy=fsdp2" in proc.stderr and not (workdir / "outputs").exists()
