"""Dense ROI (region-of-interest) networks for wire x tick waveform images, after DNN-ROI.

Four encoder/decoder networks predict, for every (wire, time bin) of one wire plane, the
probability that true signal is present. They follow the comparison table of the DNN-ROI
studies (H. Nam, "Status report on DNN SigProc in PD-HD"):

============================  ==============================  ===========  =====  =======
model                         encoder                         decoder      skips  stride
============================  ==============================  ===========  =====  =======
``roi-unet``                  double 3x3 convs, ReLU          4 stages     yes    1/16
``roi-mobilenetv2``           inverted residuals, ReLU6       2 convs      no     1/32
``roi-mobilenetv3``           inverted residuals + SE,        4 stages     yes    1/32
                              h-swish / ReLU
``roi-transformer``           double 3x3 convs + transformer  4 stages     yes    1/16
                              bottleneck (GELU)
============================  ==============================  ===========  =====  =======

All take a float tensor (B, C, H, W) -- H = wires, W = time bins, C = 1..``in_channels``
input maps (by default 3: deconvolved signal, loose ROI map, tight ROI map; see
:mod:`sparseseg.roi`) -- and return sigmoid probabilities (B, 1, H, W). Inputs of any size
are zero-padded on the bottom/right to a multiple of the network's stride and the output is
cropped back, so a full-size image needs no tiling. Decoder activations are ReLU; the loss
is binary cross-entropy on the probabilities (``torch.nn.BCELoss``).

The models are plain torch (no custom ops), scriptable with ``torch.jit.script`` and
exportable to ONNX (see :mod:`sparseseg.export`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..config import config_from, require_positive

__all__ = [
    "ROIModelConfig",
    "DenseSegmenter",
    "pad_to_multiple",
    "SqueezeExcite",
    "DoubleConv",
    "ROIUNet",
    "MobileNetV2UNet",
    "MobileNetV3UNet",
    "TransformerUNet",
    "build_roi_model",
    "ROI_MODELS",
]


# --------------------------------------------------------------------------- config
@dataclass
class ROIModelConfig:
    """Hyper-parameters shared by the ROI networks (stored in checkpoints).

    Parameters
    ----------
    in_channels : int
        Number of input maps C (1..n); 3 for the DNN-ROI-like input of :mod:`sparseseg.roi`.
    base : int
        Width of the first level (UNet, Transformer-UNet: widths base * 2**i).
    width_mult : float
        Channel multiplier of the MobileNet encoders (1.0 = the published widths).
    layers : int
        Transformer blocks in the Transformer-UNet bottleneck.
    heads : int
        Attention heads in the Transformer-UNet bottleneck.
    """

    in_channels: int = 3
    base: int = 16
    width_mult: float = 1.0
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        require_positive(self, ("in_channels", "base", "layers", "heads"), "ROI model: ")
        if not self.width_mult > 0:
            raise ValueError(f"ROI model: width_mult must be > 0, got {self.width_mult}")


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never below 90 % of ``v``)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


# --------------------------------------------------------------------------- shared pieces
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two axes of ``x`` (B, C, H, W) on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[-2], x.shape[-1]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    # no early return when nothing is needed: ONNX tracing would freeze that branch
    return F.pad(x, [0, pw, 0, ph])


class DenseSegmenter(nn.Module):
    """Base of the ROI networks: input checks, pad to ``stride``, crop back, sigmoid.

    Subclasses set ``STRIDE`` and implement ``logits(x)``: (B, C, H', W') -> (B, 1, H', W') on padded inputs.
    """

    STRIDE: int = 1

    def __init__(self, config: ROIModelConfig) -> None:
        super().__init__()
        self.config = config
        self.in_channels = int(config.in_channels)
        self.stride = int(type(self).STRIDE)
        """Inputs are padded to a multiple of this (the total downsampling)."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, 1, H, W) of signal for an input (B, C, H, W), C <= in_channels.

        Fewer input maps than ``in_channels`` are allowed: the missing ones are zeros.
        """
        if x.dim() != 4:
            raise ValueError(f"ROI model: expected a (B, C, H, W) tensor, got shape {list(x.shape)}")
        if x.shape[1] > self.in_channels:
            raise ValueError(f"ROI model: input has {x.shape[1]} channels, more than the model's in_channels = {self.in_channels}")
        if x.shape[1] < self.in_channels:
            x = F.pad(x, [0, 0, 0, 0, 0, self.in_channels - x.shape[1]])
        h, w = x.shape[-2], x.shape[-1]
        y = self.logits(pad_to_multiple(x, self.stride))
        return torch.sigmoid(y[:, :, :h, :w])


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str = "relu") -> nn.Sequential:
    """k x k convolution (same padding, no bias) + BatchNorm + activation: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "hswish":
        layers.append(nn.Hardswish(inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv + BN + ReLU: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv_bn_act(cin, cout), conv_bn_act(cout, cout))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from its global mean.

    (B, C, H, W) -> (B, C, H, W), out = x * gate(fc2(relu(fc1(mean_hw(x))))), the gate being
    a sigmoid (``hard=False``) or a hard sigmoid (``hard=True``, MobileNetV3). The scale is
    one number per (sample, channel), the same at every pixel.
    """

    def __init__(self, channels: int, reduction: int = 4, hard: bool = False) -> None:
        super().__init__()
        hidden = max(8, _make_divisible(channels / reduction))
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel scale (B, C, 1, 1) in [0, 1]."""
        s = x.mean(dim=(2, 3), keepdim=True)
        return self.gate(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class UpBlock(nn.Module):
    """Decoder stage: upsample x2, concatenate the skip (if any), convolve.

    (B, cin, H, W) [+ skip (B, cskip, 2H, 2W)] -> (B, cout, 2H, 2W).
    """

    def __init__(self, cin: int, cskip: int, cout: int, transposed: bool = True) -> None:
        super().__init__()
        self.transposed = transposed
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2) if transposed else nn.Identity()
        cup = cin // 2 if transposed else cin
        self.conv = DoubleConv(cup + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


# --------------------------------------------------------------------------- UNet
class ROIUNet(DenseSegmenter):
    """UNet: 5 levels of double 3x3 convs (widths base..16 base), 4 max-pools (1/16),
    transposed-conv upsampling, concatenated skips, ReLU; (B, C, H, W) -> (B, 1, H, W)."""

    STRIDE = 16

    def __init__(self, config: ROIModelConfig | None = None, **kwargs) -> None:
        super().__init__(config or ROIModelConfig(**kwargs))
        w = [self.config.base * 2**i for i in range(5)]
        self.encoder = nn.ModuleList([DoubleConv(self.in_channels, w[0])] + [DoubleConv(w[i - 1], w[i]) for i in range(1, 5)])
        self.decoder = nn.ModuleList([UpBlock(w[i + 1], w[i], w[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        for i, enc in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        x = self.bottleneck(x)
        for i, dec in enumerate(self.decoder):
            x = dec(x, skips[3 - i])
        return self.head(x)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """What runs on the 1/16 features between encoder and decoder: nothing in the UNet."""
        return x


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection;
    identity shortcut when stride 1 and cin == cout. (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, 1, act="relu6"))
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                   conv_bn_act(hidden, cout, 1, act="none")]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (expansion t, channels c, repeats n, first stride s) of MobileNetV2
_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2UNet(DenseSegmenter):
    """MobileNetV2 encoder (depthwise-separable inverted residuals, ReLU6, 1/32) and a light
    decoder of 2 conv stages without skips (bilinear x4, x4, x2 upsampling, ReLU).

    (B, C, H, W) -> (B, 1, H, W).
    """

    STRIDE = 32

    def __init__(self, config: ROIModelConfig | None = None, **kwargs) -> None:
        super().__init__(config or ROIModelConfig(**kwargs))
        m = self.config.width_mult
        c0 = _make_divisible(32 * m)
        layers: list[nn.Module] = [conv_bn_act(self.in_channels, c0, 3, 2, act="relu6")]
        cin = c0
        for t, c, n, s in _V2_SETTINGS:
            cout = _make_divisible(c * m)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.encoder = nn.Sequential(*layers)
        d1, d2 = _make_divisible(64 * m), _make_divisible(32 * m)
        self.dec1 = conv_bn_act(cin, d1)
        self.dec2 = conv_bn_act(d1, d2)
        self.head = nn.Conv2d(d2, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        x = self.dec1(F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))
        x = self.dec2(F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.head(x)


# --------------------------------------------------------------------------- MobileNetV3
class Bneck(nn.Module):
    """MobileNetV3 block: 1x1 expand, k x k depthwise, optional SE (hard sigmoid), 1x1
    projection; activation ReLU or h-swish; identity shortcut when shapes allow.
    (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn_act(cin, hidden, 1, act=act))
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, 4, hard=True))
        layers.append(conv_bn_act(hidden, cout, 1, act="none"))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# MobileNetV3-Large bnecks (kernel, expansion, out, SE, activation, stride), grouped by the
# resolution they end at: 1/2, 1/4, 1/8, 1/16, 1/32 (the stem conv does the first /2)
_V3_STAGES = (
    ((3, 16, 16, False, "relu", 1),),
    ((3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1)),
    ((5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1)),
    ((3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
     (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1)),
    ((5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1)),
)


class MobileNetV3UNet(DenseSegmenter):
    """MobileNetV3-Large encoder (inverted residuals + SE, h-swish/ReLU, 1/32) and a UNet
    decoder of 4 double-conv stages (bilinear x2 + concatenated skip from 1/16 .. 1/2, ReLU),
    then x2 to full size. (B, C, H, W) -> (B, 1, H, W)."""

    STRIDE = 32

    def __init__(self, config: ROIModelConfig | None = None, **kwargs) -> None:
        super().__init__(config or ROIModelConfig(**kwargs))
        m = self.config.width_mult
        c0 = _make_divisible(16 * m)
        self.stem = conv_bn_act(self.in_channels, c0, 3, 2, act="hswish")
        stages, widths, cin = [], [], c0
        for stage in _V3_STAGES:
            blocks = []
            for k, e, c, se, act, s in stage:
                cout = _make_divisible(c * m)
                blocks.append(Bneck(cin, k, _make_divisible(e * m), cout, se, act, s))
                cin = cout
            stages.append(nn.Sequential(*blocks))
            widths.append(cin)
        self.stages = nn.ModuleList(stages)
        dec_w = [_make_divisible(w * m) for w in (96, 64, 32, 16)]
        blocks, cin = [], widths[4]
        for i, cout in enumerate(dec_w):
            blocks.append(UpBlock(cin, widths[3 - i], cout, transposed=False))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        for i, dec in enumerate(self.decoder):
            x = dec(x, skips[3 - i])
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.head(x)


# --------------------------------------------------------------------------- Transformer-UNet
class TransformerBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention + GELU MLP (ratio 2).

    (B, N, C) -> (B, N, C). Written with plain matmuls so that it scripts and exports as-is.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ROI transformer: width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = float((dim // heads) ** -0.5)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, d)
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class TransformerUNet(ROIUNet):
    """UNet (double 3x3 convs, 1/16, skips, ReLU) whose bottleneck is a transformer: a
    depthwise-conv position encoding then ``layers`` GELU transformer blocks over the
    (H/16)(W/16) tokens. (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(self, config: ROIModelConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        top = self.config.base * 16
        self.pos = nn.Conv2d(top, top, 3, padding=1, groups=top)
        self.transformer = nn.ModuleList([TransformerBlock(top, self.config.heads) for _ in range(self.config.layers)])
        self.norm = nn.LayerNorm(top)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        for blk in self.transformer:
            t = blk(t)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)


# --------------------------------------------------------------------------- builders
ROI_MODELS = {
    "roi-unet": ROIUNet,
    "roi-mobilenetv2": MobileNetV2UNet,
    "roi-mobilenetv3": MobileNetV3UNet,
    "roi-transformer": TransformerUNet,
}
"""Model-table name -> class of the ROI networks."""


def build_roi_model(name: str, **kwargs) -> DenseSegmenter:
    """Build ROI network ``name`` (a key of :data:`ROI_MODELS`) from :class:`ROIModelConfig` fields."""
    if name not in ROI_MODELS:
        raise ValueError(f"unknown ROI model {name!r}; available: {', '.join(ROI_MODELS)}")
    return ROI_MODELS[name](config_from(ROIModelConfig, name, kwargs))
