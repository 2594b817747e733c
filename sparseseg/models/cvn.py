"""CVN-style neutrino event classifier: an SE-ResNet over the three wire-plane views.

After the DUNE CVN (L. Whitehead, "Machine Learning Frameworks for DUNE"; Phys. Rev. D 102,
092003): each of the three 500 x 500 views first goes through its own branch (a 7x7 stem, a
max-pool and SE-ResNet blocks); the branch outputs are concatenated along channels and the merged tensor goes through further SE-ResNet stages,
global average pooling and a linear layer to the classes nu_mu CC, nu_e CC, NC.

Its training data (dense 3-view images of simulated ccmu / cce / ncpi0 interactions,
:func:`sparseseg.tasks.cvn.cvn_dataset`) lives beside its task; its confusion matrix,
efficiency and purity come from :func:`sparseseg.metrics.classification_table`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..classes import CVN_CLASSES
from ..config import config_from, require_positive
from .roi_nets import SqueezeExcite
from .uresnet_config import INPUT_NORMS

__all__ = [
    "CVN_CLASSES",
    "CVNConfig",
    "SEResBlock",
    "CVN",
    "build_cvn",
    "calibrated",
    "model_input",
]



@dataclass
class CVNConfig:
    """Hyper-parameters of :class:`CVN` (stored in checkpoints).

    Parameters
    ----------
    views : int
        Number of input views V (one branch each); 3 for U, V, Y.
    num_classes : int
        Output classes (3: nu_mu CC, nu_e CC, NC).
    widths : sequence of int
        Channels of the stages; stage 0 is per branch, the others run after the merge.
    blocks : sequence of int
        SE-ResNet blocks per stage (same length as ``widths``).
    se_reduction : int
        Squeeze-and-excitation reduction ratio.
    input_scale : float
        Inputs (ADC) are multiplied by this first.
    input_norm : {"none", "mip"}
        "mip": the network is fed views calibrated by their own MIP scale
        (:func:`sparseseg.calibration.normalize_views`, applied by :func:`model_input` before
        ``forward``: the network itself, and what is exported of it, takes calibrated views),
        so that a detector with another gain is seen on the simulator's nominal scale.
    """

    views: int = 3
    num_classes: int = 3
    widths: Sequence[int] = (16, 32, 64, 128)
    blocks: Sequence[int] = (2, 2, 2, 2)
    se_reduction: int = 8
    input_scale: float = 0.01
    input_norm: str = "none"

    def __post_init__(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"cvn: input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.widths) != len(self.blocks) or len(self.widths) < 1:
            raise ValueError(f"cvn: widths {self.widths} and blocks {self.blocks} must have the same, non-zero length")
        if min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError("cvn: widths and blocks must be >= 1")
        require_positive(self, ("views", "num_classes", "se_reduction"), "cvn: ")


class SEResBlock(nn.Module):
    """SE-ResNet basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN, squeeze-excitation, plus a
    shortcut (1x1 conv + BN when the shape changes), ReLU.

    (B, cin, H, W) -> (B, cout, H/stride, W/stride).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, reduction)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return F.relu(y + self.shortcut(x))


def _stage(cin: int, cout: int, n: int, stride: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(*[SEResBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, reduction) for i in range(n)])


class CVN(nn.Module):
    """Three-branch SE-ResNet event classifier.

    ``forward`` takes views (B, V, H, W) -- ADC images, V = ``views`` (3 x 500 x 500 for the
    DUNE CVN, any H, W >= 32 work) -- and returns class logits (B, num_classes); apply
    ``softmax`` for probabilities. Each view runs through its own branch (stem 7x7/2, max-pool
    3/2, stage 0) before the branches are concatenated (B, V * widths[0], H/4, W/4) and run
    through the merged stages (each halving the resolution), global average pooling and a
    linear layer.
    """

    def __init__(self, config: CVNConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config or CVNConfig(**kwargs)
        self.config = cfg
        self.views = int(cfg.views)
        self.input_scale = float(cfg.input_scale)
        w, b, r = cfg.widths, cfg.blocks, cfg.se_reduction
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1), _stage(w[0], w[0], b[0], 1, r),
            )
            for _ in range(cfg.views)
        )
        stages, cin = [], cfg.views * w[0]
        for i in range(1, len(w)):
            stages.append(_stage(cin, w[i], b[i], 2, r))
            cin = w[i]
        self.merged = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.views:
            raise ValueError(f"cvn: expected views as a (B, {self.views}, H, W) tensor, got shape {list(x.shape)}")
        x = x * self.input_scale
        outs = []
        for i, branch in enumerate(self.branches):
            outs.append(branch(x[:, i : i + 1]))
        y = self.merged(torch.cat(outs, dim=1))
        return self.fc(y.mean(dim=(2, 3)))


def build_cvn(**kwargs) -> CVN:
    """Builder used by the model table: keyword arguments are :class:`CVNConfig` fields."""
    return CVN(config_from(CVNConfig, "cvn", kwargs))


def calibrated(views, input_norm: str) -> torch.Tensor:
    """Dense views (B, V, H, W) of ADC as a tensor, calibrated per view where ``input_norm``
    is "mip": what a CVN with that ``input_norm`` is fed (training, validation and inference
    all come through here)."""
    x = torch.as_tensor(views)
    if input_norm == "mip":
        from ..calibration import normalize_views

        x = normalize_views(x)
    return x


def model_input(model: CVN, views) -> torch.Tensor:
    """What ``model`` is fed for dense views (B, V, H, W) of ADC (:func:`calibrated`)."""
    return calibrated(views, getattr(model.config, "input_norm", "none"))
