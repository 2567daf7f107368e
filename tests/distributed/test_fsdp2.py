"""strategy=fsdp2 on CPU over gloo: the same training as DDP, real sharding, its options.

Every comparison runs in float64 (trainer.precision=64-true) with the settings of
test_strategies.py (GroupNorm, no dropout or augmentation, SGD): DDP and FSDP2 do the same
arithmetic on the same samples, and averaging gradients over 2 ranks is exact whether a rank
divides before or after the sum. The tolerances are not an allowance for another computation:
a last-bit difference (1e-16 in float64) grows about 4x per SGD step here (measured in float32),
so 8 steps stay below 1e-11, far under rtol 1e-9; a fault misses by far more (gradients summed
instead of averaged, or one shard not updated, move the loss by > 1e-2 within 8 steps).
HSDP runs 4 ranks of 16 samples against DDP's 2 of 32: the same 64 samples per step (the
DistributedSampler deals one permutation round-robin), averaged in another order, which the
same bound covers.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightdist.checkpoints import load_consolidated
from tests.distributed.test_strategies import train_losses
from tests.helpers.cli import QUIET, cli_env, read_summary, run_cli

SMALL = ["trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "logger=csv", *QUIET]
FP64 = ["trainer.precision=64-true", *SMALL]
IMAGE_32 = ["model.norm=group", "model.dropout=0.0", "model.channels=[8,16]", "model.hidden=64", "data.augment=null",
            "data.train_subset=512", "data.val_subset=64", "data.test_subset=64", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1", "optimizer=sgd", "optimizer.lr=0.05", "scheduler=none",
            "trainer.max_epochs=2", *SMALL]
IMAGE = [*IMAGE_32, "trainer.precision=64-true"]
TWO_RANKS = ["trainer=cpu_ddp", "data.batch_size=32"]
TEXT = ["+experiment=bbc_news_transformer", "trainer=cpu_ddp", "data.train_subset=128", "data.val_subset=32",
        "data.test_subset=32", "data.batch_size=16", "data.tokenizer.vocab_size=500", "data.tokenizer.max_length=64",
        "model.d_model=16", "model.ff_dim=32", "model.embedding_dropout=0.0", "model.dropout=0.0",
        "trainer.max_epochs=1", "trainer.limit_train_batches=4", "scheduler=none", *FP64]
# 3 greedy episodes on 2 ranks: 2 and 1, of different lengths (acting must not wait for the other rank)
RL = ["+experiment=rl_dqn_cartpole", "trainer=cpu_ddp", "trainer.devices=2", "data.batch_size=16",
      "data.buffer_size=80", "data.learning_starts=40", "data.batches_per_epoch=10", "trainer.max_epochs=1",
      "data.max_episode_steps=25", "model.hidden=[32]", "task.target_update_interval=4", "data.eval_episodes=3",
      "data.test_episodes=3", *FP64]
RTOL, ATOL = 1e-9, 1e-12
TORCHRUN_4 = ["--standalone", "--nproc-per-node=4", "-m", "lightdist"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of last.ckpt: a file (DDP) or a DCP directory (FSDP2), consolidated."""
    path = run_dir / "checkpoints" / "last.ckpt"
    state = load_consolidated(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=True)
    return state["state_dict"]


def train(tmp_path_factory, name: str, args: list[str], torchrun: bool = False) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp(name)
    proc = run_cli([*TORCHRUN_4, *args], cwd=cwd, module="torch.distributed.run") if torchrun else run_cli(args, cwd=cwd)
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    return run_dir, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory) -> dict[str, Path]:
    """2 epochs of 4 steps on 2 ranks, DDP and FSDP2, each tested from its best checkpoint."""
    return {strategy: train(tmp_path_factory, strategy, [f"strategy={strategy}", *TWO_RANKS, *IMAGE])[0]
            for strategy in ("ddp", "fsdp2")}


def assert_same_training(run: Path, reference: Path) -> None:
    losses, expected = train_losses(run), train_losses(reference)
    assert len(losses) == len(expected) > 0
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=RTOL, atol=ATOL)


def assert_same_weights(run: Path, reference: Path) -> None:
    weights, expected = final_weights(run), final_weights(reference)
    assert weights.keys() == expected.keys()  # the plain model's keys, no wrapper names
    for key, value in expected.items():
        assert weights[key].dtype == torch.float64, key
        torch.testing.assert_close(weights[key], value, rtol=RTOL, atol=ATOL, msg=key)


def test_image_losses_and_weights_equal_ddp(image_runs):
    assert_same_training(image_runs["fsdp2"], image_runs["ddp"])
    assert_same_weights(image_runs["fsdp2"], image_runs["ddp"])
    losses = train_losses(image_runs["fsdp2"])
    assert losses[-1] < losses[0]
    # tested after fit from its best checkpoint (a DCP directory), as DDP's
    summary, reference = read_summary(image_runs["fsdp2"]), read_summary(image_runs["ddp"])
    assert Path(summary["best_checkpoint"]).is_dir()
    # torchmetrics accumulates in float32: equal to a few float32 roundings
    assert summary["test"]["test/loss"] == pytest.approx(reference["test"]["test/loss"], rel=1e-5)


def test_model_state_per_rank_is_about_half_of_ddp(image_runs):
    ddp = read_summary(image_runs["ddp"])["model_state_bytes_per_rank"]
    fsdp2 = read_summary(image_runs["fsdp2"])["model_state_bytes_per_rank"]
    assert len(ddp) == len(fsdp2) == 2
    for rank in range(2):
        assert fsdp2[rank]["parameters"] == pytest.approx(ddp[rank]["parameters"] / 2, rel=0.02)
        assert fsdp2[rank]["total"] <= 0.55 * ddp[rank]["total"]


def test_activation_checkpointing_without_resharding_trains_the_same(image_runs, tmp_path_factory):
    run, _ = train(tmp_path_factory, "options", ["strategy=fsdp2", "strategy.activation_checkpointing=true",
                                                 "strategy.reshard_after_forward=false", *TWO_RANKS, *IMAGE])
    assert_same_training(run, image_runs["ddp"])
    assert_same_weights(run, image_runs["ddp"])


def test_hsdp_on_four_ranks_shards_in_pairs_and_trains_as_ddp(image_runs, tmp_path_factory):
    # torchrun starts the 4 single-thread ranks: the preflight refuses more ranks than cores when
    # lightdist starts them, and the test must not depend on the core count
    run, _ = train(tmp_path_factory, "hsdp", ["strategy=fsdp2", "strategy.replicas=2", "trainer=cpu_ddp",
                                             "trainer.devices=4", "threads_per_rank=1", "data.batch_size=16", *IMAGE],
                   torchrun=True)
    assert_same_weights(run, image_runs["ddp"])
    ddp = read_summary(image_runs["ddp"])["model_state_bytes_per_rank"]
    hsdp = read_summary(run)["model_state_bytes_per_rank"]
    assert len(hsdp) == 4
    for rank in range(4):  # shards of 2 (not 4) ranks: half of the parameters each
        assert hsdp[rank]["parameters"] == pytest.approx(ddp[0]["parameters"] / 2, rel=0.02)


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory) -> dict[str, Path]:
    return {s: train(tmp_path_factory, f"text-{s}", [f"strategy={s}", *TEXT])[0] for s in ("ddp", "fsdp2")}


def test_text_transformer_trains_as_ddp(text_runs):
    assert_same_training(text_runs["fsdp2"], text_runs["ddp"])
    assert_same_weights(text_runs["fsdp2"], text_runs["ddp"])


@pytest.fixture(scope="module")
def rl_runs(tmp_path_factory) -> dict[str, Path]:
    return {s: train(tmp_path_factory, f"rl-{s}", [f"strategy={s}", *RL])[0] for s in ("ddp", "fsdp2")}


def test_dqn_trains_and_evaluates_as_ddp(rl_runs):
    # target updates every 4 steps copy between sharded networks; greedy episodes act rank-locally
    assert_same_training(rl_runs["fsdp2"], rl_runs["ddp"])
    assert_same_weights(rl_runs["fsdp2"], rl_runs["ddp"])
    summary, reference = read_summary(rl_runs["fsdp2"]), read_summary(rl_runs["ddp"])
    assert summary["test"]["test/episodes"] == 3
    assert summary["test"] == pytest.approx(reference["test"], rel=1e-5)  # float32 metric states


def test_one_process_bf16_parameters_train(tmp_path_factory):
    """trainer=cpu (one process); bf16 compute, fp32 reduction and fp32 sharded parameters; cpu_offload
    has nothing to offload on CPU: one warning, and the run goes on."""
    run, output = train(tmp_path_factory, "bf16", [
        "strategy=fsdp2", "strategy.param_dtype=bfloat16", "strategy.reduce_dtype=float32", "strategy.cpu_offload=true",
        "trainer=cpu", "data.batch_size=64", *IMAGE_32])
    losses = train_losses(run)
    assert len(losses) == 8 and torch.isfinite(torch.tensor(losses)).all() and losses[-1] < losses[0]
    assert all(w.dtype == torch.float32 for w in final_weights(run).values())
    assert output.count("strategy.cpu_offload=true ignored") == 1


BF16_COMPUTE = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from lightdist.distributed.fsdp2 import shard_task
    from lightdist.vision.models.cnn import SimpleCNN

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    model = SimpleCNN(channels=(4, 8), hidden=16, norm="group", dropout=0.0)
    seen = []
    for conv in (model.body[0][0], model.head[-1]):
        conv.register_forward_pre_hook(lambda m, args: seen.append([str(m.weight.dtype), str(args[0].dtype)]))
    shard_task(model, [model], init_device_mesh("cpu", (1,)),
               mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    out = model(torch.randn(2, 1, 28, 28))
    out.float().sum().backward()
    weight = model.body[0][0].weight
    print(json.dumps({"seen": seen, "output": str(out.dtype), "sharded": str(weight.dtype),
                      "grad": str(weight.grad.dtype)}), flush=True)
    os._exit(0)
""")


def test_bf16_param_dtype_computes_in_bf16(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BF16_COMPUTE, str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["seen"] == [["torch.bfloat16", "torch.bfloat16"]] * 2  # weights and inputs, first and last layer
    assert found["output"] == "torch.bfloat16"
    assert found["sharded"] == found["grad"] == "torch.float32"  # kept and reduced in float32


def test_each_family_names_its_blocks_and_other_models_fall_back_to_structure():
    import torchvision
    from torch import nn

    from lightdist.distributed.fsdp2 import network_blocks
    from lightdist.rl.qnets import MLPQNetwork
    from lightdist.text.models.transformer import TransformerClassifier
    from lightdist.vision.models.cnn import SimpleCNN
    from lightdist.vision.models.resnet import BasicBlock, ResNet

    cnn = SimpleCNN(channels=(4, 8, 16))
    assert network_blocks(cnn) == list(cnn.body)
    resnet = ResNet(depth=20)
    assert len(network_blocks(resnet)) == 9 and all(isinstance(b, BasicBlock) for b in network_blocks(resnet))
    text = TransformerClassifier(vocab_size=50, num_classes=3, max_length=16, layers=3)
    assert network_blocks(text) == [text.embed, *text.encoder.layers]
    qnet = MLPQNetwork((4,), 2, hidden=(8, 8))
    assert network_blocks(qnet) and all(next(b.parameters(), None) is not None for b in network_blocks(qnet))
    # torchvision's ResNet: no plan of its own, its repeated blocks found by structure
    blocks = network_blocks(torchvision.models.resnet18(num_classes=3))
    assert len(blocks) == 8 and {type(b).__name__ for b in blocks} == {"BasicBlock"}
    assert network_blocks(nn.Linear(2, 2)) == []


def test_compile_reaches_the_strategy_and_the_family_is_its_own():
    from omegaconf import OmegaConf

    from lightdist.config.validate import strategy_family
    from lightdist.distributed.fsdp2 import FSDP2Strategy
    from lightdist.distributed.strategy import build_strategy

    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "strategy" / "fsdp2.yaml")
    trainer = OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})
    assert strategy_family(cfg) == "fsdp2"
    plain = build_strategy(cfg, trainer)
    assert isinstance(plain, FSDP2Strategy) and not plain.compiles_blocks
    compiled = build_strategy(cfg, trainer, compile=True)
    assert compiled.compiles_blocks and compiled.compile is True


def test_bad_replicas_is_one_line(tmp_path):
    proc = run_cli(["preflight", "strategy=fsdp2", "strategy.replicas=0"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("lightdist: error: strategy.replicas=0")
