"""Model table: one explicit dict from model names to builder functions.

Builders import their module on call, so ``import sparseseg.models`` does not pull in spconv.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def _uresnet(**kwargs) -> nn.Module:
    from .uresnet import build_uresnet

    return build_uresnet(**kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "uresnet": _uresnet,
}
"""name -> builder(**kwargs). Sparse models take lists of Events."""


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name with keyword arguments (from a config's ``model:`` section)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
