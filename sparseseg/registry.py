"""The shipped weights and configs: one table that ``predict``, ``bench``, the tests and the docs use.

Weights, their model cards and the training configs are package data (``sparseseg/weights``,
``sparseseg/configs``), so ``pip install sparseseg`` has a default model on any machine. In a
source checkout the top-level ``weights/`` and ``configs/`` are links to these folders.

Each entry records the file's sha256; a test checks every file against it, so replacing a
shipped file without updating this table fails the suite. ``scripts/ship_weights.py`` prints
the new sha256.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
CONFIGS_DIR = PACKAGE_DIR / "configs"


@dataclass(frozen=True)
class Shipped:
    """One shipped weights file."""

    name: str
    file: str  # in WEIGHTS_DIR
    card: str  # model card, in WEIGHTS_DIR
    config: str  # training config, in CONFIGS_DIR
    task: str
    sha256: str
    trained_on: str
    feature_scale: str
    """The feature values the weights expect, in words (for the unlike-training-data warnings)."""

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def card_path(self) -> Path:
        return WEIGHTS_DIR / self.card


def _roi(name: str, network: str, sha: str) -> Shipped:
    """A shipped DNN-ROI network: every one is trained on the same waveform simulation."""
    return Shipped(name, f"{name}.pt", f"{name}.md", f"{name}.yaml",
                   f"DNN-ROI signal-region finder (dense {network}) on deconvolved wire waveforms", sha,
                   "sparseseg.roi waveform simulation, U plane, 128 wires x 1280 ticks", "deconvolved charge per tick")


SHIPPED: dict[str, Shipped] = {s.name: s for s in (
    Shipped("uresnet2d", "uresnet2d.pt", "uresnet2d.md", "uresnet2d.yaml",
            "2D segmentation (HIP/MIP/shower/delta/Michel), U, V and Y planes",
            "4799ca5e209ee470ed4e9d688335ed98475323dd34e17747c0bddd0faed18690",
            "simulator 0.4, then 0.5 (hadronic interactions) in five stages (the last deepened from five to six levels), preset crop512, detector augmentation, label rule visible",
            "wire-plane ADC (any gain: each image is rescaled to its own MIP scale)"),
    Shipped("uresnet3d", "uresnet3d.pt", "uresnet3d.md", "uresnet3d.yaml",
            "3D segmentation (HIP/MIP/shower/delta/Michel) of voxel volumes",
            "2d3a74b319866095fe302d6df8aedc158aa765496afa129c83263536cb4c10a0",
            "simulator 0.4, then 0.5 (hadronic interactions) in six stages (the last the average of two runs), preset pilarnet (voxel energy in MeV), energy scale x0.5-2, label rule visible",
            "voxel energy, any scale (MeV as in PILArNet-M, or ADC): each volume is rescaled to its own MIP scale"),
    _roi("roi_mobilenetv3", "MobileNetV3-UNet", "16ead342e2a9a4957514879409ebe088540b78fe2345b9b39c7568d2b3e7318f"),
    _roi("roi_unet", "UNet", "db3a6b757057867f6c1ec740373bd15fa3d7e91c5939df4013c961f6144dcaa6"),
    _roi("roi_transformer", "Transformer-UNet", "2ad54a8ff3df6abc08b8a879796c71b728055ba72a23aaa4f75d99b065333150"),
    _roi("roi_mobilenetv2", "MobileNetV2-UNet", "75d04732bca75e52eecea859297ef0200f1807c29e2f370ceb9c59fbf3f4587e"),
    Shipped("cvn", "cvn.pt", "cvn.md", "cvn.yaml",
            "event classifier nu_mu CC / nu_e CC / NC (dense SE-ResNet CVN)",
            "1ee4aaaeaf4f76de637d1c02273545e9dd691b763875d226235a94f1f50fbd15",
            "simulator 0.4, then 0.5 (hadronic interactions), preset crop512, 500 x 500 views around the vertex, balanced training",
            "wire-plane ADC, any gain: each view is rescaled to its own MIP scale"),
)}

DEFAULT_SEGMENTATION = {2: "uresnet2d", 3: "uresnet3d"}
"""Registry name of the default segmentation weights per dimension."""


def get(name: str) -> Shipped:
    """The registry entry ``name``; a ValueError listing the names otherwise."""
    try:
        return SHIPPED[name]
    except KeyError:
        raise ValueError(f"no shipped weights named {name!r}; shipped: {', '.join(SHIPPED)}") from None


def default_weights(dim: int) -> Path:
    """Path of the default segmentation weights for ``dim``-D events."""
    if dim not in DEFAULT_SEGMENTATION:
        raise ValueError(f"no default weights for {dim}-D events (2 or 3)")
    return SHIPPED[DEFAULT_SEGMENTATION[dim]].path


def shipped_for(path: str | Path) -> Shipped | None:
    """The registry entry whose file is ``path`` (same file), or None."""
    try:
        p = Path(path).resolve()
    except OSError:
        return None
    for s in SHIPPED.values():
        if s.path.resolve() == p:
            return s
    return None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(name: str) -> tuple[bool, str]:
    """(ok, message): whether the shipped file exists and has the recorded sha256."""
    s = get(name)
    if not s.path.exists():
        return False, f"{s.path}: missing"
    got = sha256(s.path)
    if got != s.sha256:
        return False, f"{s.path}: sha256 {got[:12]}..., the registry records {s.sha256[:12]}..."
    return True, "ok"


def config_names() -> list[str]:
    """Names (file stems) of the shipped training configs."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    """Path of shipped config ``name`` (``uresnet2d`` or ``uresnet2d.yaml``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    p = CONFIGS_DIR / f"{stem}.yaml"
    if not p.exists():
        raise ValueError(f"no shipped config named {name!r}; shipped: {', '.join(config_names())}")
    return p
