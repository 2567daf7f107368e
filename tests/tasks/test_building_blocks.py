"""Unit tests of the pieces the tasks are made of: splits, samplers, optimizer groups, schedules, models."""

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightdist.data.samplers import UnpaddedDistributedSampler
from lightdist.data.splits import stratified_split, stratified_subset
from lightdist.errors import ConfigError
from lightdist.tasks import schedules
from lightdist.tasks.base import Task
from lightdist.tasks.metrics import save_confusion_matrix
from lightdist.tasks.optim import build_optimizer, param_groups
from lightdist.vision.augment import ImageAugmentation, RandomHorizontalFlip
from lightdist.vision.models.cnn import SimpleCNN
from lightdist.vision.models.resnet import ResNet


def test_stratified_split_is_seeded_disjoint_and_proportional():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    keep, held = stratified_split(labels, 40, seed=3)
    assert len(held) == 40 and len(keep) == 160 and not set(keep) & set(held)
    assert np.bincount(labels[held]).tolist() == [20, 10, 6, 4]
    keep2, held2 = stratified_split(labels, 40, seed=3)
    assert np.array_equal(held, held2)
    assert not np.array_equal(held, stratified_split(labels, 40, seed=4)[1])
    assert len(stratified_split(labels, 0.25, seed=0)[1]) == 50
    assert np.bincount(labels[stratified_subset(labels, 20, seed=0)]).tolist() == [10, 5, 3, 2]


@pytest.mark.parametrize("n", [10, 11, 13])
def test_unpadded_sampler_sees_every_sample_once(n):
    world = 3
    seen = [i for r in range(world) for i in UnpaddedDistributedSampler(range(n), world, r)]
    assert sorted(seen) == list(range(n))
    assert sum(len(UnpaddedDistributedSampler(range(n), world, r)) for r in range(world)) == n


def test_weight_decay_skips_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2),
                          nn.LSTM(2, 2))
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model[0].weight), id(model[3].weight), id(model[5].weight_ih_l0), id(model[5].weight_hh_l0)}
    # the same answer when every parameter is a flattened 1-D view, as under FSDP
    with torch.no_grad():
        for sub in model.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                setattr(sub, name, nn.Parameter(p.reshape(-1)))
    assert len(param_groups(model, 0.1)[0]["params"]) == 4
    from functools import partial
    opt = build_optimizer(partial(torch.optim.SGD, lr=0.1, weight_decay=5e-4), model)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]


def _lrs(sched_dict, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched_dict["scheduler"].step()
    return lrs


def test_cosine_with_warmup_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(schedules.cosine(opt, total_steps=110, steps_per_epoch=10, warmup_epochs=1.0,
                                warmup_start_factor=0.0, min_lr_ratio=0.1), opt, 111)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lrs[110] == pytest.approx(0.1)


def test_schedule_follows_config_after_resume_with_a_longer_plan():
    """A checkpoint stores the step count only: resuming with more epochs stretches the plan, never fails."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    short = schedules.one_cycle(opt, total_steps=20, steps_per_epoch=10)["scheduler"]
    for _ in range(20):
        opt.step()
        short.step()
    state = short.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    longer = schedules.one_cycle(opt2, total_steps=30, steps_per_epoch=10)["scheduler"]
    longer.load_state_dict(state)
    for _ in range(10):
        opt2.step()
        longer.step()
    assert longer.last_epoch == 30 and opt2.param_groups[0]["lr"] < 1e-3


def test_step_and_one_cycle_and_plateau():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    lrs = _lrs(schedules.step_decay(opt, total_steps=100, steps_per_epoch=10, step_epochs=3, gamma=0.5), opt, 61)
    assert lrs[29] == 1.0 and lrs[30] == 0.5 and lrs[60] == 0.25
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    lrs = _lrs(schedules.one_cycle(opt, total_steps=100, steps_per_epoch=10, pct_start=0.3), opt, 100)
    assert max(lrs) == pytest.approx(1.0) and int(np.argmax(lrs)) == 30 and lrs[0] == pytest.approx(1 / 25)
    assert lrs[-1] < 1e-3 and lrs[65] == pytest.approx((1 + 1 / 25e4) / 2, rel=1e-3)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = schedules.plateau(opt, 100, 10, monitor="val/acc", mode="max", patience=0)
    assert cfg["monitor"] == "val/acc" and cfg["interval"] == "epoch"


@pytest.mark.parametrize("depth,params", [(18, 11.17e6), (34, 21.28e6), (20, 0.27e6), (56, 0.85e6)])
def test_resnet_sizes_match_the_papers(depth, params):
    model = ResNet(depth=depth, in_channels=3, num_classes=10)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(params, rel=0.03)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_simple_cnn_and_resnet_on_28px_single_channel():
    x = torch.randn(3, 1, 28, 28)
    assert SimpleCNN(in_channels=1, num_classes=10, image_size=28)(x).shape == (3, 10)
    assert ResNet(depth=20, in_channels=1, num_classes=7)(x).shape == (3, 7)
    assert SimpleCNN(channels=(8, 16, 32), image_size=28)(x).shape == (3, 10)


def test_augmentation_keeps_shapes_and_changes_pixels():
    torch.manual_seed(0)
    aug = ImageAugmentation(crop_padding=4, horizontal_flip=True, rotation_degrees=15, translate=0.1, zoom=0.1,
                            random_erasing=1.0)
    x = torch.rand(16, 3, 32, 32)
    y = aug(x)
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert not ImageAugmentation().enabled


def test_horizontal_flip_mirrors_each_image_or_leaves_it_as_it_was():
    torch.manual_seed(0)
    x = torch.arange(64 * 2 * 3 * 5, dtype=torch.float64).reshape(64, 2, 3, 5)
    y = RandomHorizontalFlip()(x)
    mirrored = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(m != k for m, k in zip(mirrored, kept))  # every image is one or the other, alone
    assert 16 <= sum(mirrored) <= 48  # a coin per image, not one for the batch (P(outside) < 1e-4)


def test_confusion_matrix_figure_shows_every_count_under_its_class_names(tmp_path):
    counts = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 3, 9]])
    fig = save_confusion_matrix(counts, ["cat", "dog", "fox"], tmp_path / "cm.png", title="t")
    ax = fig.axes[0]
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert [t.get_text() for t in ax.texts] == [str(c) for c in counts.flatten().tolist()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "fox"]
    assert ax.images[0].get_array().tolist() == counts.tolist()


class _PlanProbe(L.LightningModule):
    """Records what a schedule would be given: plan_lengths(trainer) in configure_optimizers."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.plan = None

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        from lightdist.tasks.schedules import plan_lengths

        self.plan = plan_lengths(self.trainer)
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("max_epochs, max_steps, plan", [(-1, 3, (3, 8)), (2, -1, (16, 8)), (-1, -1, None)])
def test_schedule_plan_lengths_for_every_way_of_ending_a_run(max_epochs, max_steps, plan, tmp_path):
    """trainer.max_epochs=-1 with max_steps set used to crash the schedule (an infinite batch count)."""
    from torch.utils.data import DataLoader, TensorDataset

    from lightdist.errors import ConfigError

    probe = _PlanProbe()
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)  # 8 batches an epoch
    if plan is None:
        with pytest.raises(ConfigError, match="trainer.max_steps"):
            trainer.fit(probe, data)
        return
    trainer.fit(probe, data)
    assert probe.plan == plan


class _TwoPartTask(Task):
    """The Task base around a body and a head: what the optimizer plumbing sees of any task."""

    def __init__(self, **optimizer):
        super().__init__(partial(torch.optim.SGD, **optimizer))
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)


def test_task_base_groups_split_weight_decay_and_scale_the_learning_rate():
    task = _TwoPartTask(lr=0.1, weight_decay=1e-2)
    groups = lambda opt: [(g["lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in opt.param_groups]  # noqa: E731
    weights = {id(task.body[0].weight), id(task.head.weight)}
    undecayed = {id(p) for p in task.parameters()} - weights  # biases and the norm's scale and shift
    assert groups(task.configure_optimizers()) == [(0.1, 1e-2, weights), (0.1, 0.0, undecayed)]
    # a callback (a fine-tuned backbone) asks for the body at a fraction of the rate
    task.scale_learning_rate(task.body.parameters(), 0.25)
    body = {id(p) for p in task.body.parameters()}
    assert groups(task.configure_optimizers()) == [
        (0.1, 1e-2, weights - body), (0.1, 0.0, undecayed - body),
        (pytest.approx(0.025), 1e-2, weights & body), (pytest.approx(0.025), 0.0, undecayed & body)]
    # frozen parameters are left out, unless the optimizer must hold them from the start (a freeze schedule)
    task.body.requires_grad_(False)
    assert sum(len(g["params"]) for g in task.configure_optimizers().param_groups) == 2
    task.optimize_frozen = True
    assert sum(len(g["params"]) for g in task.configure_optimizers().param_groups) == len(list(task.parameters()))
    with pytest.raises(ConfigError, match="optimizer.lr"):  # a scaled rate needs the base rate
        scaled = _TwoPartTask()
        scaled.scale_learning_rate(scaled.body.parameters(), 0.5)
        scaled.configure_optimizers()


def test_model_options_compile_in_place_and_go_channels_last():
    """compile keeps the checkpoint keys of the plain model; channels_last turns weights and inputs NHWC."""
    from types import SimpleNamespace

    from lightdist.callbacks.model_options import ModelOptions
    from lightdist.tasks.classification import ClassificationTask

    torch.manual_seed(0)
    model = SimpleCNN(in_channels=3, num_classes=3, channels=(4, 8), hidden=16).double().eval()
    task = ClassificationTask(model, 3, partial(torch.optim.SGD, lr=0.1))
    x = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    plain, keys = task(x), list(task.state_dict())
    options = ModelOptions(channels_last=True, compile="eager")
    for stage in ("fit", "test"):  # applied once to a model both stages share
        options.setup(SimpleNamespace(), task, stage)
    seen = []  # what the model receives, after the conversion hook (hooks run in order)
    model.register_forward_pre_hook(lambda _, args: seen.append((args[0].is_contiguous(),
                                                                 torch.compiler.is_compiling())))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    torch.testing.assert_close(task(x), plain, rtol=1e-12, atol=1e-12)
    assert seen == [(False, True)]  # NHWC, not NCHW-contiguous; traced by torch.compile
    assert list(task.state_dict()) == keys
