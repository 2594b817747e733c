"""Event classification that reads the segmentation: topology features of each view, taken from
the sparse UResNet's pixel classes, combined with the CVN's probabilities by boosted decision
trees (nu_mu CC / nu_e CC / NC).

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

A particle is seen in all three views, so the classifier also reads what the views agree on
(:data:`SUMMARY_FEATURES`, computed from the rows by :func:`summary_features`): the longest
track and the closest shower over the views, medians over the views that see a shower, and
pixel fractions.

The vertex comes with each view (``Event.vertices[0]``: the simulation's truth, or a
reconstructed vertex), as the CVN's views are centred on it. The classifier is stored as JSON
(feature names, standardisation, then either the trees' node arrays or a logistic regression's
coefficients, and the provenance): no pickled objects, and another framework can apply it from
the file alone (:meth:`TopologyClassifier.probabilities` is the whole recipe).
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
SUMMARY_FEATURES = ("track_length_max", "track_length_median", "shower1_gap_min", "shower1_gap_median",
                    "shower1_start_charge_min", "shower1_start_charge_median", "shower2_pixels_max",
                    "shower2_pixels_median", "shower2_gap_median", "n_showers_max", "n_showers_median",
                    "shower_fraction", "track_fraction", "hip_fraction", "shower1_fraction")
"""Over the three views: max / median of a feature; min / median of a shower's gap and start
charge over the views where that shower exists (-1 when none has it); fractions of all pixels
(predicted shower-like, track, HIP, in the largest shower), averaged over the views."""
FORMAT = "sparseseg-topology-classifier/2"
MODELS = ("trees", "logistic")


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


def summary_features(x: np.ndarray) -> np.ndarray:
    """:data:`SUMMARY_FEATURES` (n, S) of feature rows ``x`` (n, :data:`FEATURE_NAMES`)."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    v = x[:, :len(PLANE_NAMES) * len(VIEW_FEATURES)].reshape(len(x), len(PLANE_NAMES), len(VIEW_FEATURES))
    col = {name: v[:, :, i] for i, name in enumerate(VIEW_FEATURES)}

    def over_present(name, gap, reduce):  # views where the shower exists (gap >= 0); -1 if none
        present = col[gap] >= 0
        vals = np.where(present, col[name], np.nan)
        out = np.full(len(x), -1.0)
        any_ = present.any(1)
        if any_.any():
            out[any_] = reduce(vals[any_], axis=1)
        return out

    total = v[:, :, :5].sum(2)
    frac = lambda a: (a / np.maximum(total, 1.0)).mean(1)  # noqa: E731
    return np.column_stack([
        col["track_length"].max(1), np.median(col["track_length"], 1),
        over_present("shower1_gap", "shower1_gap", np.nanmin), over_present("shower1_gap", "shower1_gap", np.nanmedian),
        over_present("shower1_start_charge", "shower1_gap", np.nanmin),
        over_present("shower1_start_charge", "shower1_gap", np.nanmedian),
        col["shower2_pixels"].max(1), np.median(col["shower2_pixels"], 1),
        over_present("shower2_gap", "shower2_gap", np.nanmedian),
        col["n_showers"].max(1), np.median(col["n_showers"], 1),
        frac(col["n_shower"] + col["n_delta"] + col["n_michel"]), frac(col["n_hip"] + col["n_mip"]),
        frac(col["n_hip"]), frac(col["shower1_pixels"])])


def _transform(x: np.ndarray) -> np.ndarray:
    """Signed log(1 + |x|) of the counts, lengths and charges (the CVN log-probabilities pass
    through it too; it is monotonic)."""
    return np.sign(x) * np.log1p(np.abs(x))


def _inputs(x: np.ndarray) -> np.ndarray:
    """The classifier's inputs before standardisation: the rows and their summary, log-compressed."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    return _transform(np.hstack([x, summary_features(x)]))


def _tree_sum(trees: list[dict], z: np.ndarray) -> np.ndarray:
    """Sum over ``trees`` of each row's leaf value. A node with ``left`` < 0 is a leaf; a row goes
    left when its feature (as float32, as the trees were grown) is <= the node's threshold."""
    z = np.asarray(z, np.float32)
    rows = np.arange(len(z))
    total = np.zeros(len(z))
    for t in trees:
        node = np.zeros(len(z), np.int64)
        while True:
            inner = t["left"][node] >= 0
            if not inner.any():
                break
            go_left = z[rows, np.where(inner, t["feature"][node], 0)] <= t["threshold"][node]
            node = np.where(inner, np.where(go_left, t["left"][node], t["right"][node]), node)
        total += t["value"][node]
    return total


@dataclass
class TopologyClassifier:
    """Log-compressed, standardised features and their summary -> boosted decision trees
    (``model`` "trees": ``params`` holds ``init`` (3,), ``learning_rate`` and ``trees``, per stage
    one tree per class, each as node arrays) or a multinomial logistic regression ("logistic":
    ``coef`` (3, F), ``intercept`` (3,)). The class scores pass through a softmax."""

    model: str
    mean: np.ndarray
    std: np.ndarray
    params: dict
    names: tuple = FEATURE_NAMES
    classes: tuple = tuple(CVN_CLASSES)
    info: dict = field(default_factory=dict)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores (n, 3) before the softmax."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        if x.shape[1] != len(self.names):
            raise ValueError(f"TopologyClassifier: expected {len(self.names)} features per row, got {x.shape[1]}")
        z = (_inputs(x) - self.mean) / self.std
        p = self.params
        if self.model == "logistic":
            return z @ np.asarray(p["coef"]).T + np.asarray(p["intercept"])
        out = np.tile(np.asarray(p["init"], np.float64), (len(z), 1))
        for k in range(out.shape[1]):
            out[:, k] += p["learning_rate"] * _tree_sum([stage[k] for stage in p["trees"]], z)
        return out

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 3) of feature rows ``x`` (n, F)."""
        z = self.scores(x)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, dict):
                return {k: plain(w) for k, w in v.items()}
            if isinstance(v, list):
                return [plain(w) for w in v]
            return v

        return {"format": FORMAT, "model": self.model, "classes": list(self.classes), "features": list(self.names),
                "summary_features": list(SUMMARY_FEATURES),
                "transform": "rows plus summary_features, sign(x) * log(1 + |x|), then (x - mean) / std",
                "mean": self.mean.tolist(), "std": self.std.tolist(), "params": plain(self.params), "info": self.info}

    def save(self, path: str | Path) -> Path:
        from ..atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TopologyClassifier":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a topology classifier file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a topology classifier file (format {d.get('format') if isinstance(d, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        if tuple(d["features"]) != FEATURE_NAMES or tuple(d["summary_features"]) != SUMMARY_FEATURES:
            raise ValueError(f"{path}: its features differ from this version's "
                             f"({len(d['features'])} + {len(d['summary_features'])} vs {len(FEATURE_NAMES)} + {len(SUMMARY_FEATURES)})")
        if d.get("model") not in MODELS:
            raise ValueError(f"{path}: unknown model {d.get('model')!r}, expected one of {MODELS}")
        params = dict(d["params"])
        if d["model"] == "trees":
            params["trees"] = [[{k: np.asarray(v, np.float64 if k in ("threshold", "value") else np.int64)
                                 for k, v in t.items()} for t in stage] for stage in params["trees"]]
        return cls(d["model"], np.array(d["mean"]), np.array(d["std"]), params, tuple(d["features"]),
                   tuple(d["classes"]), dict(d.get("info", {})))


TREE_DEFAULTS = {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.8}
"""Gradient boosting of the shipped classifier (scikit-learn's GradientBoostingClassifier)."""


def _estimator(model: str, c: float, seed: int):
    if model == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=5000)
    if model == "trees":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(random_state=seed, **TREE_DEFAULTS)
    raise ValueError(f"unknown model {model!r}, expected one of {MODELS}")


def fit(x: np.ndarray, y: np.ndarray, model: str = "trees", c: float = 0.1, seed: int = 0,
        info: dict | None = None) -> TopologyClassifier:
    """Fit the classifier on feature rows ``x`` and classes ``y``: boosted trees
    (:data:`TREE_DEFAULTS`, random seed ``seed``) or a logistic regression (L2, inverse strength ``c``)."""
    est = _estimator(model, c, seed)
    t = _inputs(x)
    mean, std = t.mean(0), t.std(0)
    std = np.where(std > 0, std, 1.0)
    z = (t - mean) / std
    y = np.asarray(y)
    if sorted(set(y.tolist())) != list(range(len(CVN_CLASSES))):
        raise ValueError(f"fit: every class must occur in the training rows, got classes {sorted(set(y.tolist()))}")
    est.fit(z, y)
    if model == "logistic":
        params = {"coef": est.coef_.copy(), "intercept": est.intercept_.copy()}
        hyper = {"c": c}
    else:
        trees = [[{"feature": e.tree_.feature.astype(np.int64), "threshold": e.tree_.threshold.astype(np.float64),
                   "left": e.tree_.children_left.astype(np.int64), "right": e.tree_.children_right.astype(np.int64),
                   "value": e.tree_.value[:, 0, 0].astype(np.float64)} for e in stage] for stage in est.estimators_]
        lr = est.learning_rate
        tree_part = np.stack([lr * _tree_sum([s[k] for s in trees], z[:1]) for k in range(len(CVN_CLASSES))], 1)
        params = {"init": est.decision_function(z[:1])[0] - tree_part[0], "learning_rate": lr, "trees": trees}
        hyper = dict(TREE_DEFAULTS, seed=seed)
    return TopologyClassifier(model, mean, std, params, info=dict(info or {}, model=model, n=len(y), **hyper))


def cross_validated(x: np.ndarray, y: np.ndarray, model: str = "trees", c: float = 0.1, seed: int = 0,
                    folds: int = 5) -> np.ndarray:
    """Probabilities (n, 3) of each row from a classifier fitted on the other folds (stratified,
    shuffled with ``seed``; fewer folds when a class has fewer rows): an honest sample to choose cuts on."""
    from sklearn.model_selection import StratifiedKFold

    x, y = np.asarray(x, np.float64), np.asarray(y)
    folds = min(folds, int(np.bincount(y, minlength=len(CVN_CLASSES)).min()))
    if folds < 2:
        raise ValueError("cross_validated: every class needs at least 2 rows, got "
                         f"{np.bincount(y, minlength=len(CVN_CLASSES)).tolist()}")
    out = np.zeros((len(y), len(CVN_CLASSES)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        out[test] = fit(x[train], y[train], model, c, seed).probabilities(x[test])
    return out


def smear_vertices(events, sigma: float, rng: np.random.Generator) -> list:
    """Copies of one interaction's plane views with the vertex moved as a reconstructed one would
    be: one drift-time (row) shift shared by the views (the three planes see the same drift) and
    an independent wire (column) shift per view, each Gaussian with ``sigma`` pixels."""
    from dataclasses import replace

    drift = rng.normal(0.0, sigma)
    out = []
    for ev in events:
        v = np.array(ev.vertices, np.float32, copy=True)
        v[0] += np.array([drift, rng.normal(0.0, sigma)], np.float32)
        out.append(replace(ev, vertices=v))
    return out


VIEW_SIZE = 512
"""Side of the views the classifier was fitted on (preset ``crop512``)."""


def crop_around_vertex(event, size: int = VIEW_SIZE):
    """The ``size`` x ``size`` window of a larger 2D view (a full MicroBooNE plane) centred on its
    vertex, moved inside the image where the vertex is near an edge; a view of that size is
    returned as it is. Coordinates and vertices are shifted to the window."""
    from ..event import Event

    if event.ndim != 2:
        raise ValueError(f"crop_around_vertex: expected a 2D view, got a {event.ndim}D event")
    if tuple(event.shape) == (size, size):
        return event
    if min(event.shape) < size:
        raise ValueError(f"crop_around_vertex: the view is {event.shape[0]} x {event.shape[1]}, smaller than the "
                         f"{size} x {size} the classifier reads")
    if event.vertices is None or len(event.vertices) == 0:
        raise ValueError("crop_around_vertex: the event has no vertex (Event.vertices); the window is centred on it")
    origin = np.array([int(np.clip(np.floor(v) - size // 2, 0, n - size))
                       for v, n in zip(event.vertices[0], event.shape)], np.int64)
    keep = np.all((event.coords >= origin) & (event.coords < origin + size), axis=1)
    sub = event.subset(keep)
    return Event(sub.coords - origin.astype(sub.coords.dtype), sub.features, (size, size), sub.labels, sub.clusters,
                 (event.vertices - origin).astype(np.float32), dict(event.meta))


def interaction_row(views: Sequence, predictor, cvn_model) -> np.ndarray:
    """:data:`FEATURE_NAMES` of one interaction's U, V, Y views (:data:`VIEW_SIZE` views with
    their vertex): segmented by ``predictor``, classified by ``cvn_model``."""
    from .cvn import cvn_probabilities, cvn_views

    preds = [p for p, _ in predictor.predict(list(views))]
    probs = cvn_probabilities(cvn_model, cvn_views(views)[None])[0]
    return interaction_features(views, preds, probs)


def feature_table(n: int, seed: int, predictor, cvn_model, preset: str = "crop512", progress: bool = True,
                  conditions=None, vertex_sigma: float = 0.0):
    """Feature rows (n, F) and classes (n,) of the first ``n`` neutrino interactions of the
    simulator stream ``(preset, seed)`` (the interactions :func:`~sparseseg.tasks.cvn.cvn_dataset`
    draws): each interaction's views are segmented by ``predictor`` and classified by ``cvn_model``.
    ``conditions`` (a :class:`~sparseseg.simulate.detector.Conditions`; None: nominal) changes the
    detector response only, never the interactions. ``vertex_sigma`` > 0 measures the features
    from a smeared vertex (:func:`smear_vertices`, drawn from ``(seed, index)``); the CVN's views
    stay centred on the true one."""
    from tqdm import tqdm

    from ..simulate import simulate_full
    from .cvn import TOPOLOGY_CLASS, neutrino_indices

    x = np.zeros((n, len(FEATURE_NAMES)))
    y = np.zeros(n, np.int64)
    for k, index in enumerate(tqdm(neutrino_indices(n, seed, preset=preset), desc="interactions",
                                   disable=not progress, unit="int")):
        events, truth = simulate_full(preset, seed, int(index), conditions=conditions)
        if vertex_sigma > 0:  # the features see the moved vertex; segmentation and CVN do not use it
            events = smear_vertices(events, vertex_sigma, np.random.default_rng([seed, int(index), 7]))
        x[k] = interaction_row(events, predictor, cvn_model)
        y[k] = TOPOLOGY_CLASS[truth.topology]
    return x, y


def interactions_in_file(event_file) -> list[tuple[int, list[int]]]:
    """(event id, [entry of U, V, Y]) of each interaction in an open 2D
    :class:`~sparseseg.io.EventFile`, in file order; a ValueError naming the first event id
    that lacks one of the three planes or holds one twice."""
    if event_file.D != 2:
        raise ValueError(f"{event_file.path}: the event classifier reads 2D wire-plane views, the file holds "
                         f"{event_file.D}D events")
    groups: dict[int, dict[str, list[int]]] = {}
    for entry, (eid, plane) in enumerate(zip(event_file.event_ids.tolist(), event_file.planes.tolist())):
        groups.setdefault(int(eid), {}).setdefault(plane, []).append(entry)
    out = []
    for eid, planes in groups.items():
        if sorted(planes) != sorted(PLANE_NAMES) or any(len(v) != 1 for v in planes.values()):
            have = ", ".join(f"{p} x{len(v)}" for p, v in sorted(planes.items()))
            raise ValueError(f"{event_file.path}: event id {eid} has planes {have or 'none'}; the classifier needs "
                             f"one view of each of U, V and Y (written by one interaction)")
        out.append((eid, [planes[p][0] for p in PLANE_NAMES]))
    return out


def classify_file(path, clf: "TopologyClassifier", predictor, cvn_model, progress: bool = True) -> list[dict]:
    """One row per interaction of the 2D event file ``path``: event id, the three class
    probabilities, the predicted class and whether P(nu_e CC) passes the classifier's stored
    nu_e CC cut. Views larger than :data:`VIEW_SIZE` are cropped around their vertex
    (:func:`crop_around_vertex`)."""
    from tqdm import tqdm

    from ..io import EventFile

    nue = CVN_CLASSES.index("nu_e CC")
    cut = clf.info.get("nue_cut")
    rows = []
    with EventFile(path) as f:
        for eid, entries in tqdm(interactions_in_file(f), desc="interactions", unit="int", disable=not progress):
            views = []
            for entry in entries:
                ev = f[entry]
                if ev.vertices is None or len(ev.vertices) == 0:
                    raise ValueError(f"{path}: event id {eid}, plane {ev.plane}, has no vertex; the classifier measures "
                                     "its features from the interaction vertex (write it with the event, "
                                     "Event.vertices[0])")
                views.append(crop_around_vertex(ev))
            p = clf.probabilities(interaction_row(views, predictor, cvn_model))[0]
            row = {"event_id": eid, **{f"p_{c.replace(' ', '_')}": float(q) for c, q in zip(CVN_CLASSES, p)},
                   "class": CVN_CLASSES[int(p.argmax())]}
            row["nue_selected"] = None if cut is None else bool(p[nue] >= cut)
            rows.append(row)
    return rows
