"""Model table: one explicit dict from model names to builder functions.

Builders import their module on call, so ``import sparseseg.models`` does not pull in spconv.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Iterable

import torch.nn as nn


def config_from(cls: type, label: str, kwargs: dict[str, Any]):
    """``cls(**kwargs)`` for a config dataclass; ``ValueError`` naming unknown options first."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"{label}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**kwargs)


def require_positive(obj: Any, names: Iterable[str], prefix: str) -> None:
    """``ValueError`` "<prefix><name> must be >= 1, got X" for the first attribute below 1."""
    for name in names:
        if int(getattr(obj, name)) < 1:
            raise ValueError(f"{prefix}{name} must be >= 1, got {getattr(obj, name)}")


def _uresnet(**kwargs) -> nn.Module:
    from .uresnet import build_uresnet

    return build_uresnet(**kwargs)


def _roi(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from .unet import build_roi_model

        return build_roi_model(name, **kwargs)

    build.__name__ = f"_{name.replace('-', '_')}"
    return build


def _cvn(**kwargs) -> nn.Module:
    from .cvn import build_cvn

    return build_cvn(**kwargs)


def _uresnet_dense(**kwargs) -> nn.Module:
    from .dense_uresnet import build_dense_uresnet

    return build_dense_uresnet(**kwargs)


def _patch_cnn(**kwargs) -> nn.Module:
    from .patch_cnn import build_patch_cnn

    return build_patch_cnn(**kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "uresnet": _uresnet,
    "uresnet-dense": _uresnet_dense,
    "roi-unet": _roi("roi-unet"),
    "roi-mobilenetv2": _roi("roi-mobilenetv2"),
    "roi-mobilenetv3": _roi("roi-mobilenetv3"),
    "roi-transformer": _roi("roi-transformer"),
    "cvn": _cvn,
    "patch-cnn": _patch_cnn,
}
"""name -> builder(**kwargs). Sparse models take lists of Events; dense ones (B, C, H, W) tensors."""


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name with keyword arguments (from a config's ``model:`` section)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
