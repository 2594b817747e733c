"""Model families: one table (:data:`FAMILIES`) from model names to :class:`ModelSpec` records
(builder, task, classes, sparse or dense, example input, table label).

Builders import their module on call, so ``import sparseseg.models`` pulls in neither torch nor
spconv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable


if TYPE_CHECKING:  # importing the table does not import torch
    import torch.nn as nn


def _uresnet(**kwargs) -> nn.Module:
    from .uresnet import build_uresnet

    return build_uresnet(**kwargs)


def _roi(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from .roi_nets import build_roi_model

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


@dataclass(frozen=True)
class ModelSpec:
    """One model family: everything the rest of sparseseg needs to know about it.

    ``build(**kwargs)`` makes the network from a config's ``model:`` options; ``task`` names
    what it is trained on and how it is scored (``segment``: sparse or dense pixel
    segmentation, :class:`sparseseg.tasks.segment.SegmentationTask`; ``roi``, ``cvn``,
    ``patch``: the other tasks of :mod:`sparseseg.tasks`); ``classes`` is what its outputs
    mean (checkpoints must carry exactly these); ``sparse`` models take lists of Events and
    run on spconv (not exportable), dense ones take (B, C, H, W) tensors, ``example_input``
    being a small one for export checks; ``label`` is the family's name in tables.
    """

    name: str
    build: Callable[..., nn.Module]
    task: str
    classes: tuple[str, ...]
    label: str
    sparse: bool = False
    example_input: tuple[int, ...] | None = None


def _spec_list() -> tuple[ModelSpec, ...]:
    from ..classes import CLASS_NAMES, CVN_CLASSES, PATCH_CLASSES, ROI_CLASSES

    roi = (1, 3, 128, 128)
    return (
        ModelSpec("uresnet", _uresnet, "segment", CLASS_NAMES, "sparse UResNet", sparse=True),
        ModelSpec("uresnet-dense", _uresnet_dense, "segment", CLASS_NAMES, "dense UResNet", example_input=(1, 1, 128, 128)),
        ModelSpec("roi-unet", _roi("roi-unet"), "roi", ROI_CLASSES, "UNet", example_input=roi),
        ModelSpec("roi-mobilenetv2", _roi("roi-mobilenetv2"), "roi", ROI_CLASSES, "MobileNetV2", example_input=roi),
        ModelSpec("roi-mobilenetv3", _roi("roi-mobilenetv3"), "roi", ROI_CLASSES, "MobileNetV3", example_input=roi),
        ModelSpec("roi-transformer", _roi("roi-transformer"), "roi", ROI_CLASSES, "Transformer", example_input=roi),
        ModelSpec("cvn", _cvn, "cvn", CVN_CLASSES, "CVN", example_input=(1, 3, 500, 500)),
        ModelSpec("patch-cnn", _patch_cnn, "patch", PATCH_CLASSES, "patch CNN", example_input=(16, 1, 48, 48)),
    )


FAMILIES: dict[str, ModelSpec] = {spec.name: spec for spec in _spec_list()}
"""name -> :class:`ModelSpec`, the one table of model families."""


def family(name: str) -> ModelSpec:
    """The family record of model ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(FAMILIES))}") from None


def names(task: str | None = None, sparse: bool | None = None) -> tuple[str, ...]:
    """Family names, in table order, optionally only those of one task / sparse or dense."""
    return tuple(n for n, s in FAMILIES.items()
                 if (task is None or s.task == task) and (sparse is None or s.sparse == sparse))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name with keyword arguments (from a config's ``model:`` section)."""
    return family(name).build(**kwargs)
