"""Dense twin of the sparse UResNet, for sparse-vs-dense time and memory comparisons.

Same layout as :class:`sparseseg.models.uresnet.SparseUResNet` -- depth L, filters F,
widths F * (i + 1), R pre-activation residual blocks per level, BatchNorm + LeakyReLU
(ReLU when leakiness = 0), strided k=2 s=2 convolution down, k=2 s=2 transposed convolution
up, concatenated skips, a 1x1 head -- but with ordinary ``Conv2d``/``Conv3d`` on the full
dense grid. Module names match the sparse model's, so ``state_dict`` keys correspond one to
one and :func:`convert_sparse_state_dict` turns sparse weights into dense ones.

On an image where every pixel is active the two models compute the same function (a
submanifold convolution with all sites active is a zero-padded dense convolution); on real,
sparse images they differ, since the dense model also convolves the empty pixels.

This module does not import spconv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import config_from
from .uresnet_config import UResNetConfig

__all__ = ["DenseUResNetConfig", "DenseUResNet", "build_dense_uresnet", "convert_sparse_state_dict", "predict_events", "densify"]


@dataclass
class DenseUResNetConfig(UResNetConfig):
    """Hyper-parameters of :class:`DenseUResNet`: the sparse model's fields and defaults. For
    ``input_norm``: the dense network itself takes calibrated values; :func:`predict_events`
    (and :func:`densify` with ``normalize=True``) apply the per-image MIP calibration before
    densifying, and an exported dense model expects calibrated input."""

    family: ClassVar[str] = "uresnet-dense"


def _conv(dim: int):
    return nn.Conv2d if dim == 2 else nn.Conv3d


def _bn(dim: int):
    return nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d


class _NormAct(nn.Module):
    """BatchNorm + LeakyReLU (ReLU at leakiness 0): (B, C, *S) -> (B, C, *S)."""

    def __init__(self, dim: int, channels: int, leakiness: float) -> None:
        super().__init__()
        self.bn = _bn(dim)(channels)
        self.act = nn.LeakyReLU(leakiness) if leakiness > 0 else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ResidualBlock(nn.Module):
    """Pre-activation residual block of two 3x3(x3) convolutions (no bias).

    (B, cin, *S) -> (B, cout, *S); a 1x1 convolution on the shortcut when cin != cout.
    """

    def __init__(self, dim: int, cin: int, cout: int, leakiness: float) -> None:
        super().__init__()
        conv = _conv(dim)
        self.norm1 = _NormAct(dim, cin, leakiness)
        self.conv1 = conv(cin, cout, 3, padding=1, bias=False)
        self.norm2 = _NormAct(dim, cout, leakiness)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.shortcut = conv(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.norm2(self.conv1(self.norm1(x))))
        return out + self.shortcut(x)


class DenseUResNet(nn.Module):
    """Dense UResNet: (B, C_in, H, W) -> logits (B, num_classes, H, W) (or (B, C, D, H, W) in 3D).

    Inputs of any size are zero-padded on the far side of each spatial axis to a multiple of
    ``stride`` = 2^(depth-1) and the output is cropped back. Features are multiplied by
    ``input_scale`` first, as in the sparse model.
    """

    def __init__(self, config: DenseUResNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config or DenseUResNetConfig(**kwargs)
        self.config = cfg
        self.dim = int(cfg.dim)
        self.in_channels = int(cfg.in_channels)
        self.input_scale = float(cfg.input_scale)
        self.stride = 2 ** (cfg.depth - 1)
        d, w, lk = cfg.dim, cfg.widths, cfg.leakiness
        conv = _conv(d)
        convT = nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d
        self.stem = conv(cfg.in_channels, w[0], 3, padding=1, bias=False)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(cfg.depth):
            self.encoder.append(nn.Sequential(*[ResidualBlock(d, w[i], w[i], lk) for _ in range(cfg.reps)]))
            if i < cfg.depth - 1:
                self.down.append(nn.Sequential(_NormAct(d, w[i], lk), conv(w[i], w[i + 1], 2, stride=2, bias=False)))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(cfg.depth - 1)):
            self.up.append(nn.Sequential(_NormAct(d, w[i + 1], lk), convT(w[i + 1], w[i], 2, stride=2, bias=False)))
            self.decoder.append(nn.Sequential(*[ResidualBlock(d, 2 * w[i] if r == 0 else w[i], w[i], lk) for r in range(cfg.reps)]))
        self.head_norm = _bn(d)(w[0])
        self.head_act = nn.LeakyReLU(lk) if lk > 0 else nn.ReLU()
        self.head = conv(w[0], cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"uresnet-dense: expected a (B, {self.in_channels}, *spatial) tensor with {self.dim} spatial axes, "
                             f"got shape {list(x.shape)}")
        size: List[int] = []
        for k in range(2, x.dim()):
            size.append(x.shape[k])
        pads: List[int] = []
        for k in range(len(size) - 1, -1, -1):  # F.pad lists the last axis first
            pads += [0, (self.stride - size[k] % self.stride) % self.stride]
        x = F.pad(x * self.input_scale, pads)
        x = self.stem(x)
        skips: List[torch.Tensor] = []
        n_down = len(self.down)
        for i, blocks in enumerate(self.encoder):
            x = blocks(x)
            if i < n_down:
                skips.append(x)
                for j, down in enumerate(self.down):  # self.down[i] (scriptable form)
                    if j == i:
                        x = down(x)
        for i, up in enumerate(self.up):
            x = torch.cat([up(x), skips[n_down - 1 - i]], dim=1)
            for j, blocks in enumerate(self.decoder):  # self.decoder[i]
                if j == i:
                    x = blocks(x)
        x = self.head(self.head_act(self.head_norm(x)))
        if self.dim == 2:
            return x[:, :, : size[0], : size[1]]
        return x[:, :, : size[0], : size[1], : size[2]]


def build_dense_uresnet(**kwargs) -> DenseUResNet:
    """Builder used by the model table: keyword arguments are :class:`DenseUResNetConfig` fields."""
    return DenseUResNet(config_from(DenseUResNetConfig, "uresnet-dense", kwargs))


def convert_sparse_state_dict(state: dict, dim: int = 2) -> dict:
    """Sparse UResNet weights -> :class:`DenseUResNet` weights.

    spconv stores convolution kernels as (C_out, k, k[, k], C_in); dense ``ConvNd`` wants
    (C_out, C_in, k, k[, k]) and ``ConvTransposeNd`` (C_in, C_out, k, k[, k]) -- the inverse
    convolution's (C_out, k.., C_in) kernel at the same offsets. ``nn.Linear`` shortcut and
    head weights (C_out, C_in) become 1x1 convolutions. BatchNorm tensors are copied.
    """
    out = {}
    for key, v in state.items():
        if torch.is_tensor(v) and key.endswith("weight") and v.dim() == dim + 2:
            if key.startswith("up.") and key.endswith(".1.weight"):
                v = v.permute(dim + 1, 0, *range(1, dim + 1))  # (C_in, C_out, k..)
            else:
                v = v.permute(0, dim + 1, *range(1, dim + 1))  # (C_out, C_in, k..)
        elif torch.is_tensor(v) and v.dim() == 2 and (key.endswith("shortcut.weight") or key == "head.weight"):
            v = v.reshape(*v.shape, *([1] * dim))
        out[key] = v.contiguous() if torch.is_tensor(v) else v
    return out


# --------------------------------------------------------------------------- events
def densify(events, channels: int | None = None, multiple: int = 1, normalize: bool = False) -> torch.Tensor:
    """Stack Events into a dense float32 tensor (B, F, *S), S = per-axis max of the events'
    shapes rounded up to ``multiple``; pixels not in an event's list are 0. ``normalize``:
    rescale each event to the nominal MIP scale (:mod:`sparseseg.calibration`) first."""
    events = list(events)
    if not events:
        raise ValueError("uresnet-dense: got an empty list of events")
    d = events[0].ndim
    if any(ev.ndim != d for ev in events):
        raise ValueError("uresnet-dense: all events of a batch must have the same dimension")
    nf = events[0].features.shape[1] if channels is None else int(channels)
    shape = np.max([ev.shape for ev in events], axis=0)
    shape = [int(-(-int(s) // multiple) * multiple) for s in shape]
    out = torch.zeros((len(events), nf, *shape), dtype=torch.float32)
    for b, ev in enumerate(events):
        if ev.features.shape[1] != nf:
            raise ValueError(f"uresnet-dense: event {b} has {ev.features.shape[1]} feature channel(s), expected {nf}")
        if len(ev):
            idx = torch.from_numpy(ev.coords.astype(np.int64))
            feats = torch.from_numpy(ev.features)
            if normalize:
                from ..calibration import NOMINAL_MIP, mip_scale

                feats = feats * (NOMINAL_MIP / mip_scale(ev.features[:, 0]))
            out[(torch.full((len(ev),), b, dtype=torch.long), slice(None), *idx.T)] = feats
    return out


def predict_events(model: DenseUResNet, events: Sequence, device: str | torch.device | None = None) -> torch.Tensor:
    """Run the dense twin on Events like the sparse model: logits (N, num_classes).

    The events are densified into one zero-filled batch (B, C, *S) padded to the model's
    stride, run through ``model``, and the logits are gathered at each event's coordinates;
    rows are concatenated over the events in input order (N = total pixel count), matching
    ``SparseUResNet(events)``.

    Note: empty pixels are zeros at the input, but not after the first BatchNorm, so logits
    near an image's edge depend (slightly) on how far the batch is padded; events batched
    together share one padded shape.
    """
    events = list(events)
    if events and events[0].ndim != model.dim:
        raise ValueError(f"uresnet-dense: this model takes {model.dim}D events, got a {events[0].ndim}D event")
    device = device or next(model.parameters()).device
    x = densify(events, model.in_channels, model.stride, normalize=model.config.input_norm == "mip").to(device)
    y = model(x)
    rows = []
    for b, ev in enumerate(events):
        idx = torch.from_numpy(ev.coords.astype(np.int64)).to(device)
        sel = y[b][(slice(None), *idx.T)]  # (num_classes, N_b)
        rows.append(sel.T)
    return torch.cat(rows, dim=0) if rows else torch.zeros((0, model.config.num_classes), device=device)
