"""Submanifold sparse UResNet (spconv) for 2D wire-plane images and 3D voxel volumes.

This is the only module of sparseseg that imports spconv.

Layout (depth L, filters F, reps R): a 3x3(x3) submanifold stem to F channels; encoder level
i (0..L-1) holds R residual blocks of width F*(i+1), all submanifold convolutions of a level
sharing the ``indice_key`` ``subm{i}``; between levels a ``SparseConv(k=2, s=2)`` with key
``down{i}``. The decoder mirrors it with ``SparseInverseConv`` on the same ``down{i}`` key, so
the upsampled sites are exactly the encoder's, concatenates the skip features and runs R
residual blocks. BatchNorm + LeakyReLU throughout; a linear head gives per-pixel logits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

import logging

# spconv asks torch.fx whether it is tracing on every call, and torch logs a deprecation
# warning for that question once per process: noise on every command, not a user's concern
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

import spconv.pytorch as spconv  # noqa: E402
from spconv.core import ConvAlgo

from ..config import config_from
from . import sparse_cpu
from .uresnet_config import UResNetConfig

__all__ = ["UResNetConfig", "SparseUResNet", "build_uresnet", "collate", "cpu_path", "guard_cpu_backward",
           "widen_state_dict"]


# --------------------------------------------------------------------------- spconv on CPU
def guard_cpu_backward() -> None:
    """Route spconv's convolutions on CPU tensors through :mod:`.sparse_cpu`.

    spconv's own CPU path asks ``torch.cuda.current_stream()`` for a stream in backward
    ("Torch not compiled with CUDA enabled" on CPU-only builds) and, with several threads,
    sometimes returns wrong rows in forward. Its rulebooks are kept; CUDA tensors still go
    to spconv's kernels. Idempotent.
    """
    import spconv.pytorch.ops as ops

    if getattr(ops.indice_conv, "_sparseseg", False):
        return
    spconv_fwd, spconv_bwd = ops.indice_conv, ops.indice_conv_backward

    def indice_conv(features, filters, indice_pairs, indice_pair_num, num_activate_out,
                    inverse=False, subm=False, *args, **kwargs):
        if features.is_cuda:
            return spconv_fwd(features, filters, indice_pairs, indice_pair_num, num_activate_out,
                              inverse, subm, *args, **kwargs)
        return sparse_cpu.indice_conv(features, filters, indice_pairs, indice_pair_num,
                                      num_activate_out, inverse, subm)

    def indice_conv_backward(features, filters, out_bp, indice_pairs, indice_pair_num,
                             inverse=False, subm=False, *args, **kwargs):
        if features.is_cuda:
            return spconv_bwd(features, filters, out_bp, indice_pairs, indice_pair_num,
                              inverse, subm, *args, **kwargs)
        return sparse_cpu.indice_conv_backward(features, filters, out_bp, indice_pairs,
                                               indice_pair_num, inverse, subm)

    indice_conv._sparseseg = True
    ops.indice_conv, ops.indice_conv_backward = indice_conv, indice_conv_backward


def _algo(device: torch.device | str | None = None) -> ConvAlgo | None:
    """spconv algorithm: the CPU wheel only has Native; GPU builds pick their default."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        return None
    return ConvAlgo.Native


PATHS = ("auto", "engine", "graph")


def prepare_input(config, indices: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The model's input features before ``input_scale``: per-image MIP calibration where the
    config asks for it (every path calls this, so all give the same numbers)."""
    if getattr(config, "input_norm", "none") == "mip":
        from ..calibration import normalize

        return normalize(indices, features)
    return features


def cpu_path(device, dim: int, precision: str = "fp32", grad: bool = True) -> str:
    """The one place that decides how a sparse UResNet runs.

    - ``"spconv"``: CUDA tensors go to spconv's kernels (training and inference);
    - ``"engine"``: the differentiable engine (:mod:`.sparse_engine`): CPU training in 2D,
      and in 3D in float32 (float32: offset-by-offset pair lists, as fast as the graph and a
      third lighter in tensors; bf16 where the CPU has it: one gather-GEMM per convolution);
    - ``"infer"``: the inference engine (:mod:`.sparse_infer`, BatchNorm folded): CPU
      inference, 2D and 3D;
    - ``"graph"``: spconv's rulebooks with this project's CPU kernels (:mod:`.sparse_cpu`):
      3D bf16 training, and the reference in tests. In 3D only ~18 % of the 27 neighbours of a
      voxel exist, so one gather-GEMM multiplies ~5x more rows than the rulebook's pair lists:
      measured on two pilarnet volumes (4,259 voxels, 1 thread), a training step takes 513 ms
      with the graph and 688 ms with the engine in bf16. In float32 the engines multiply
      existing pairs only (``use_pairs``) and match the graph in 3D: a training step of two
      pilarnet volumes (3.5-9.9k voxels, 1 thread) 603 ms with the engine against 615 ms with
      the graph, 75 against 104 MB of tensors at the step's peak; a forward of 12,328 voxels
      318 ms with the inference engine against 324 ms.

    ``precision``: "fp32" or "bf16"; ``grad``: whether gradients are needed (training).
    """
    if torch.device(device).type == "cuda":
        return "spconv"
    if grad:
        return "graph" if dim == 3 and precision == "bf16" else "engine"
    return "infer"


# --------------------------------------------------------------------------- blocks
def _subm(dim: int, cin: int, cout: int, key: str, algo) -> spconv.SparseModule:
    cls = spconv.SubMConv2d if dim == 2 else spconv.SubMConv3d
    return cls(cin, cout, 3, padding=1, bias=False, indice_key=key, algo=algo)


class _NormAct(nn.Module):
    """BatchNorm + LeakyReLU on the features of a SparseConvTensor."""

    def __init__(self, channels: int, leakiness: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.act = nn.LeakyReLU(leakiness) if leakiness > 0 else nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return x.replace_feature(self.act(self.bn(x.features)))


class ResidualBlock(nn.Module):
    """Pre-activation residual block of two submanifold convolutions.

    (N, cin) -> (N, cout); a 1x1 linear projection on the shortcut when cin != cout.
    """

    def __init__(self, dim: int, cin: int, cout: int, key: str, leakiness: float, algo) -> None:
        super().__init__()
        self.norm1 = _NormAct(cin, leakiness)
        self.conv1 = _subm(dim, cin, cout, key, algo)
        self.norm2 = _NormAct(cout, leakiness)
        self.conv2 = _subm(dim, cout, cout, key, algo)
        self.shortcut = nn.Linear(cin, cout, bias=False) if cin != cout else None

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.shortcut is None else self.shortcut(x.features)
        out = self.conv2(self.norm2(self.conv1(self.norm1(x))))
        return out.replace_feature(out.features + identity)


# --------------------------------------------------------------------------- model
class SparseUResNet(nn.Module):
    """Submanifold sparse UResNet.

    ``forward`` takes either a list of :class:`~sparseseg.event.Event` or a pair
    ``(indices, features)``: indices int32 (N, 1 + D) with the batch index in column 0,
    features float32 (N, C_in); plus ``spatial_shape`` for the latter. It returns logits
    (N, num_classes) whose rows follow the input rows.

    On CPU tensors the forward runs through the differentiable engine
    (:mod:`.sparse_engine`) or spconv's rulebooks with :mod:`.sparse_cpu` (the reference), as
    :func:`cpu_path` decides (``backend="auto"``) or ``backend`` forces; on CUDA tensors
    through spconv. Both give the same
    numbers (tested) from the same state dict. bfloat16 follows ``torch.autocast``.
    """

    backend: str = "auto"
    """auto (see :func:`cpu_path`), engine or graph; an attribute, not part of the state dict."""

    def __init__(self, config: UResNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config or UResNetConfig(**kwargs)
        self.config = cfg
        algo = _algo()
        d, w, lk = cfg.dim, cfg.widths, cfg.leakiness
        self.stem = _subm(d, cfg.in_channels, w[0], "subm0", algo)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(cfg.depth):
            blocks = [ResidualBlock(d, w[i], w[i], f"subm{i}", lk, algo) for _ in range(cfg.reps)]
            self.encoder.append(nn.ModuleList(blocks))
            if i < cfg.depth - 1:
                conv = (spconv.SparseConv2d if d == 2 else spconv.SparseConv3d)(
                    w[i], w[i + 1], 2, stride=2, bias=False, indice_key=f"down{i}", algo=algo
                )
                self.down.append(nn.ModuleList([_NormAct(w[i], lk), conv]))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(cfg.depth - 1)):
            inv = (spconv.SparseInverseConv2d if d == 2 else spconv.SparseInverseConv3d)(
                w[i + 1], w[i], 2, bias=False, indice_key=f"down{i}", algo=algo
            )
            self.up.append(nn.ModuleList([_NormAct(w[i + 1], lk), inv]))
            blocks = [ResidualBlock(d, 2 * w[i] if r == 0 else w[i], w[i], f"subm{i}", lk, algo) for r in range(cfg.reps)]
            self.decoder.append(nn.ModuleList(blocks))
        self.head_norm = nn.BatchNorm1d(w[0])
        self.head_act = nn.LeakyReLU(lk) if lk > 0 else nn.ReLU()
        self.head = nn.Linear(w[0], cfg.num_classes)

    @property
    def stride(self) -> int:
        """Spatial sizes are padded to a multiple of this."""
        return 2 ** (self.config.depth - 1)

    def padded_shape(self, shape: Sequence[int]) -> list[int]:
        s = self.stride
        return [int(-(-int(n) // s) * s) for n in shape]

    def forward(self, events_or_indices, features: torch.Tensor | None = None, spatial_shape=None) -> torch.Tensor:
        if features is None:
            indices, features, spatial_shape, batch_size = collate(events_or_indices, self.config.dim)
        else:
            indices = events_or_indices
            batch_size = int(indices[:, 0].max().item()) + 1 if len(indices) else 0
        device = next(self.parameters()).device
        if indices.shape[0] == 0:  # spconv cannot take an empty tensor
            return torch.zeros((0, self.config.num_classes), device=device)
        if features.shape[1] != self.config.in_channels:
            raise ValueError(
                f"uresnet: expected {self.config.in_channels} feature channel(s), got {features.shape[1]}"
            )
        features = prepare_input(self.config, indices, features)
        if self.backend not in PATHS:
            raise ValueError(f"uresnet: backend {self.backend!r} unknown; expected one of {', '.join(PATHS)}")
        if device.type == "cpu":
            kind = self.backend
            if kind == "auto":
                bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                kind = cpu_path("cpu", self.config.dim, "bf16" if bf16 else "fp32", grad=torch.is_grad_enabled())
            if kind != "graph":  # "engine", or "infer" (the engine forward; Predictor folds BatchNorm)
                from .sparse_engine import engine_forward

                return engine_forward(self, indices, features.to(device), spatial_shape)
        guard_cpu_backward()
        x = spconv.SparseConvTensor(
            features.to(device) * self.config.input_scale,
            indices.to(device=device, dtype=torch.int32),
            self.padded_shape(spatial_shape),
            batch_size,
        )
        x = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.encoder):
            for block in blocks:
                x = block(x)
            if i < len(self.down):
                skips.append(x)
                norm, conv = self.down[i]
                x = conv(norm(x))
        for (norm, inv), blocks, skip in zip(self.up, self.decoder, reversed(skips)):
            x = inv(norm(x))
            x = x.replace_feature(torch.cat([x.features, skip.features], dim=1))
            for block in blocks:
                x = block(x)
        return self.head(self.head_act(self.head_norm(x.features)))


def collate(events, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """Stack events into (indices (N, 1 + D) int32 with batch column 0, features (N, F), shape, B).

    ``shape`` is the per-axis maximum of the events' shapes (each model pads it further).
    """
    events = list(events)
    if not events:
        raise ValueError("uresnet: got an empty list of events")
    d = events[0].ndim
    if dim is not None and d != dim:
        raise ValueError(f"uresnet: this model takes {dim}D events, got a {d}D event")
    if any(ev.ndim != d for ev in events):
        raise ValueError("uresnet: all events of a batch must have the same dimension")
    idx, feats = [], []
    for b, ev in enumerate(events):
        col = np.full((len(ev), 1), b, dtype=np.int32)
        idx.append(np.concatenate([col, ev.coords], axis=1))
        feats.append(ev.features)
    shape = np.max([ev.shape for ev in events], axis=0).tolist()
    indices = torch.from_numpy(np.concatenate(idx, axis=0))
    features = torch.from_numpy(np.concatenate(feats, axis=0))
    return indices, features, shape, len(events)


def split_by_batch(output: torch.Tensor, indices: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split per-row outputs by the batch column of ``indices`` (not by position)."""
    batch = indices[:, 0].to(output.device).long()
    return [output[batch == b] for b in range(batch_size)]


def build_uresnet(**kwargs) -> SparseUResNet:
    """Builder used by the model table: keyword arguments are :class:`UResNetConfig` fields."""
    return SparseUResNet(config_from(UResNetConfig, "uresnet", kwargs))


def widen_state_dict(state: dict[str, torch.Tensor], filters: int, model: SparseUResNet) -> dict[str, torch.Tensor]:
    """Weights of a UResNet with ``filters`` moved into the wider ``model`` (same dim, depth and
    reps, more filters) so that the wider network computes the same logits, in training and in
    evaluation mode.

    Every old channel keeps its index (in the decoder's concatenated [upsampled, skip] input,
    each half keeps its own offset); the new channels keep ``model``'s fresh initialisation,
    except the weights from a new input channel to an old output channel, which are zero: the old
    channels never see the new ones, so the loss starts where the narrow model's ends, and those
    zero weights get gradients at the first step (the new channels are live), so training grows
    the new capacity from there (function-preserving widening, as in Net2Net's zero variant).
    """
    cfg = model.config
    if filters > cfg.filters:
        raise ValueError(f"uresnet: cannot widen {filters} filters into {cfg.filters}")
    new = model.state_dict()
    if set(new) != set(state):
        raise ValueError("uresnet: only the number of filters may differ when widening "
                         "(dim, depth and reps must match)")
    concat = {f"decoder.{k}.0.{name}" for k in range(cfg.depth - 1)
              for name in ("norm1.bn.weight", "norm1.bn.bias", "norm1.bn.running_mean",
                           "norm1.bn.running_var", "conv1.weight", "shortcut.weight")}
    out = {}
    for key, target in new.items():
        src = state[key].to(target.dtype)
        if src.shape == target.shape:
            out[key] = src.clone()
            continue
        if src.dim() != target.dim():
            raise ValueError(f"uresnet: {key} has {src.dim()} dimensions, the wider model {target.dim()}")
        maps = []
        for d, (n_old, n_new) in enumerate(zip(src.shape, target.shape)):
            if key in concat and d == src.dim() - 1 and n_old != n_new:  # input channels: last axis
                half_old, half_new = n_old // 2, n_new // 2
                maps.append(torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)]))
            else:
                maps.append(torch.arange(n_old))
        t = target.clone()
        t[torch.meshgrid(*maps, indexing="ij")] = src
        if t.dim() > 1:  # weights (out, ..., in): no path from a new input to an old output
            old_out = torch.zeros(t.shape[0], dtype=torch.bool)
            old_out[maps[0]] = True
            new_in = torch.ones(t.shape[-1], dtype=torch.bool)
            new_in[maps[-1]] = False
            shape_out = (-1,) + (1,) * (t.dim() - 1)
            shape_in = (1,) * (t.dim() - 1) + (-1,)
            t.masked_fill_(old_out.view(shape_out) & new_in.view(shape_in), 0.0)
        out[key] = t
    return out


def deepen_state_dict(state: dict[str, torch.Tensor], depth: int, model: SparseUResNet) -> dict[str, torch.Tensor]:
    """Weights of a UResNet of ``depth`` levels moved into the deeper ``model`` (same dim,
    filters and reps, more levels) so that the deeper network computes the same logits, in
    training and in evaluation mode.

    The old levels keep their weights (the decoder's lists are indexed from the bottom, so an
    old ``up.k`` / ``decoder.k`` becomes ``up.(k + new - old)``); the new levels below keep
    ``model``'s fresh initialisation, except the decoder blocks of each new decoder level
    (the old bottom level and the new ones), which start as the identity on the skip
    connection: the first block's shortcut takes the skip half of [upsampled | skip] unchanged
    and every block's second convolution is zero. The coarser levels therefore start with no
    influence on the output; the zero weights get gradients at the first step (the upsampled
    half reaches the shortcut and the second convolutions' inputs are live), so training
    grows the new context from there (zero-initialised residual branches).
    """
    cfg = model.config
    if depth >= cfg.depth:
        raise ValueError(f"uresnet: cannot deepen {depth} levels into {cfg.depth}")
    shift = cfg.depth - depth
    new = model.state_dict()
    out = {}

    def split(key: str) -> list[str]:  # "decoder.1.0.conv2.weight" -> decoder, 1, 0.conv2.weight
        return (key.split(".", 2) + ["", ""])[:3]

    for key, src in state.items():
        part, index, rest = split(key)
        if part in ("up", "decoder"):
            key = f"{part}.{int(index) + shift}.{rest}"
        if key not in new or new[key].shape != src.shape:
            raise ValueError("uresnet: only the number of levels may differ when deepening "
                             f"(dim, filters and reps must match; {key} does not fit)")
        out[key] = src.to(new[key].dtype).clone()
    for key, target in new.items():
        if key in out:
            continue
        t = target.clone()
        part, index, rest = split(key)
        if part == "decoder" and int(index) < shift:
            if rest.endswith("conv2.weight"):
                t.zero_()
            elif rest.endswith("shortcut.weight"):  # (w, 2w): [upsampled | skip] -> skip
                w = t.shape[0]
                t.zero_()
                t[:, w:] = torch.eye(w, dtype=t.dtype)
        out[key] = t
    return out
