"""Transfer learning and distillation: backbone loading and head replacement, freeze schedule,
discriminative learning rates, the distillation loss, and end-to-end runs through the CLI
(a Fashion-MNIST source run fine-tuned on MNIST-format files, a distilled two-process run)."""

import csv
import json
import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightdist.callbacks.distillation import Distillation
from lightdist.callbacks.transfer import (
    BackboneFreeze,
    BackboneLearningRate,
    InitFrom,
    transfer_callbacks,
)
from lightdist.config import resolvers
from lightdist.config.checks import preflight
from lightdist.errors import CheckpointError, ConfigError, LightdistError
from lightdist.tasks.classification import ClassificationTask
from lightdist.tasks.optim import build_optimizer
from lightdist.tasks.schedules import cosine
from lightdist.tasks.transfer import backbone_parameters, distillation_loss, load_backbone
from lightdist.vision.models.resnet import ResNet
from tests.helpers.cli import QUIET, REPO, cli_env, read_summary, run_cli, run_dirs
from tests.helpers.image_files import write_cifar100, write_mnist
from tests.helpers.text_files import write_ag_news

TINY_RESNET = ["model.width_multiplier=0.5"]
STATS = ("running_mean", "running_var", "num_batches_tracked")


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _classifier(model: nn.Module, num_classes: int) -> ClassificationTask:
    return ClassificationTask(model, num_classes, optimizer=partial(torch.optim.SGD, lr=0.1))


def _epoch_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))


# -- units ------------------------------------------------------------------------------------------
def test_distillation_loss_composition():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, -2.0], [0.0, 3.0, 0.0]])
    hard = torch.tensor(0.7)
    T, alpha = 2.0, 0.25
    total, soft = distillation_loss(student, teacher, hard, T, alpha)
    # by hand: KL(p_teacher || p_student) at temperature T, averaged over the batch, times T^2
    expected_kl = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / T) for v in s]
        pt = [math.exp(v / T) for v in t]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        expected_kl += sum(b * math.log(b / a) for a, b in zip(ps, pt)) / len(student)
    assert soft.item() == pytest.approx(expected_kl * T**2, rel=1e-5)
    assert total.item() == pytest.approx(alpha * expected_kl * T**2 + (1 - alpha) * 0.7, rel=1e-5)
    # identical logits: only the hard loss is left
    same, soft0 = distillation_loss(student, student, hard, T, alpha)
    assert soft0.item() == pytest.approx(0.0, abs=1e-6) and same.item() == pytest.approx(0.75 * 0.7)


def test_load_backbone_replaces_the_head_and_rejects_a_misfit(tmp_path):
    source = ResNet(20, in_channels=1, num_classes=10, width_multiplier=0.25)
    file = tmp_path / "fashion.pt"
    torch.save(source.state_dict(), file)

    target = ResNet(20, in_channels=1, num_classes=5, width_multiplier=0.25)
    fresh_head = target.head.weight.clone()
    report = load_backbone(target, file)
    assert report["skipped"] == ["head.weight", "head.bias"]
    for key, value in target.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, source.state_dict()[key]), key
    assert torch.equal(target.head.weight, fresh_head)

    wider = ResNet(20, in_channels=1, num_classes=10, width_multiplier=0.5)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"do not fit the backbone .*stem\.0\.weight \[4, 1, 3, 3\] vs \[8, 1"):
        load_backbone(wider, file)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # nothing half-loaded
    with pytest.raises(ConfigError, match="no `head`"):
        load_backbone(nn.Sequential(nn.Linear(2, 2)), file)


def test_discriminative_lr_groups_keep_weight_decay_grouping_and_follow_the_schedule():
    model = ResNet(20, in_channels=1, num_classes=3, width_multiplier=0.25)
    backbone = backbone_parameters(model)
    assert {id(p) for p in backbone}.isdisjoint(id(p) for p in model.head.parameters())
    opt = build_optimizer(partial(torch.optim.SGD, lr=0.1, weight_decay=5e-4), model,
                          scaled=backbone, lr_factor=0.1)
    groups = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    # head weight (decayed), head bias (not); backbone convs (decayed), backbone norms (not), at lr * 0.1
    assert groups == [(0.1, 5e-4, 1), (0.1, 0.0, 1), (pytest.approx(0.01), 5e-4, 21), (pytest.approx(0.01), 0.0, 42)]
    assert sum(n for *_, n in groups) == len(list(model.parameters()))
    sched = cosine(opt, total_steps=10, steps_per_epoch=5)["scheduler"]
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.005)  # halfway down the cosine, ratio kept
    # frozen parameters stay in the optimizer when asked (a freeze schedule unfreezes them later)
    model.stem.requires_grad_(False)
    assert sum(len(g["params"]) for g in build_optimizer(partial(torch.optim.SGD, lr=0.1), model).param_groups) == 62
    kept = build_optimizer(partial(torch.optim.SGD, lr=0.1), model, backbone, 0.1, include_frozen=True)
    assert sum(len(g["params"]) for g in kept.param_groups) == 65


def test_learning_rate_factors_survive_parameters_replaced_by_sharding():
    """strategy=fsdp2 replaces every parameter object (DTensor shards) after the callbacks' setup and
    before configure_optimizers: the factors must follow the parameters by name, not by identity."""
    task = _classifier(ResNet(20, in_channels=1, num_classes=3, width_multiplier=0.25), 3)
    BackboneLearningRate(0.1).setup(SimpleNamespace(), task, "fit")
    head_weight = task.model.head.weight
    task.scale_learning_rates({head_weight: 0.5})
    for module in task.modules():  # what fully_shard does to each module's parameters
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().clone()))
    task.trainer = SimpleNamespace(estimated_stepping_batches=10)
    task.optimizer_factory = partial(torch.optim.SGD, lr=1.0)
    task.scheduler_factory = None
    optimizer = task.configure_optimizers()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    backbone = backbone_parameters(task.model)
    assert backbone and all(lr_of[id(p)] == pytest.approx(0.1) for p in backbone)
    assert lr_of[id(task.model.head.weight)] == pytest.approx(0.5)  # the head is no backbone; its own factor
    assert lr_of[id(task.model.head.bias)] == 1.0


def test_init_from_loads_the_backbone_at_fit_and_not_on_resume(tmp_path):
    source = ResNet(20, in_channels=1, num_classes=10, width_multiplier=0.25)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    task = _classifier(ResNet(20, in_channels=1, num_classes=4, width_multiplier=0.25), 4)
    fresh = {k: v.clone() for k, v in task.model.state_dict().items()}
    callback = InitFrom(str(tmp_path / "w.pt"))
    for stage, ckpt_path in (("fit", "last.ckpt"), ("validate", None)):  # resumed: its own weights; no fit
        callback.setup(SimpleNamespace(ckpt_path=ckpt_path), task, stage)
        assert all(torch.equal(v, fresh[k]) for k, v in task.model.state_dict().items())
    callback.setup(SimpleNamespace(ckpt_path=None), task, "fit")
    loaded = task.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if not k.startswith("head."))
    assert torch.equal(loaded["head.weight"], fresh["head.weight"])  # 4 classes, not 10: a fresh head


def test_transfer_node_builds_only_the_callbacks_asked_for():
    assert transfer_callbacks() == []
    kinds = [type(c) for c in transfer_callbacks("w.pt", freeze_backbone_epochs=1, backbone_lr_factor=0.1)]
    assert kinds == [InitFrom, BackboneLearningRate, BackboneFreeze]
    task = _classifier(ResNet(20, in_channels=1, num_classes=3, width_multiplier=0.25), 3)
    BackboneLearningRate(0.1).setup(SimpleNamespace(), task, "fit")
    backbone = {id(p) for p in backbone_parameters(task.model)}
    assert task.scaled_names == {n for n, p in task.named_parameters() if id(p) in backbone}
    assert task.lr_factor == 0.1
    with pytest.raises(ConfigError, match="backbone_lr_factor must be >= 0"):
        transfer_callbacks(backbone_lr_factor=-1)


def test_distillation_hook_adds_the_kl_term_as_the_formula_says_in_float64():
    torch.manual_seed(0)
    task = _classifier(nn.Linear(5, 3).double(), 3)
    teacher = nn.Linear(5, 3).double()
    callback = Distillation(temperature=3.0, alpha=0.3)
    callback.teacher = teacher  # what setup loads from the teacher run
    task.add_loss_hook(callback.loss)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    logits = task(x)
    ce = F.cross_entropy(logits, y)
    with pytest.warns(UserWarning, match="self.log"):  # no trainer here to log to
        loss = task.training_loss((x, y), logits, ce)
    T = 3.0
    p_teacher = torch.softmax(teacher(x) / T, dim=-1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(logits / T, dim=-1))).sum(dim=-1).mean()
    expected = 0.3 * T**2 * kl + 0.7 * ce
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()  # the student learns from both terms; the teacher does not
    assert task.model.weight.grad is not None and teacher.weight.grad is None


@pytest.mark.parametrize("override, message", [
    ("distill.temprature=2", "temprature"),
    ("transfer.init_ckpt=lst", "allowed: 'best', 'last'"),
    ("+transfer.backbone_lr=0.1", "unknown key 'transfer.backbone_lr'"),
    ("transfer.init_from=/no/such/run", "transfer.init_from: /no/such/run does not exist"),
    ("distill.teacher=/no/such/run", "distill.teacher: /no/such/run does not exist"),
    # keys that left the task node name their new place
    ("task.init_from=/x", "'task.init_from' has moved to 'transfer.init_from'"),
    ("task.distill.teacher=/x", "moved to 'distill"),
    ("task.channels_last=true", "'task.channels_last' has moved to 'channels_last'"),
])
def test_preflight_rejects_typos_and_missing_sources(override, message):
    with pytest.raises(LightdistError, match=message.replace("(", r"\(").replace(".", r"\.")):
        preflight([override], with_data=False)


def test_preflight_accepts_every_transfer_option(tmp_path):
    resolvers.register()
    source = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, source)
    preflight([f"transfer.init_from={source}", "transfer.init_ckpt=last", "transfer.freeze_backbone_epochs=2",
               "transfer.backbone_lr_factor=0.1", "transfer.train_bn=false", "distill.temperature=2",
               "distill.alpha=0.9", "channels_last=true", "compile=eager"], with_data=False)
    preflight(["task=text_classification", "data=ag_news", "model=text_cnn", f"transfer.init_from={source}",
               "transfer.backbone_lr_factor=0.5"], with_data=False)


def test_finetune_experiment_needs_its_source_run(workdir):
    proc = run_cli(["+experiment=mnist_finetune_from_fashion", *QUIET], cwd=workdir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "lightdist: error: missing required value(s): transfer.init_from (transfer.init_from=<value>)")
    assert not (workdir / "outputs").exists()


def test_an_old_task_key_names_its_new_place_in_one_line(workdir):
    proc = run_cli(["task.freeze_backbone_epochs=1", *QUIET], cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "lightdist: error: 'task.freeze_backbone_epochs' has moved to 'transfer.freeze_backbone_epochs' "
        "(pass transfer.freeze_backbone_epochs=<value> instead)")


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST ResNet-20 run: the source of fine-tuning and the teacher of distillation."""
    workdir = tmp_path_factory.mktemp("fashion")
    run_cli(["+experiment=fashion_mnist_resnet", *TINY_RESNET, "data.train_subset=256", "data.val_subset=128",
             "data.test_subset=128", "data.batch_size=64", "trainer.max_epochs=1", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "fashion_mnist_resnet")
    return run_dir


def test_finetune_fashion_run_on_mnist_files(fashion_run, workdir):
    write_mnist(workdir / "data")
    run_cli(["+experiment=mnist_finetune_from_fashion", f"transfer.init_from={fashion_run}", *TINY_RESNET,
             f"data.root={workdir / 'data'}", "data.val_size=50", "data.batch_size=64", "trainer.max_epochs=2",
             "transfer.train_bn=false", "callbacks.model_checkpoint.save_top_k=-1", "trainer.log_every_n_steps=1",
             *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "mnist_finetune_from_fashion")
    source = _model_state(next(iter(_epoch_checkpoints(fashion_run))))
    after_frozen, after_unfrozen = (_model_state(p) for p in _epoch_checkpoints(run_dir))
    backbone = [k for k in source if not k.startswith("head.")]
    # epoch 0: the backbone is the source's, untouched (train_bn=false: norms and their statistics too)
    assert all(torch.equal(after_frozen[k], source[k]) for k in backbone if not k.endswith(STATS[2]))
    assert not torch.equal(after_frozen["head.weight"], source["head.weight"])  # the head trained
    # epoch 1: unfrozen, the backbone learns too
    assert not torch.equal(after_unfrozen["stem.0.weight"], source["stem.0.weight"])
    # discriminative learning rates: the backbone's groups at a tenth of the head's, all along the schedule
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-SGD/pg3")]
    assert rows and all(float(r["lr-SGD/pg3"]) == pytest.approx(0.1 * float(r["lr-SGD/pg1"])) for r in rows)
    assert "init_from" in (run_dir / "train.log").read_text()


def test_head_replaced_from_a_state_dict_file(workdir):
    """CIFAR-10-shaped weights (10 classes) fine-tuned on CIFAR-100 files: a new 100-class head."""
    write_cifar100(workdir / "data", n_train=200, n_test=100)
    source = ResNet(20, in_channels=3, num_classes=10, width_multiplier=0.25)
    torch.save(source.state_dict(), workdir / "cifar10.pt")
    args = ["data=cifar100", f"data.root={workdir / 'data'}", "data.val_size=100", "data.batch_size=50",
            "data.augment=null", "model=resnet20", "model.width_multiplier=0.25", "trainer.max_epochs=1",
            f"transfer.init_from={workdir / 'cifar10.pt'}", "transfer.freeze_backbone_epochs=1", "transfer.train_bn=false",
            "test_after_fit=false", *QUIET]
    run_cli(args, cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    tuned = _model_state(run_dir / "checkpoints" / "last.ckpt")
    assert tuned["head.weight"].shape == (100, 16)
    assert all(torch.equal(tuned[k], v) for k, v in source.state_dict().items()
               if not k.startswith("head.") and not k.endswith(STATS[2]))

    # weights of another architecture: one line naming the keys and the fix
    torch.save(ResNet(20, in_channels=3, num_classes=10, width_multiplier=0.5).state_dict(), workdir / "wide.pt")
    proc = run_cli([*args, f"transfer.init_from={workdir / 'wide.pt'}"], cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lightdist: error: the weights of") and "stem.0.weight [8, 3, 3, 3] vs [4, 3, 3, 3]" in last
    assert "pick the model" in last and "Traceback" not in proc.stderr


def test_distillation_over_two_gloo_processes(fashion_run, workdir):
    """Self-distillation (born-again): the student starts from the teacher's weights with its backbone
    frozen for an epoch, then unfrozen, all under DDP; ranks stay identical; the teacher stays out of
    the student's checkpoint."""
    run_cli(["+experiment=fashion_mnist_resnet", *TINY_RESNET, "trainer=cpu_ddp", "name=student",
             "data.train_subset=256", "data.val_subset=128", "data.test_subset=128", "data.batch_size=64",
             "trainer.max_epochs=2", "trainer.log_every_n_steps=1", f"distill.teacher={fashion_run}",
             "distill.temperature=2.0", "distill.alpha=0.7", f"transfer.init_from={fashion_run}",
             "transfer.freeze_backbone_epochs=1", "+callbacks.rank_sync._target_=tests.helpers.ddp_probe.RankSync",
             f"+callbacks.rank_sync.path={workdir / 'sync.jsonl'}", *QUIET],
            cwd=workdir, env=cli_env(PYTHONPATH=str(REPO)))
    (run_dir,) = run_dirs(workdir, "student")
    # both ranks hold the same weights after the frozen epoch and after the unfrozen one (DDP wrapped
    # again at unfreezing; without it the backbone's gradients would not be averaged)
    sync = [json.loads(line) for line in (workdir / "sync.jsonl").read_text().splitlines()]
    assert [(s["epoch"], s["max_difference"]) for s in sync] == [(0, 0.0), (1, 0.0)], sync
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["epochs"] == 2 and "test/acc" in summary["test"]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    kl = [float(r["train/distill_kl"]) for r in rows if r.get("train/distill_kl")]
    assert kl and all(math.isfinite(v) for v in kl)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    teacher_keys = set(_model_state(next(iter(_epoch_checkpoints(fashion_run)))))
    assert {k for k in ckpt["state_dict"] if k.startswith("model.")} == {f"model.{k}" for k in teacher_keys}
    assert not [k for k in ckpt["state_dict"] if "teacher" in k]
    assert "distill" not in ckpt["hyper_parameters"]  # composed onto the task, not one of its arguments


def test_text_distillation_shares_the_teacher_tokenizer(workdir):
    write_ag_news(workdir / "data", train_per_class=40, test_per_class=10)
    common = [f"data.corpus.root={workdir / 'data'}", "data.val_size=0.2", "trainer.max_epochs=1",
              "test_after_fit=false", *QUIET]
    # 1,000 hash buckets, not the recipe's million: a 256 MB embedding (and its Adam state, saved in
    # every checkpoint and read again as the teacher) would cost far more than the rest of the test
    run_cli(["+experiment=ag_news_fasttext", "name=teacher", "model.buckets=1000", *common], cwd=workdir)
    (teacher,) = run_dirs(workdir, "teacher")
    run_cli(["+experiment=ag_news_cnn", "name=student", f"data.tokenizer_file={teacher / 'tokenizer.json'}",
             f"distill.teacher={teacher}", "trainer.log_every_n_steps=1", *common], cwd=workdir)
    (student,) = run_dirs(workdir, "student")
    with open(student / "metrics.csv") as f:
        assert any(r.get("train/distill_kl") for r in csv.DictReader(f))
