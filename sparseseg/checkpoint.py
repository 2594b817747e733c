"""Checkpoints: atomic save, validated load, and rebuilding a model from a checkpoint alone.

A training checkpoint is a dict {model, optimizer, step, config, classes, version, best,
stale, precision} (the learning rate is a function of the step, so there is no scheduler
state); shipped weights keep only {model (fp16), config, classes, version, step, metrics}.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import write_atomic

REQUIRED = ("model", "config", "classes", "version")


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with torch.save to a temp file in the same folder, then rename it."""
    return write_atomic(path, lambda fh: torch.save(payload, fh))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"weights file {path}: cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"weights file {path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"weights file {path}: not a sparseseg checkpoint (missing {', '.join(missing)})")
    return ckpt


def float_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with floating-point tensors as float32 (shipped weights are fp16)."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


def build_from(ckpt: dict[str, Any], path: str | Path = "<checkpoint>", device: str | torch.device = "cpu",
               name: str | None = None):
    """Rebuild the model of any family (:data:`sparseseg.models.FAMILIES`) that a checkpoint
    describes and load its weights (as float32; the module is built without storage and takes
    the state's tensors, so a float32 checkpoint shares them with the model). ``name`` also checks that the checkpoint holds
    that model; ``name="uresnet-dense"`` on a sparse ``uresnet`` checkpoint gives its dense twin
    (the same config, weights converted by
    :func:`~sparseseg.models.dense_uresnet.convert_sparse_state_dict`). On the dense twin: the
    two compute the same function where every pixel is active; like every ``uresnet-dense`` it
    takes features as they reach the network (with ``input_norm: mip`` the per-image MIP
    calibration is the caller's, see :func:`~sparseseg.models.dense_uresnet.densify`)."""
    from .models import family

    try:
        mcfg = dict(ckpt["config"]["model"])
        held = mcfg.pop("name")
    except (KeyError, TypeError):
        raise ValueError(f"weights file {path}: config has no model section with a name") from None
    twin = name == "uresnet-dense" and held == "uresnet"
    if name is not None and name != held and not twin:
        raise ValueError(f"weights file {path}: holds model {held!r}, not {name!r}")
    spec = family(name if twin else held)
    classes = tuple(ckpt["classes"])
    if classes != spec.classes:
        raise ValueError(f"weights file {path}: trained for classes {classes}, this sparseseg's "
                         f"{spec.name!r} outputs {spec.classes}")
    with torch.device("meta"):  # no storage: the checkpoint's tensors become the weights below
        model = spec.build(**mcfg)
    state = float_state(ckpt["model"])
    if twin:
        from .models.dense_uresnet import convert_sparse_state_dict

        state = convert_sparse_state_dict(state, model.dim)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        what = "sparse uresnet weights do not convert to its dense twin" if twin else f"weights do not fit model {spec.name!r}"
        raise ValueError(f"weights file {path}: {what} ({lines[1].strip() if len(lines) > 1 else lines[0]})") from None
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu", dim: int | None = None,
               name: str | None = None):
    """Model and checkpoint dict from a weights file; ``dim`` checks the model's dimension and
    ``name`` the model it holds (see :func:`build_from`)."""
    ckpt = load(path)
    model = build_from(ckpt, path, device, name)
    check_dim(model, path, dim)
    return model, ckpt


def check_dim(model, path: str | Path, dim: int | None) -> None:
    """``ValueError`` when ``model`` is a 2D/3D model of another dimension than ``dim``."""
    model_dim = getattr(getattr(model, "config", None), "dim", None)
    if dim is not None and model_dim is not None and model_dim != dim:
        raise ValueError(f"weights file {path}: model is {model_dim}D but the input events are {dim}D")


def average_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The uniform average of model state dicts of one architecture ("model soup" of runs
    fine-tuned from the same weights). Floating-point tensors (weights and BatchNorm running
    statistics) are averaged in float32 and returned in the first state's dtype; integer
    tensors (BatchNorm's batch counters) are taken from the first state."""
    if not states:
        raise ValueError("average_states: no state dicts to average")
    first = states[0]
    for i, other in enumerate(states[1:], 1):
        if set(other) != set(first):
            differ = sorted(set(first) ^ set(other))[:3]
            raise ValueError(f"average_states: state {i} has other keys than state 0 ({', '.join(differ)} ...): "
                             "only weights of one architecture can be averaged")
        for k, v in first.items():
            if torch.is_tensor(v) and tuple(other[k].shape) != tuple(v.shape):
                raise ValueError(f"average_states: {k} is {tuple(other[k].shape)} in state {i}, "
                                 f"{tuple(v.shape)} in state 0")
    out = {}
    for k, v in first.items():
        if torch.is_tensor(v) and v.is_floating_point():
            out[k] = (sum(s[k].float() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v
    return out


def slim(ckpt: dict[str, Any], fp16: bool = True, **extra) -> dict[str, Any]:
    """A small checkpoint for shipping: weights (fp16 by default), config, classes, version."""
    state = {
        k: (v.half() if fp16 and torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in ckpt["model"].items()
    }
    out = {"model": state, "config": ckpt["config"], "classes": list(ckpt["classes"]),
           "version": __version__, "step": ckpt.get("step")}
    out.update(extra)
    return out
