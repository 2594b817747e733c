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
from .classes import CLASS_NAMES

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


def build_from(ckpt: dict[str, Any], path: str | Path = "<checkpoint>", device: str | torch.device = "cpu"):
    """Rebuild the model described by a checkpoint and load its weights (as float32)."""
    from .models import build_model

    mcfg = dict(ckpt["config"]["model"])
    name = mcfg.pop("name")
    classes = tuple(ckpt["classes"])
    if classes != CLASS_NAMES:
        raise ValueError(f"weights file {path}: trained for classes {classes}, this sparseseg uses {CLASS_NAMES}")
    model = build_model(name, **mcfg)
    state = float_state(ckpt["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"weights file {path}: weights do not fit model {name!r} ({first[1].strip() if len(first) > 1 else first[0]})") from None
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu", dim: int | None = None):
    """Model and checkpoint dict from a weights file; ``dim`` checks the model's dimension."""
    ckpt = load(path)
    model = build_from(ckpt, path, device)
    check_dim(model, path, dim)
    return model, ckpt


def check_dim(model, path: str | Path, dim: int | None) -> None:
    """``ValueError`` when ``model`` is a 2D/3D model of another dimension than ``dim``."""
    model_dim = getattr(getattr(model, "config", None), "dim", None)
    if dim is not None and model_dim is not None and model_dim != dim:
        raise ValueError(f"weights file {path}: model is {model_dim}D but the input events are {dim}D")


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
