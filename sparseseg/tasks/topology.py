"""Event classification that reads the segmentation: topology features of each view, taken from
the sparse UResNet's pixel classes, combined with the CVN's probabilities by a logistic
regression (nu_mu CC / nu_e CC / NC).

What the CVN has to learn from raw charge, the segmentation states pixel by pixel: a long
track leaving the vertex (the muon of a nu_mu CC), a shower that starts at the vertex with the
charge of one electron (nu_e CC), or showers that start away from it with the charge of an
electron pair (the photons of a pi0 in NC). Per view (:data:`VIEW_FEATURES`):

- pixels predicted HIP, MIP, shower, delta, Michel;
- the longest track component (8-connected HIP/MIP pixels) that reaches within
  :data:`VERTEX_RADIUS` pixels of the vertex: its length (largest distance from the vertex,
  pixels) and median charge (MIP units, the view's own MIP scale);
- the two largest shower-like components (8-connected shower/delta/Michel pixels with at least
  :data:`MIN_SHOWER_PIXELS`): size, gap (closest pixel to the vertex, pixels), start charge
  (mean charge of its :data:`START_PIXELS` pixels closest to the vertex, MIP units); absent
  ones read 0, -1, -1;
- the number of such shower-like components.

The vertex comes with each view (``Event.vertices[0]``: the simulation's truth, or a
reconstructed vertex), as the CVN's views are centred on it. The classifier is stored as JSON
(feature names, standardisation, coefficients, training provenance): no pickled objects, and
another framework can apply it from the file alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..classes import CVN_CLASSES

VERTEX_RADIUS = 6.0
"""Pixels: a track component starts at the vertex if one of its pixels is this close."""
MIN_SHOWER_PIXELS = 20
"""Smallest shower-like component counted (a few cm of shower)."""
START_PIXELS = 8
"""Pixels of a shower closest to the vertex whose mean charge is its start charge."""
VIEW_FEATURES = ("n_hip", "n_mip", "n_shower", "n_delta", "n_michel", "track_length", "track_charge",
                 "shower1_pixels", "shower1_gap", "shower1_start_charge",
                 "shower2_pixels", "shower2_gap", "shower2_start_charge", "n_showers")
PLANE_NAMES = ("U", "V", "Y")
FEATURE_NAMES = tuple(f"{p}_{f}" for p in PLANE_NAMES for f in VIEW_FEATURES) + tuple(
    f"cvn_log_p_{c.replace(' ', '_')}" for c in CVN_CLASSES)
FORMAT = "sparseseg-topology-classifier/1"


def shipped_classifier_path() -> Path:
    """The shipped classifier (``weights/topology.json``, card ``weights/topology.md``), fitted on
    the outputs of the shipped 2D segmentation and CVN weights."""
    from ..registry import WEIGHTS_DIR

    return WEIGHTS_DIR / "topology.json"


def _components(coords: np.ndarray, shape, mask: np.ndarray) -> np.ndarray:
    """8-connected component id (0..K-1) of each masked pixel; -1 elsewhere."""
    from scipy import ndimage

    out = np.full(len(mask), -1, np.int64)
    if mask.any():
        img = np.zeros(shape, bool)
        img[coords[mask, 0], coords[mask, 1]] = True
        lab, _ = ndimage.label(img, structure=np.ones((3, 3), bool))
        out[mask] = lab[coords[mask, 0], coords[mask, 1]] - 1
    return out


def view_features(event, pred: np.ndarray) -> np.ndarray:
    """The :data:`VIEW_FEATURES` (float64) of one 2D view and its predicted classes (N,)."""
    from ..calibration import mip_scale
    from ..classes import TRACK, to_track_shower

    pred = np.asarray(pred).astype(np.int64)
    if event.ndim != 2 or len(pred) != len(event):
        raise ValueError(f"view_features: expected a 2D event and one class per pixel, got dim {event.ndim}, "
                         f"{len(event)} pixels and {len(pred)} classes")
    if event.vertices is None or len(event.vertices) == 0:
        raise ValueError("view_features: the event has no vertex (Event.vertices); the features are measured from it")
    f = np.zeros(len(VIEW_FEATURES))
    f[:5] = np.bincount(pred, minlength=5)[:5]
    if len(event) == 0:
        f[[8, 9, 11, 12]] = -1.0
        return f
    charge = event.features[:, 0] / max(mip_scale(event.features[:, 0]), 1.0)
    coords = event.coords.astype(np.int64)
    dist = np.linalg.norm(coords - np.asarray(event.vertices[0], np.float64), axis=1)
    track = to_track_shower(pred) == TRACK
    comp = _components(coords, event.shape, track)
    for c in np.unique(comp[track & (dist < VERTEX_RADIUS)]):
        m = comp == c
        length = dist[m].max()
        if length > f[5]:
            f[5], f[6] = length, np.median(charge[m])
    comp = _components(coords, event.shape, ~track)
    sizes = np.bincount(comp[~track]) if (~track).any() else np.zeros(0, np.int64)
    big = np.flatnonzero(sizes >= MIN_SHOWER_PIXELS)
    big = big[np.argsort(-sizes[big], kind="stable")]
    for k in range(2):
        base = 7 + 3 * k
        if k < len(big):
            m = comp == big[k]
            order = np.argsort(dist[m], kind="stable")[:START_PIXELS]
            f[base:base + 3] = sizes[big[k]], dist[m].min(), charge[m][order].mean()
        else:
            f[base:base + 3] = 0.0, -1.0, -1.0
    f[13] = len(big)
    return f


def interaction_features(views: Sequence, preds: Sequence[np.ndarray], cvn_probs: np.ndarray) -> np.ndarray:
    """:data:`FEATURE_NAMES` of one interaction: its U, V, Y views with their predicted classes,
    and the CVN's probabilities (3,)."""
    if len(views) != 3 or len(preds) != 3:
        raise ValueError(f"interaction_features: expected the U, V and Y views, got {len(views)} views")
    p = np.asarray(cvn_probs, np.float64).reshape(-1)
    if p.shape != (len(CVN_CLASSES),):
        raise ValueError(f"interaction_features: expected {len(CVN_CLASSES)} CVN probabilities, got shape {p.shape}")
    return np.concatenate([*(view_features(v, q) for v, q in zip(views, preds)), np.log(np.maximum(p, 1e-6))])


def _transform(x: np.ndarray) -> np.ndarray:
    """Signed log(1 + |x|) of the counts, lengths and charges (the CVN log-probabilities pass
    through it too; it is monotonic)."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class TopologyClassifier:
    """Standardised, log-compressed features -> multinomial logistic regression."""

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray  # (3, F)
    intercept: np.ndarray  # (3,)
    names: tuple = FEATURE_NAMES
    classes: tuple = tuple(CVN_CLASSES)
    info: dict = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 3) of feature rows ``x`` (n, F)."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        if x.shape[1] != len(self.names):
            raise ValueError(f"TopologyClassifier: expected {len(self.names)} features per row, got {x.shape[1]}")
        z = (_transform(x) - self.mean) / self.std @ self.coef.T + self.intercept
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "classes": list(self.classes), "features": list(self.names),
                "transform": "sign(x) * log(1 + |x|), then (x - mean) / std",
                "mean": self.mean.tolist(), "std": self.std.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "info": self.info}

    def save(self, path: str | Path) -> Path:
        from ..atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TopologyClassifier":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a topology classifier file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a topology classifier file (format {d.get('format') if isinstance(d, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        if tuple(d["features"]) != FEATURE_NAMES:
            raise ValueError(f"{path}: its features differ from this version's ({len(d['features'])} vs {len(FEATURE_NAMES)})")
        return cls(np.array(d["mean"]), np.array(d["std"]), np.array(d["coef"]), np.array(d["intercept"]),
                   tuple(d["features"]), tuple(d["classes"]), dict(d.get("info", {})))


def fit(x: np.ndarray, y: np.ndarray, c: float = 0.1, info: dict | None = None) -> TopologyClassifier:
    """Fit the logistic regression (L2, inverse strength ``c``) on feature rows ``x`` and classes ``y``."""
    from sklearn.linear_model import LogisticRegression

    t = _transform(np.asarray(x, np.float64))
    mean, std = t.mean(0), t.std(0)
    std = np.where(std > 0, std, 1.0)
    lr = LogisticRegression(C=c, max_iter=5000).fit((t - mean) / std, np.asarray(y))
    if list(lr.classes_) != list(range(len(CVN_CLASSES))):
        raise ValueError(f"fit: every class must occur in the training rows, got classes {lr.classes_.tolist()}")
    return TopologyClassifier(mean, std, lr.coef_.copy(), lr.intercept_.copy(), info=dict(info or {}, c=c, n=len(y)))


def feature_table(n: int, seed: int, predictor, cvn_model, preset: str = "crop512", progress: bool = True,
                  conditions=None):
    """Feature rows (n, F) and classes (n,) of the first ``n`` neutrino interactions of the
    simulator stream ``(preset, seed)`` (the interactions :func:`~sparseseg.tasks.cvn.cvn_dataset`
    draws): each interaction's views are segmented by ``predictor`` and classified by ``cvn_model``.
    ``conditions`` (a :class:`~sparseseg.simulate.detector.Conditions`; None: nominal) changes the
    detector response only, never the interactions."""
    from tqdm import tqdm

    from ..simulate import simulate_full
    from .cvn import TOPOLOGY_CLASS, cvn_probabilities, cvn_views, neutrino_indices

    x = np.zeros((n, len(FEATURE_NAMES)))
    y = np.zeros(n, np.int64)
    for k, index in enumerate(tqdm(neutrino_indices(n, seed, preset=preset), desc="interactions",
                                   disable=not progress, unit="int")):
        events, truth = simulate_full(preset, seed, int(index), conditions=conditions)
        preds = [p for p, _ in predictor.predict(events)]
        probs = cvn_probabilities(cvn_model, cvn_views(events)[None])[0]
        x[k] = interaction_features(events, preds, probs)
        y[k] = TOPOLOGY_CLASS[truth.topology]
    return x, y
