"""Hyper-parameters of the UResNet, shared by the sparse network (:mod:`.uresnet`) and its
dense twin (:mod:`.dense_uresnet`), so one config section builds either; this module imports
neither torch nor spconv."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..classes import NUM_CLASSES
from ..config import require_positive

INPUT_NORMS = ("none", "mip")


@dataclass
class UResNetConfig:
    """Hyper-parameters of :class:`~sparseseg.models.uresnet.SparseUResNet` (stored in checkpoints)."""

    family: ClassVar[str] = "uresnet"
    """The family named in error messages."""

    dim: int = 2
    in_channels: int = 1
    num_classes: int = NUM_CLASSES
    depth: int = 5
    filters: int = 32
    reps: int = 2
    leakiness: float = 0.0
    input_scale: float = 0.01
    """Features are multiplied by this before the stem (ADC 10..300 -> 0.1..3)."""
    input_norm: str = "none"
    """"mip": each image is first rescaled to the nominal MIP scale estimated from its own
    pixels (:mod:`sparseseg.calibration`), so the model does not depend on the detector's gain;
    "none": raw values."""

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"{self.family}: dim must be 2 or 3, got {self.dim}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"{self.family}: input_norm must be one of {', '.join(INPUT_NORMS)}, "
                             f"got {self.input_norm!r}")
        require_positive(self, ("in_channels", "num_classes", "depth", "filters", "reps"), f"{self.family}: ")

    @property
    def widths(self) -> list[int]:
        return [self.filters * (i + 1) for i in range(self.depth)]
