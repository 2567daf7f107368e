"""Models of the field (model=torchvision, model=timm): sized by the data, pretrained weights from a
local file (never downloaded here), one line when offline without weights, their normalisation
statistics; transfer learning, distillation, channels_last, compile, bf16 and FSDP wrap units
with them. Weights are tiny models' state dicts written to tmp."""

import csv
import logging
import math
from functools import partial

import lightning as L
import pytest
import timm
import torch
import torchvision.models as tvm
from lightning.pytorch.callbacks import BaseFinetuning
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightdist.callbacks.model_options import ModelOptions
from lightdist.callbacks.transfer import transfer_callbacks
from lightdist.distributed.sharding import block_classes, check_module, fsdp
from lightdist.errors import ConfigError
from lightdist.tasks.classification import ClassificationTask
from lightdist.tasks.transfer import (
    backbone_modules,
    head_name,
    head_of,
    load_backbone,
    pretrained_statistics,
)
from lightdist.vision.models.hub import timm_model, torchvision_model
from lightdist.vision.models.resnet import ResNet
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs
from tests.helpers.image_files import write_class_folders

# Tiny models: timm's test_* models are made for tests (0.4M parameters for test_resnet).
TIMM = "test_resnet"
SMALL = ["data.train_subset=64", "data.val_subset=32", "data.test_subset=32", "data.batch_size=16",
         "trainer.max_epochs=1", *QUIET]


# -- builders ---------------------------------------------------------------------------------------
def test_torchvision_model_takes_classes_and_channels_from_the_data():
    model = torchvision_model("resnet18", num_classes=7, in_channels=1)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    assert pretrained_statistics(model) is None  # not pretrained: the data's own statistics apply


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_weights_file_loads_with_a_fresh_head_and_a_greyscale_stem(tmp_path, suffix, caplog):
    source = tvm.resnet18()  # 1000 classes, RGB
    file = tmp_path / f"resnet18{suffix}"
    save_file(source.state_dict(), file) if suffix == ".safetensors" else torch.save(source.state_dict(), file)
    with caplog.at_level(logging.INFO):
        model = torchvision_model("resnet18", num_classes=10, in_channels=1, pretrained=True, weights=str(file))
    assert "replaced by a fresh one" in caplog.text
    assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    # greyscale stem: the RGB kernels summed, so a grey image gives what the RGB model gives it
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert model.fc.out_features == 10
    mean, std = pretrained_statistics(model)
    assert len(mean) == len(std) == 1 and mean[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3)


def test_torchvision_greyscale_weights_load_into_a_greyscale_model(tmp_path):
    source = torchvision_model("resnet18", num_classes=10, in_channels=1)  # e.g. a model trained here
    torch.save(source.state_dict(), tmp_path / "grey.pt")
    model = torchvision_model("resnet18", num_classes=10, in_channels=1, weights=str(tmp_path / "grey.pt"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_torchvision_classifier_in_a_sequential_is_replaced(tmp_path):
    source = tvm.mobilenet_v3_small()
    torch.save(source.state_dict(), tmp_path / "m.pt")
    model = torchvision_model("mobilenet_v3_small", num_classes=3, weights=str(tmp_path / "m.pt"))
    assert model.classifier[-1].out_features == 3
    assert torch.equal(model.classifier[0].weight, source.classifier[0].weight)  # only the last layer is new
    rgb = pretrained_statistics(model)
    assert rgb[0] == pytest.approx((0.485, 0.456, 0.406))


def test_weights_of_another_model_are_one_line(tmp_path):
    torch.save(tvm.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ConfigError, match="does not fit torchvision resnet34 .missing: layer1.2"):
        torchvision_model("resnet34", num_classes=10, weights=str(tmp_path / "r18.pt"))
    torch.save(tvm.resnet34().state_dict(), tmp_path / "r34.pt")  # a superset of resnet18's keys
    with pytest.raises(ConfigError, match="does not fit torchvision resnet18 .not in the model: layer1.2"):
        torchvision_model("resnet18", num_classes=10, weights=str(tmp_path / "r34.pt"))
    torch.save(timm.create_model(TIMM).state_dict(), tmp_path / "t.pt")
    with pytest.raises(ConfigError, match="does not fit timm test_vit") as err:
        timm_model("test_vit", num_classes=10, weights=str(tmp_path / "t.pt"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        timm_model(TIMM, num_classes=10, weights=str(tmp_path / "nothing.pt"))


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        torchvision_model("resnet81", num_classes=10)
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        torchvision_model("fasterrcnn_resnet50_fpn", num_classes=10)
    with pytest.raises(ConfigError, match="did you mean test_resnet"):
        timm_model("test_resnett", num_classes=10)


def test_timm_weights_file_fits_classes_and_channels(tmp_path):
    source = timm.create_model(TIMM)
    save_file(source.state_dict(), tmp_path / "t.safetensors")
    model = timm_model(TIMM, num_classes=5, in_channels=1, weights=str(tmp_path / "t.safetensors"))
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert torch.allclose(model.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))
    assert pretrained_statistics(model) == ((0.5,), (0.5,))  # test_resnet's pretrained_cfg, averaged for grey
    assert pretrained_statistics(timm_model(TIMM, num_classes=5)) is None


def test_offline_without_weights_is_one_line_naming_the_cache_and_the_option(tmp_path, monkeypatch):
    # torch hub and the Hugging Face cache point at empty folders; downloads fail at once.
    import huggingface_hub.constants

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ConfigError) as err:
        torchvision_model("resnet18", num_classes=10, pretrained=True)
    text = f"{err.value} {err.value.hint}"
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in text and "model.weights=" in text
    with pytest.raises(ConfigError) as err:
        timm_model(TIMM, num_classes=10, pretrained=True)
    text = f"{err.value} {err.value.hint}"
    assert "models--timm--test_resnet" in text and "model.weights=" in text


def test_torchvision_cache_is_read_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    source = tvm.resnet18()
    torch.save(source.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    model = torchvision_model("resnet18", num_classes=1000, pretrained=True)
    assert torch.equal(model.fc.weight, source.fc.weight)  # same classes: the pretrained classifier is kept


def test_timm_cache_is_read(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network in tests
    repo = tmp_path / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    source = timm.create_model(TIMM)
    save_file(source.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    model = timm_model(TIMM, num_classes=4, pretrained=True)
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert pretrained_statistics(model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# -- end to end -------------------------------------------------------------------------------------
def test_timm_pretrained_run_trains_and_evaluates(workdir):
    weights = workdir / "test_resnet.safetensors"
    save_file(timm.create_model(TIMM).state_dict(), weights)
    run_cli(["model=timm", f"model.name={TIMM}", "model.pretrained=true", f"model.weights={weights}", *SMALL],
            cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    summary = read_summary(run_dir)
    assert summary["test"]["test/acc"] >= 0.0 and (run_dir / "checkpoints").is_dir()


def test_offline_pretrained_run_is_one_line(workdir):
    proc = run_cli(["model=torchvision", "model.name=resnet18", "model.pretrained=true",
                    "model.weights=/nowhere/r18.pt", *SMALL], cwd=workdir, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightdist: error:")]
    assert len(errors) == 1 and "model.weights" in errors[0], proc.stderr[-2000:]


def test_pretrained_statistics_normalise_an_image_folder_and_the_run_reloads_without_the_weights(workdir):
    weights = workdir / "test_resnet.pt"
    torch.save(timm.create_model(TIMM).state_dict(), weights)  # test_resnet's statistics: mean = std = 0.5
    write_class_folders(workdir / "images", {"red": (200, 40, 40), "green": (40, 200, 40)}, per_class=12)
    run_cli(["data=image_folder", f"data.path={workdir / 'images'}", "data.image_size=32", "data.batch_size=8",
             "model=timm", f"model.name={TIMM}", f"model.weights={weights}", "model.pretrained=true",
             "trainer.max_epochs=1", *QUIET], cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for v in checkpoint.values() if isinstance(v, dict) and "mean" in v)  # the data module's
    assert state["mean"] == pytest.approx([0.5] * 3) and state["std"] == pytest.approx([0.5] * 3)
    # the checkpoint holds every weight: eval rebuilds the model without its pretrained file
    weights.unlink()
    run_cli(["eval", f"run_dir={run_dir}"], cwd=workdir)
    assert list((run_dir / "eval").glob("*/report.json"))


# -- transfer learning, distillation -----------------------------------------------------------------
def _tiny_torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
                             num_classes=3)


@pytest.mark.parametrize(("build", "head"), [
    (lambda: torchvision_model("resnet18", num_classes=3), "fc"),
    (lambda: torchvision_model("mobilenet_v3_small", num_classes=3), "classifier"),
    (_tiny_torchvision_vit, "heads"),
    (lambda: timm_model("test_convnext", num_classes=3), "head.fc"),  # timm's get_classifier(), nested
    (lambda: timm_model("test_vit", num_classes=3), "head"),
    (lambda: ResNet(20, in_channels=1, num_classes=3, width_multiplier=0.25), "head"),
], ids=["tv-resnet18", "tv-mobilenet", "tv-vit", "timm-convnext", "timm-vit", "lightdist-resnet"])
def test_head_is_found_and_freezing_the_backbone_leaves_only_it_trainable(build, head):
    model = build()
    assert head_name(model) == head and head_of(model) is model.get_submodule(head)
    BaseFinetuning.freeze(backbone_modules(model), train_bn=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    BaseFinetuning.make_trainable(backbone_modules(model))
    assert all(p.requires_grad for p in model.parameters())  # a ViT's pos_embed and cls_token too


def test_timm_backbone_loads_across_class_counts(tmp_path):
    source = timm_model("test_convnext", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "source.pt")
    target = timm_model("test_convnext", num_classes=4)
    result = load_backbone(target, tmp_path / "source.pt")
    assert set(result["skipped"]) == {"head.fc.weight", "head.fc.bias"}
    assert torch.equal(target.head.norm.weight, source.head.norm.weight)  # the norm before the head is backbone
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)


E2E = ["data.train_subset=64", "data.val_subset=32", "data.test_subset=32", "data.batch_size=16", *QUIET]


def _model_state(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.parametrize(("model", "head"), [(["model=timm", f"model.name={TIMM}"], "fc.")], ids=["timm"])
def test_freeze_then_unfreeze_and_distil_from_the_run(model, head, workdir):
    source = workdir / "source.pt"
    run_cli([*model, "trainer.max_epochs=1", "name=source", "test_after_fit=false", *E2E], cwd=workdir)
    (teacher,) = run_dirs(workdir, "source")
    torch.save(_model_state(teacher / "checkpoints" / "last.ckpt"), source)
    run_cli([*model, "trainer.max_epochs=2", f"transfer.init_from={source}", "transfer.freeze_backbone_epochs=1",
             "transfer.train_bn=false", "callbacks.model_checkpoint.save_top_k=-1", "name=tuned",
             f"distill.teacher={teacher}", "trainer.log_every_n_steps=1", *E2E], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "tuned")
    start = torch.load(source, weights_only=True)
    frozen, unfrozen = (_model_state(p) for p in sorted((run_dir / "checkpoints").glob("epoch*.ckpt")))
    backbone = [k for k in start if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(frozen[k], start[k]) for k in backbone)  # epoch 0: frozen
    assert not all(torch.equal(frozen[k], start[k]) for k in start if k.startswith(head))  # the head learned
    assert not all(torch.equal(unfrozen[k], start[k]) for k in backbone)  # epoch 1: the backbone learns too
    with open(run_dir / "metrics.csv") as f:
        assert any(r.get("train/distill_kl") for r in csv.DictReader(f))


def test_torchvision_backbone_freezes_then_unfreezes():
    """The same schedule in process, on a torchvision model whose head is a Sequential (`classifier`)."""
    model = torchvision_model("mobilenet_v3_small", num_classes=3, in_channels=1)
    task = ClassificationTask(model, 3, optimizer=partial(torch.optim.SGD, lr=0.1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    after_epoch: list[dict[str, torch.Tensor]] = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            after_epoch.append({k: v.clone() for k, v in model.state_dict().items()})

    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[*transfer_callbacks(freeze_backbone_epochs=1, train_bn=False), Snapshot()])
    trainer.fit(task, _images(16, 1, 32))
    backbone = [k for k in start if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")]
    frozen, unfrozen = after_epoch
    assert all(torch.equal(frozen[k], start[k]) for k in backbone)
    assert not torch.equal(frozen["classifier.0.weight"], start["classifier.0.weight"])
    assert not all(torch.equal(unfrozen[k], start[k]) for k in backbone)


# -- speed options, precision, FSDP wrap units ---------------------------------------------------------
def _images(n: int, channels: int, size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(n, channels, size, size, generator=g),
                                    torch.randint(0, 3, (n,), generator=g)), batch_size=4)


@pytest.mark.parametrize("option", ["channels_last", "compile", "bf16"])
@pytest.mark.parametrize("build", [lambda: timm_model(TIMM, num_classes=3, in_channels=1),
                                   lambda: torchvision_model("squeezenet1_1", num_classes=3, in_channels=1)],
                         ids=["timm", "torchvision"])
def test_speed_options_and_bf16_train_a_few_steps(build, option):
    torch.manual_seed(0)
    model = build()
    task = ClassificationTask(model, 3, optimizer=partial(torch.optim.SGD, lr=0.05))
    before = [p.detach().clone() for p in model.parameters()]
    callbacks = [ModelOptions(channels_last=option == "channels_last", compile="eager" if option == "compile" else False)]
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        precision="bf16-mixed" if option == "bf16" else "32-true", accelerator="cpu", devices=1)
    trainer.fit(task, _images(8, 1, 32), _images(4, 1, 32))
    assert trainer.global_step == 2 and math.isfinite(trainer.callback_metrics["val/loss"].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a 3x3 kernel over several channels: its layout tells NHWC from NCHW
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (option == "channels_last")


@pytest.mark.parametrize(("build", "blocks"), [
    (lambda: torchvision_model("resnet18", num_classes=3), {"BasicBlock"}),
    (lambda: torchvision_model("efficientnet_b0", num_classes=3), {"MBConv"}),
    (_tiny_torchvision_vit, {"EncoderBlock"}),
    (lambda: timm_model("test_vit", num_classes=3), {"Block"}),
    (lambda: timm_model(TIMM, num_classes=3), {"BasicBlock"}),
    (lambda: ResNet(20, in_channels=1, num_classes=3, width_multiplier=0.25), {"BasicBlock"}),
], ids=["tv-resnet18", "tv-efficientnet", "tv-vit", "timm-vit", "timm-resnet", "lightdist-resnet"])
def test_fsdp_blocks_are_the_wrap_units(build, blocks):
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    model = build()
    assert {c.__name__ for c in block_classes(model)} == blocks
    strategy = fsdp(device_type="cpu", auto_wrap_modules=["blocks"])
    assert "auto_wrap_policy" not in strategy.kwargs  # decided once the model exists
    check_module(strategy, model)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    wrapped = {type(m).__name__ for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)}
    assert wrapped == blocks
