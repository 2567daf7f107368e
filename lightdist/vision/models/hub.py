"""Classification models of the field: any torchvision or timm classifier, with pretrained weights.

`torchvision_model` and `timm_model` return the libraries' own nn.Modules, sized by the data
(num_classes, in_channels). Pretrained weights come from `weights` (a safetensors file or a
torch state dict, unpickled weights_only) when given, else from the library's standard cache
(torch hub for torchvision, the Hugging Face cache for most timm weights), downloading them
when online. Offline with neither, the error names the cache file and `model.weights`.

A model built with pretrained weights carries their normalisation statistics in
`pretrained_statistics` (read by lightdist.tasks.transfer.pretrained_statistics), which train.py hands to a data
module that can use them.
"""

import difflib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lightdist.errors import ConfigError

log = logging.getLogger(__name__)

# The attribute holding {"mean": (...), "std": (...)} of the weights a model was initialised with
# (the name tasks.transfer.pretrained_statistics reads: models import nothing of the rest of lightdist).
STATISTICS = "pretrained_statistics"


def _fit_channels(values: Any, in_channels: int) -> tuple[float, ...]:
    """RGB statistics for a model with `in_channels` inputs (greyscale: their mean, as the adapted conv sums RGB)."""
    values = [float(v) for v in values]
    if in_channels == len(values):
        return tuple(values)
    return tuple([sum(values) / len(values)] * in_channels)


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (weights_only: data, never code)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.weights: {file} does not exist",
                          hint="pass model.weights=<a .safetensors file or a torch state dict>")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file or one that needs more than weights_only allows
        raise ConfigError(f"model.weights: {file} is not a readable state dict ({type(exc).__name__}: {exc})",
                          hint="save it with safetensors.torch.save_file or torch.save(model.state_dict(), path)") \
            from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
        state = state["state_dict"]
        state = {k.removeprefix("model."): v for k, v in state.items()}
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights: {file} holds a {type(state).__name__}, not a state dict",
                          hint="save it with torch.save(model.state_dict(), path)")
    return state


def _offline(library: str, name: str, cache_file: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"no pretrained weights for {library} model {name}: not in the cache and cannot be downloaded "
                       f"({type(exc).__name__})",
                       hint=f"put the weights at {cache_file} or pass model.weights=<file>, or set "
                            "model.pretrained=false")


# ---- torchvision ---------------------------------------------------------------------------------


def _last_layer(model: nn.Module, kinds: tuple[type, ...]) -> tuple[str, nn.Module] | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            found = (name, module)
    return found


def _classifier_name(model: nn.Module) -> str:
    """The qualified name of a torchvision classifier's output layer: its last Linear (fc, classifier[-1],
    heads.head...), or its last convolution for the fully convolutional SqueezeNet."""
    found = _last_layer(model, (nn.Linear,)) or _last_layer(model, (nn.Conv2d,))
    assert found is not None, "a torchvision classifier has a Linear or Conv2d output layer"
    return found[0]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution (3 RGB inputs) with one taking `in_channels`; its pretrained RGB
    kernels are summed for greyscale and repeated for more channels (timm's adapt_input_conv)."""
    from timm.models import adapt_input_conv

    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_channels, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(model, name, new)


def _torchvision_weights(name: str, tag: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(name)[tag]
    except (KeyError, ValueError) as exc:
        tags = [w.name for w in tvm.get_model_weights(name)]
        raise ConfigError(f"torchvision model {name} has no weights {tag!r}",
                          hint=f"set model.weights_tag to DEFAULT or one of {', '.join(tags)}") from exc


def _torchvision_state(name: str, weights) -> dict[str, torch.Tensor]:
    """The weights' state dict from torch hub's cache, downloading it when it is not there."""
    cache_file = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if os.path.isfile(cache_file):
        return torch.load(cache_file, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False, weights_only=True)
    except OSError as exc:  # URLError and socket errors are OSErrors
        raise _offline("torchvision", name, cache_file, exc) from exc


def torchvision_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                      weights: str | None = None, weights_tag: str = "DEFAULT") -> nn.Module:
    """A torchvision classifier (torchvision.models.list_models(module=torchvision.models)).

    pretrained: start from the `weights_tag` weights of torchvision's catalogue (DEFAULT: the
    best ones), read from `weights` when given, else from the torch hub cache (downloaded
    when online). Weights for another number of classes get a fresh classifier; weights for
    RGB get their first convolution adapted to `in_channels`.
    """
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)  # classification models only (not detection, segmentation...)
    if name not in names:
        raise ConfigError(f"model.name: {name!r} is not a torchvision classification model{_suggest(name, names)}",
                          hint="pick one of torchvision.models.list_models(module=torchvision.models)")
    if not (pretrained or weights):
        model = tvm.get_model(name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            _adapt_first_conv(model, in_channels)
        return model
    catalogue = _torchvision_weights(name, weights_tag)
    state = read_state_dict(weights) if weights else _torchvision_state(name, catalogue)
    # Built for this data's classes, then loaded without the classifier when that does not fit:
    # get_model(weights=...) would insist on the catalogue's number of classes.
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    adapt_after = in_channels != 3
    if adapt_after and first in state and state[first].shape[1] == in_channels:  # weights for these channels
        _adapt_first_conv(model, in_channels)
        adapt_after = False
    head = _classifier_name(model) + "."
    target = model.state_dict()
    fresh = [k for k, v in state.items() if k.startswith(head) and k in target and v.shape != target[k].shape]
    state = {k: v for k, v in state.items() if k not in fresh}
    _check_fits(f"torchvision {name}", state, target, set(fresh), weights or weights_tag)
    model.load_state_dict(state, strict=False)
    if fresh:
        log.info("%s: pretrained classifier (%s) replaced by a fresh one for %d classes", name, head[:-1], num_classes)
    if adapt_after:
        _adapt_first_conv(model, in_channels)
    preset = catalogue.transforms()
    setattr(model, STATISTICS, {"mean": _fit_channels(preset.mean, in_channels),
                                "std": _fit_channels(preset.std, in_channels)})
    return model


# ---- timm ----------------------------------------------------------------------------------------


def _timm_cache_file(cfg: dict[str, Any]) -> str:
    """Where timm looks for a model's pretrained weights (Hugging Face cache, else torch hub's)."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = cfg["hf_hub_id"].split("@")[0]
        return os.path.join(HF_HUB_CACHE, "models--" + repo.replace("/", "--"), "snapshots", "<revision>",
                            cfg.get("hf_hub_filename", "model.safetensors"))
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.get("url", "")).path))


def _timm_cached(name: str) -> str | None:
    """The cached weights file of timm model `name`, when the cache holds it: read directly, because
    huggingface_hub asks the network first (and retries for about a minute when offline)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(cached):
            return cached
    return None


def _check_fits(model: str, state: dict[str, Any], target: dict[str, Any], adapted: set[str], source: Any) -> None:
    """One line when `state` is not a state dict of `model` (keys in `adapted` may be absent or differ):
    load_state_dict(strict=False), which replacing a classifier needs, would load such a file silently."""
    missing = [k for k in target if k not in state and k not in adapted]
    unexpected = [k for k in state if k not in target]
    misfit = [k for k in state if k in target and k not in adapted and state[k].shape != target[k].shape]
    if missing or unexpected or misfit:
        parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("not in the model", unexpected), ("other shape", misfit))
                 if keys]
        raise ConfigError(f"model.weights: {source} does not fit {model} ({'; '.join(parts)})",
                          hint="pass weights saved from the same model (and model.name)")


def _timm_adapted(model: nn.Module) -> set[str]:
    """The keys timm itself replaces (classifier) or adapts (first convolution) when it loads weights."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    first = model.pretrained_cfg.get("first_conv") or ()
    first = (first,) if isinstance(first, str) else tuple(first)
    return {f"{n}.{p}" for n in heads for p in ("weight", "bias")} | {f"{n}.weight" for n in first}


def timm_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
               weights: str | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm model (timm.list_models()); `name` may carry a pretrained tag (resnet50.a1_in1k).

    pretrained: start from the tag's weights, read from `weights` when given, else from timm's
    cache (downloaded when online); timm fits the classifier to num_classes and the first
    convolution to in_channels itself.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"model.name: {name!r} is not a timm model{_suggest(name, timm.list_models())}",
                          hint="pick one of timm.list_models() (timm.list_models('*resnet*') to search)")
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_channels, drop_rate=drop_rate,
                                  drop_path_rate=drop_path_rate)
    if weights:
        file = Path(weights).expanduser()
        # One line for a missing, unsafe or unfitting file, before timm reads it: timm loads with
        # strict=False whenever it replaces the classifier, so a file of another model would load nothing.
        blank = timm.create_model(name, pretrained=False, **kwargs)
        _check_fits(f"timm {name}", read_state_dict(file), blank.state_dict(), _timm_adapted(blank), file)
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file))
    elif pretrained and (cached := _timm_cached(name)):
        kwargs["pretrained_cfg_overlay"] = dict(file=cached)
    try:
        model = timm.create_model(name, pretrained=bool(pretrained or weights), **kwargs)
    except RuntimeError as exc:  # load_state_dict refusing the file's keys or shapes
        lines = str(exc).splitlines()
        raise ConfigError(f"the weights {weights} do not fit timm {name}: {(lines[1] if len(lines) > 1 else lines[0]).strip()}",
                          hint="pass weights saved from the same timm model (model.weights)") from exc
    except OSError as exc:  # not cached and offline (huggingface_hub and urllib errors are OSErrors)
        cfg = timm.models.get_pretrained_cfg(name) or {}
        raise _offline("timm", name, _timm_cache_file(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)),
                       exc) from exc
    if pretrained or weights:
        cfg = model.pretrained_cfg
        setattr(model, STATISTICS, {"mean": _fit_channels(cfg["mean"], in_channels),
                                    "std": _fit_channels(cfg["std"], in_channels)})
    return model
