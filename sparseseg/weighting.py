"""Per-pixel loss weights for class imbalance (SparseSSNet style).

weight = class weight x cluster weight x vertex weight x plane weight, each optional.
Pixels labelled 255 (ignore) get weight 0. All functions are plain numpy and take the
arrays of one image (or of a concatenated batch where noted).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import IGNORE, NUM_CLASSES

CLASS_MODES = ("none", "const", "inverse", "sqrt", "log")
DEFAULT_CLASS_VALUES = (1.5, 1.0, 1.0, 1.5, 3.0)
"""Constant class weights of the default recipe: HIP, MIP, shower, delta, Michel."""


def cluster_weights(clusters: np.ndarray, clip: tuple[float, float] = (0.05, 20.0)) -> np.ndarray:
    """w ∝ 1 / N_cluster, so each particle counts as much as any other.

    Pixels of a cluster of size n get ``(N / K) / n``, where N is the number of clustered
    pixels and K the number of clusters (so the mean weight over clustered pixels is 1 before
    clipping); the result is clipped to ``clip``. Pixels with cluster id -1 get 1.
    """
    clusters = np.asarray(clusters)
    w = np.ones(clusters.shape[0], dtype=np.float32)
    member = clusters >= 0
    if not member.any():
        return w
    ids, inverse, counts = np.unique(clusters[member], return_inverse=True, return_counts=True)
    mean_size = member.sum() / len(ids)
    w[member] = mean_size / counts[inverse]
    return np.clip(w, clip[0], clip[1]).astype(np.float32)


def vertex_weights(coords: np.ndarray, vertices: np.ndarray | None, radius: float = 3.0, boost: float = 5.0) -> np.ndarray:
    """``boost`` for pixels within ``radius`` (Euclidean, pixels) of any vertex, 1 elsewhere."""
    n = coords.shape[0]
    w = np.ones(n, dtype=np.float32)
    if vertices is None or len(vertices) == 0 or n == 0:
        return w
    near = np.zeros(n, dtype=bool)
    c = coords.astype(np.float32)
    r2 = radius * radius
    for v in np.asarray(vertices, dtype=np.float32):
        lo = v - radius
        hi = v + radius
        box = np.all((c >= lo) & (c <= hi), axis=1)  # cheap pre-selection
        if box.any():
            idx = np.nonzero(box)[0]
            d2 = ((c[idx] - v) ** 2).sum(axis=1)
            near[idx[d2 <= r2]] = True
    w[near] = boost
    return w


def class_weights(labels: np.ndarray, mode: str = "inverse", values=None, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-class weights (num_classes,) from the label frequencies f_c of ``labels``.

    - ``none``: all 1;
    - ``const``: the fixed ``values`` (one per class);
    - ``inverse``: 1 / f_c;  ``sqrt``: 1 / sqrt(f_c);  ``log``: 1 / ln(1.02 + f_c) (ENet's form).
    Frequency-based weights are scaled so that the pixel-averaged weight is 1; classes
    absent from ``labels`` get weight 0 (they have no pixels to weigh).
    """
    if mode not in CLASS_MODES:
        raise ValueError(f"class weighting mode {mode!r} unknown; expected one of {', '.join(CLASS_MODES)}")
    if mode == "none":
        return np.ones(num_classes, dtype=np.float32)
    if mode == "const":
        if values is None or len(values) != num_classes:
            raise ValueError(f"class weighting 'const' needs {num_classes} values, got {values!r}")
        return np.asarray(values, dtype=np.float32)
    lab = np.asarray(labels)
    lab = lab[lab != IGNORE]
    counts = np.bincount(lab.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
    total = counts.sum()
    w = np.zeros(num_classes, dtype=np.float64)
    if total == 0:
        return np.ones(num_classes, dtype=np.float32)
    f = counts / total
    present = counts > 0
    if mode == "inverse":
        w[present] = 1.0 / f[present]
    elif mode == "sqrt":
        w[present] = 1.0 / np.sqrt(f[present])
    else:
        w[present] = 1.0 / np.log(1.02 + f[present])
    w /= (w * f).sum()
    return w.astype(np.float32)


@dataclass
class WeightConfig:
    """Which factors make up the pixel weight, and their parameters (the ``weights:`` config)."""

    # Defaults: the recipe of the shipped 2D weights, the best of the equal-compute comparison
    # in scripts/recipe_ablation.py (README "Choosing the loss weights"); 1/N cluster weights
    # and batch inverse-frequency class weights cost 0.3 in pixel accuracy there.
    cluster: bool = False
    cluster_clip: tuple[float, float] = (0.05, 20.0)
    vertex: bool = True
    vertex_radius: float = 3.0
    vertex_boost: float = 2.0
    class_mode: str = "const"
    class_values: list | None = field(default_factory=lambda: list(DEFAULT_CLASS_VALUES))
    plane: dict = field(default_factory=dict)
    """Per-plane multipliers, e.g. {"U": 1.0, "V": 1.0, "Y": 1.5}; missing planes get 1."""

    def __post_init__(self) -> None:
        if self.class_mode not in CLASS_MODES:
            raise ValueError(f"weights.class_mode {self.class_mode!r} unknown; expected one of {', '.join(CLASS_MODES)}")
        self.cluster_clip = tuple(float(x) for x in self.cluster_clip)


def pixel_weights(events, config: WeightConfig | None = None) -> np.ndarray:
    """Concatenated per-pixel weights for a list of events (the batch order of the model).

    Class weights are computed over the whole batch; cluster and vertex weights per event.
    Pixels labelled 255 get 0.
    """
    cfg = config or WeightConfig()
    labels = np.concatenate([ev.labels for ev in events]) if events else np.zeros(0, np.uint8)
    cw = class_weights(labels, cfg.class_mode, cfg.class_values)
    parts = []
    for ev in events:
        w = np.ones(len(ev), dtype=np.float32)
        lab = ev.labels
        valid = lab != IGNORE
        w[valid] *= cw[lab[valid]]
        if cfg.cluster and ev.clusters is not None:
            w *= cluster_weights(ev.clusters, cfg.cluster_clip)
        if cfg.vertex:
            w *= vertex_weights(ev.coords, ev.vertices, cfg.vertex_radius, cfg.vertex_boost)
        if cfg.plane:
            w *= np.float32(cfg.plane.get(ev.plane, 1.0))
        w[~valid] = 0.0
        parts.append(w)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
