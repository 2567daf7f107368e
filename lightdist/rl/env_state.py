"""The full state of environments in flight, for checkpoints that resume episodes exactly.

A resumed run continues each episode where it stood only if every sub-environment comes back
with its dynamics state, its random generator and its wrappers' bookkeeping (TimeLimit's elapsed
steps, the episode statistics). How each level of a wrapper chain is captured:

- an environment with `state_dict()` / `load_state_dict()` (lightdist's GridWorld) says so itself;
- ALE (Atari) environments: the emulator through `cloneState` / `restoreState`, the rest like a wrapper;
- gymnasium's wrappers and classic-control environments (CartPole, Acrobot, MountainCar, ...) keep
  their state in plain attributes: every attribute holding plain values, arrays, random generators
  or containers of them is saved and set back (spaces, specs and renderers are not state);
- anything else cannot be captured: `capture` says why, and the caller starts fresh episodes.

Checkpoints load with weights_only=True, so arrays become uint8 tensors of their bytes and every
value a plain type; `decode` turns them back into what the attribute held.
"""

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch

# Modules whose wrappers and environments keep their whole state in plain attributes.
_PLAIN_STATE_MODULES = ("gymnasium.wrappers.", "gymnasium.core", "gymnasium.envs.classic_control.", "lightdist.rl.")


class _NotState(Exception):
    """A value that is no state of its own (a space, a spec, a renderer, an inner environment)."""


class _Uncapturable(Exception):
    """A level of a wrapper chain whose state cannot be told from outside."""


def encode(value: Any) -> Any:
    """`value` as plain values and tensors, or _NotState."""
    if isinstance(value, np.generic):  # before float: numpy's float64 is a Python float too
        return {"scalar": encode(np.asarray(value))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.fields:
            raise _NotState
        raw = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8).copy()
        return {"ndarray": torch.from_numpy(raw), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.random.Generator):
        return {"generator": encode(value.bit_generator.state)}
    if isinstance(value, deque):
        return {"deque": [encode(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v) for k, v in value.items()}}
    raise _NotState


def decode(state: Any) -> Any:
    if not isinstance(state, dict):
        return state
    if "ndarray" in state:
        raw = state["ndarray"].numpy().tobytes()
        return np.frombuffer(raw, np.dtype(state["dtype"])).reshape(state["shape"]).copy()
    if "scalar" in state:
        return decode(state["scalar"])[()]
    if "generator" in state:
        bit_state = decode(state["generator"])
        generator = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
        generator.bit_generator.state = bit_state
        return generator
    if "deque" in state:
        return deque((decode(v) for v in state["deque"]), maxlen=state["maxlen"])
    if "list" in state:
        return [decode(v) for v in state["list"]]
    if "tuple" in state:
        return tuple(decode(v) for v in state["tuple"])
    return {k: decode(v) for k, v in state["dict"].items()}


def _attributes(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for name, value in vars(obj).items():
        if name in skip or isinstance(value, (gym.Env, gym.Space)):
            continue
        try:
            out[name] = encode(value)
        except _NotState:
            pass
    return out


def _set_attributes(obj: Any, attributes: dict[str, Any]) -> None:
    for name, state in attributes.items():
        current = getattr(obj, name, None)
        if isinstance(current, np.random.Generator) and isinstance(state, dict) and "generator" in state:
            current.bit_generator.state = decode(state["generator"])  # the same object: others may hold it
        else:
            setattr(obj, name, decode(state))


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _ale(env: gym.Env) -> Any | None:
    ale = getattr(env, "ale", None)
    return ale if hasattr(ale, "cloneState") and hasattr(ale, "restoreState") else None


def _capture_level(env: gym.Env) -> dict[str, Any]:
    """One level of a wrapper chain; raises _Uncapturable when it cannot be captured."""
    level: dict[str, Any] = {"class": _class_name(env)}
    own = getattr(type(env), "state_dict", None), getattr(type(env), "load_state_dict", None)
    if not isinstance(env, gym.Wrapper) and all(own):
        level["own"] = env.state_dict()
    elif _ale(env) is not None:
        emulator = _ale(env).cloneState(include_rng=True).serialize()
        level["ale"] = torch.from_numpy(np.frombuffer(emulator, np.uint8).copy())
        level["attributes"] = _attributes(env, skip=("ale",))
    elif type(env).__module__.startswith(_PLAIN_STATE_MODULES):
        level["attributes"] = _attributes(env, skip=("env",))
    else:
        raise _Uncapturable(f"{_class_name(env)} keeps state this cannot save")
    return level


def capture(env: gym.Env) -> dict[str, Any]:
    """The state of `env` and every wrapper under it: {"levels": [...]} or {"uncapturable": why}."""
    levels, node = [], env
    while True:
        try:
            levels.append(_capture_level(node))
        except _Uncapturable as exc:
            return {"uncapturable": str(exc)}
        if not isinstance(node, gym.Wrapper):
            return {"levels": levels}
        node = node.env


def restore(env: gym.Env, state: dict[str, Any]) -> None:
    """Set back what `capture` returned, on an environment built the same way."""
    if "levels" not in state:
        raise ValueError(f"environment state was not captured: {state.get('uncapturable')}")
    node = env
    for level in state["levels"]:
        if _class_name(node) != level["class"]:
            raise ValueError(f"environment state of {level['class']} cannot go to {_class_name(node)}")
        if "own" in level:
            node.load_state_dict(level["own"])
        if "ale" in level:
            import ale_py  # only Atari environments get here

            _ale(node).restoreState(ale_py.ALEState(level["ale"].numpy().tobytes()))
        _set_attributes(node, level.get("attributes", {}))
        node = node.env if isinstance(node, gym.Wrapper) else None


class ResumableEnv(gym.Wrapper):
    """The outermost wrapper of every training environment: `resume_state` reads and sets the state
    of the whole chain below. Vector environments reach it by get_attr / set_attr, so the same
    works for sub-environments living in AsyncVectorEnv's worker processes."""

    @property
    def resume_state(self) -> dict[str, Any]:
        return capture(self.env)

    @resume_state.setter
    def resume_state(self, state: dict[str, Any]) -> None:
        restore(self.env, state)


def capture_vector(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    """Every sub-environment's state and the generator of the random (warm-up) actions.

    The vector environment's own autoreset flags are not needed: in SAME_STEP mode (the only one
    make_vector_env uses) a sub-environment is reset within the step that ends its episode, and
    the flags written after a step are never read again."""
    return {"envs": list(envs.get_attr("resume_state")), "action_rng": encode(envs.action_space.np_random)}


def uncapturable(state: dict[str, Any]) -> str | None:
    """Why a vector state cannot be restored (None when it can)."""
    reasons = [s["uncapturable"] for s in state.get("envs", []) if "uncapturable" in s]
    return reasons[0] if reasons else None


def restore_vector(envs: gym.vector.VectorEnv, state: dict[str, Any]) -> None:
    if len(state["envs"]) != envs.num_envs:
        raise ValueError(f"the checkpoint holds {len(state['envs'])} environments, this run has {envs.num_envs}")
    envs.set_attr("resume_state", state["envs"])
    envs.action_space.np_random.bit_generator.state = decode(state["action_rng"]).bit_generator.state
