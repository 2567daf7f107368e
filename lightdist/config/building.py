"""Objects built from config nodes: an error while building one names the node and the key to fix.

A constructor that refuses a value (torch's "Invalid learning rate: -1", a scheduler's
"Factor should be < 1.0") says what is wrong but not where it came from. `building(group,
spec)` wraps the construction; ValueError/TypeError (directly or through Hydra's
InstantiationException) become one ConfigError naming the config group, the target and,
when it can be told from the message, the key:

    optimizer (torch.optim.adamw.AdamW): Invalid learning rate: -1 (check optimizer.lr)
"""

import contextlib
import re
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

from lightdist.compat import node_key, raw_value
from lightdist.errors import ConfigError, LightdistError, one_line

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _refusals() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this value is refused" rather than "this code is broken"."""
    import sys

    from hydra.errors import InstantiationException

    kinds: tuple[type[BaseException], ...] = (ValueError, TypeError, InstantiationException)
    if "lightning" in sys.modules:  # importing Lightning only to name its error costs seconds
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        kinds += (MisconfigurationException,)
    return kinds


@contextlib.contextmanager
def building(group: str, spec: Any = None) -> Iterator[None]:
    """Build the object of config node `group` (`spec`: its node, or the partial made from it)."""
    try:
        yield
    except LightdistError:
        raise
    except Exception as exc:
        if not isinstance(exc, _refusals()):
            raise
        raise explain(exc, group, spec) from exc


def explain(exc: BaseException, group: str | None = None, spec: Any = None) -> LightdistError:
    """The ConfigError for `exc`, raised while building `spec` of config node `group`."""
    from hydra.errors import InstantiationException

    target, keys = _target_and_keys(spec)
    detail = str(exc).strip()
    if isinstance(exc, InstantiationException):
        text = str(exc)
        named = re.search(r"target '([^']+)'", text)
        target = target or (named.group(1) if named else None)  # the config's spelling first
        where = re.search(r"full_key: (\S+)", text)
        if where and group is None:
            group = where.group(1)
        cause = exc.__cause__
        if isinstance(cause, LightdistError):
            return cause
        detail = str(cause).strip() if cause is not None else text.splitlines()[0]
    detail = one_line(detail) or type(exc).__name__
    group = group or "config"
    head = f"{group} ({target})" if target else group
    key = None if re.search(rf"\b{re.escape(group)}\.\w", detail) else offending_key(detail, keys)
    return ConfigError(f"{head}: {detail}", hint=f"check {group}.{key}" if key else None)


def _target_and_keys(spec: Any) -> tuple[str | None, dict[str, Any]]:
    if isinstance(spec, partial):
        fn = spec.func
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}".lstrip(".")
        return name, dict(spec.keywords)
    if isinstance(spec, Mapping):
        from omegaconf import DictConfig

        if isinstance(spec, DictConfig):  # raw values: an interpolation may not resolve outside its job
            keys = {k: raw_value(spec, k) for k in spec.keys()}
        else:
            keys = dict(spec)
        target = keys.get("_target_")
        return (str(target) if target else None), {k: v for k, v in keys.items() if k not in _HYDRA_KEYS}
    return None, {}


def offending_key(message: str, keys: Mapping[str, Any]) -> str | None:
    """The key `message` is about: one it names, else the only one whose value it quotes."""
    named = [k for k in keys if len(str(k)) > 1 and re.search(rf"(?<![\w.]){re.escape(str(k))}(?!\w)", message,
                                                              re.IGNORECASE)]
    if named:
        return max(named, key=len)
    quoted = [k for k, v in keys.items()
              if isinstance(v, (int, float, str)) and not isinstance(v, bool) and str(v)
              and re.search(rf"(?<![\w.\-]){re.escape(str(v))}(?![\w.]*\w)", message)]
    return quoted[0] if len(quoted) == 1 else None


def instantiate_with_facts(node: Any, facts: Mapping[str, Any], **kwargs: Any) -> Any:
    """Instantiate config node `node`, passing the data facts (num_classes, vocab_size...) its target accepts."""
    from hydra.utils import instantiate

    from lightdist.config.validate import accepted_kwargs

    # _convert_="all": plain lists/dicts, so hyperparameters saved in checkpoints hold no OmegaConf types.
    with building(str(node_key(node)), node):  # a refused value names model.<key> / task.<key>
        return instantiate(node, **accepted_kwargs(node._target_, facts), **kwargs, _convert_="all")
