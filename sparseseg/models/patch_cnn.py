"""Per-hit patch classifier in the style of ProtoDUNE's EmTrackMichel CNN.

A 48 x 48 patch (wire x downsampled time) around one hit goes through a single convolution,
dropout, two dense layers with dropout, and two heads: EM / track / none (softmax) and
Michel-or-not (sigmoid). It runs once per hit, which is what makes it expensive on full
events; :mod:`sparseseg.patches` cuts the patches and runs it over events.

``forward`` returns raw scores (B, 4): three logits (EM, track, none) and one Michel logit;
:func:`PatchCNN.probabilities` turns them into (B, 4) probabilities (softmax, sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import config_from, require_positive



@dataclass
class PatchCNNConfig:
    """Hyper-parameters (stored in checkpoints).

    patch: patch side in pixels; filters, kernel: the convolution (valid padding, ReLU);
    dense1, dense2: widths of the two dense layers (ReLU); drop1: dropout after the
    convolution, drop2: after each dense layer; input_scale: ADC multiplier.
    """

    patch: int = 48
    filters: int = 32
    kernel: int = 5
    dense1: int = 128
    dense2: int = 32
    drop1: float = 0.2
    drop2: float = 0.2
    input_scale: float = 0.01

    def __post_init__(self) -> None:
        require_positive(self, ("patch", "filters", "kernel", "dense1", "dense2"), "patch-cnn: ")
        if self.kernel > self.patch:
            raise ValueError(f"patch-cnn: kernel {self.kernel} is larger than the patch {self.patch}")
        for name in ("drop1", "drop2"):
            if not 0 <= float(getattr(self, name)) < 1:
                raise ValueError(f"patch-cnn: {name} must be in [0, 1), got {getattr(self, name)}")


class PatchCNN(nn.Module):
    def __init__(self, config: PatchCNNConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = c = config or PatchCNNConfig(**kwargs)
        side = c.patch - c.kernel + 1
        self.input_scale = float(c.input_scale)
        self.features = nn.Sequential(
            nn.Conv2d(1, c.filters, c.kernel), nn.ReLU(), nn.Dropout(c.drop1), nn.Flatten(),
            nn.Linear(c.filters * side * side, c.dense1), nn.ReLU(), nn.Dropout(c.drop2),
            nn.Linear(c.dense1, c.dense2), nn.ReLU(), nn.Dropout(c.drop2),
        )
        self.em_trk_none = nn.Linear(c.dense2, 3)
        self.michel = nn.Linear(c.dense2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != p or x.shape[3] != p:
            raise ValueError(f"patch-cnn: expected patches as a (B, 1, {p}, {p}) tensor, got shape {list(x.shape)}")
        h = self.features(x * self.input_scale)
        return torch.cat([self.em_trk_none(h), self.michel(h)], dim=1)

    @staticmethod
    def probabilities(raw: torch.Tensor) -> torch.Tensor:
        """(B, 4) raw outputs -> softmax over EM/track/none and sigmoid Michel."""
        return torch.cat([torch.softmax(raw[:, :3], dim=1), torch.sigmoid(raw[:, 3:])], dim=1)


def build_patch_cnn(**kwargs) -> PatchCNN:
    return PatchCNN(config_from(PatchCNNConfig, "patch-cnn", kwargs))
