"""Metrics: confusion matrices, efficiency/purity/IoU, track/shower collapse, event-classifier
tables and binary (signal / not signal) scores. Every confusion matrix of the package is built here.

Conventions
-----------
* A confusion matrix ``cm`` has shape (C, C), rows = truth, columns = prediction.
* **efficiency** of class *k* = ``cm[k, k] / cm[k, :].sum()`` (recall, normalised to truth);
  **purity** = ``cm[k, k] / cm[:, k].sum()`` (precision, normalised to prediction);
  **IoU** = ``TP / (TP + FP + FN)``.
* Pixels whose truth is 255 (``IGNORE``) are excluded.
* Undefined ratios (0 / 0) are NaN in numpy arrays and ``None`` in the summary dicts, so
  ``json.dumps(summary)`` always yields valid JSON.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .classes import (
    CLASS_NAMES,
    IGNORE,
    NUM_CLASSES,
    SHOWER_CLASSES,
    TRACK_CLASSES,
    TRACK_SHOWER_NAMES,
)

__all__ = [
    "confusion_matrix",
    "classification_table",
    "format_classification_table",
    "binary_scores",
    "cut_for_purity",
    "ConfusionAccumulator",
    "ScoreCurves",
    "summarize",
    "format_table",
    "track_shower_matrix",
]


# ---------------------------------------------------------------------------- helpers
def _as_label_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif np.issubdtype(arr.dtype, np.floating) and arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integer class codes, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den with NaN where den == 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _clean(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python floats/ints/lists."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


# ---------------------------------------------------------------------------- confusion
def confusion_matrix(truth: Any, pred: Any, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of per-pixel class codes, built with ``np.bincount``.

    Parameters
    ----------
    truth : int array (N,)
        True class codes 0..C-1, or 255 (ignore) for pixels without truth; those are skipped.
    pred : int array (N,)
        Predicted class codes 0..C-1 for the same pixels, in the same order.
    num_classes : int
        C.

    Returns
    -------
    cm : int64 array (C, C)
        ``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    Raises
    ------
    ValueError
        On a length mismatch, predictions outside 0..C-1, or truth outside 0..C-1 and 255.
    """
    if int(num_classes) < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    c = int(num_classes)
    t = _as_label_array(truth, "confusion_matrix: truth")
    p = _as_label_array(pred, "confusion_matrix: pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"confusion_matrix: truth has {t.shape[0]} pixels but pred has {p.shape[0]}; "
            "they must describe the same pixels in the same order"
        )
    if p.size:
        bad = (p < 0) | (p >= c)
        if bad.any():
            vals = sorted(set(p[bad].tolist()))[:5]
            raise ValueError(
                f"confusion_matrix: pred values must be 0..{c - 1}, found {int(bad.sum())} "
                f"pixel(s) with values such as {vals}"
            )
    keep = t != IGNORE
    t = t[keep]
    p = p[keep]
    if t.size:
        bad = (t < 0) | (t >= c)
        if bad.any():
            vals = sorted(set(t[bad].tolist()))[:5]
            raise ValueError(
                f"confusion_matrix: truth values must be 0..{c - 1} or {IGNORE} (ignore), found "
                f"{int(bad.sum())} pixel(s) with values such as {vals}"
            )
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def track_shower_matrix(cm: np.ndarray) -> np.ndarray:
    """Collapse a 5-class confusion matrix to 2x2: track = {HIP, MIP}, shower = {shower, delta, Michel}."""
    cm = np.asarray(cm)
    if cm.shape != (NUM_CLASSES, NUM_CLASSES):
        raise ValueError(f"track_shower_matrix: expected a ({NUM_CLASSES}, {NUM_CLASSES}) matrix, got {cm.shape}")
    groups = (list(TRACK_CLASSES), list(SHOWER_CLASSES))
    out = np.zeros((2, 2), dtype=np.int64)
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            out[i, j] = cm[np.ix_(gi, gj)].sum()
    return out


# ---------------------------------------------------------------------------- summary
def summarize(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Every number an evaluation report needs, from one confusion matrix.

    Parameters
    ----------
    cm : int array (C, C)
        Rows = truth, columns = prediction.
    class_names : sequence of C str

    Returns
    -------
    dict
        ``pixels``, ``accuracy``, ``confusion`` (counts), ``efficiency`` / ``purity`` / ``iou``
        ({class: value}), ``mean_iou`` (over classes present in truth or prediction),
        ``efficiency_matrix`` (rows normalised), ``purity_matrix`` (columns normalised) and,
        for the 5 standard classes, ``track_shower_accuracy``, ``track_shower_confusion``,
        ``track_shower_efficiency`` and ``track_shower_purity`` ({"track", "shower"}).
        Undefined ratios are ``None``; the dict is JSON-serialisable as is.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"summarize: expected a square (C, C) confusion matrix, got shape {cm.shape}")
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"summarize: {len(class_names)} class names for a {cm.shape[0]}x{cm.shape[1]} matrix")
    if cm.size and (cm < 0).any():
        raise ValueError("summarize: confusion matrix holds negative counts")
    cm = cm.astype(np.int64)
    names = [str(n) for n in class_names]
    tp = np.diag(cm).astype(np.float64)
    rows = cm.sum(axis=1).astype(np.float64)
    cols = cm.sum(axis=0).astype(np.float64)
    total = float(cm.sum())

    eff = _ratio(tp, rows)
    pur = _ratio(tp, cols)
    iou = _ratio(tp, rows + cols - tp)
    present = (rows + cols) > 0
    mean_iou = float(np.mean(iou[present])) if present.any() else float("nan")

    out: dict[str, Any] = {
        "pixels": int(total),
        "accuracy": float(_ratio(tp.sum(), total)),
        "mean_iou": mean_iou,
        "confusion": cm.tolist(),
        "efficiency": dict(zip(names, eff)),
        "purity": dict(zip(names, pur)),
        "iou": dict(zip(names, iou)),
        "truth_pixels": dict(zip(names, rows.astype(np.int64).tolist())),
        "pred_pixels": dict(zip(names, cols.astype(np.int64).tolist())),
        "efficiency_matrix": _ratio(cm, rows[:, None]),
        "purity_matrix": _ratio(cm, cols[None, :]),
    }
    if cm.shape == (NUM_CLASSES, NUM_CLASSES):
        ts = track_shower_matrix(cm)
        ts_tp = np.diag(ts).astype(np.float64)
        out["track_shower_accuracy"] = float(_ratio(ts_tp.sum(), float(ts.sum())))
        out["track_shower_confusion"] = ts.tolist()
        out["track_shower_efficiency"] = dict(zip(TRACK_SHOWER_NAMES, _ratio(ts_tp, ts.sum(axis=1))))
        out["track_shower_purity"] = dict(zip(TRACK_SHOWER_NAMES, _ratio(ts_tp, ts.sum(axis=0))))
    return _clean(out)


# ---------------------------------------------------------------------------- classifiers
def classification_table(y_true, y_pred, num_classes: int, class_names: Sequence[str]) -> dict:
    """Confusion matrix, efficiency and purity of an event classifier.

    Parameters
    ----------
    y_true, y_pred : int arrays (N,)
        True and predicted class indices in 0..num_classes-1.

    Returns
    -------
    dict with ``confusion`` (num_classes, num_classes) counts, rows = truth, columns =
    prediction; ``efficiency`` per class (diagonal / row sum: the fraction of true class-c
    events selected as c); ``purity`` per class (diagonal / column sum: the fraction of events
    selected as c that are c); ``accuracy``; ``classes``. Undefined ratios are NaN.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"classification_table: y_true {t.shape} and y_pred {p.shape} differ in length")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"classification_table: {name} values must be in 0..{num_classes - 1}")
    cm = confusion_matrix(t, p, num_classes)
    diag = np.diag(cm)
    return {"classes": list(class_names)[:num_classes], "confusion": cm.tolist(),
            "efficiency": _ratio(diag, cm.sum(axis=1)).tolist(), "purity": _ratio(diag, cm.sum(axis=0)).tolist(),
            "accuracy": float(_ratio(diag.sum(), cm.sum()))}


def format_classification_table(table: dict) -> str:
    """Text table: confusion matrix (rows = truth) with efficiency and purity per class."""
    names = table["classes"]
    width = max(10, max(len(n) for n in names) + 2)
    lines = ["truth \\ pred".ljust(width) + "".join(n.rjust(width) for n in names) + "efficiency".rjust(12)]
    for i, n in enumerate(names):
        lines.append(n.ljust(width) + "".join(str(c).rjust(width) for c in table["confusion"][i])
                     + f"{100 * table['efficiency'][i]:11.1f}%")
    lines.append("purity".ljust(width) + "".join(f"{100 * v:{width - 1}.1f}%" for v in table["purity"]))
    lines.append(f"accuracy {100 * table['accuracy']:.1f}%")
    return "\n".join(lines)


def binary_scores(truth: Any, selected: Any) -> dict[str, float]:
    """Accuracy, and the efficiency, purity and IoU of the positive class, of a yes/no
    selection (boolean arrays of one shape). A ratio with a zero denominator is 0.0 (as a
    training log needs a number)."""
    cm = confusion_matrix(np.asarray(truth, bool).ravel(), np.asarray(selected, bool).ravel(), 2)
    tp, fn, fp = cm[1, 1], cm[1, 0], cm[0, 1]

    def r(a, b):
        return float(a / b) if b else 0.0

    return {"accuracy": r(np.trace(cm), cm.sum()), "efficiency": r(tp, tp + fn), "purity": r(tp, tp + fp),
            "iou": r(tp, tp + fp + fn), "counts": cm.tolist()}


def cut_for_purity(score: Any, signal: Any, min_purity: float) -> float | None:
    """The lowest cut on ``score`` whose selection ``score >= cut`` of the events has purity
    (fraction of ``signal`` among the selected) at least ``min_purity``: the most efficient
    such selection. None when no cut reaches that purity. Choose the cut on one sample and
    measure it on another (:func:`binary_scores`), or the efficiency is biased upward."""
    score = np.asarray(score, float).ravel()
    signal = np.asarray(signal, bool).ravel()
    if score.shape != signal.shape:
        raise ValueError(f"cut_for_purity: {score.size} scores for {signal.size} truth flags")
    order = np.argsort(-score, kind="stable")
    s, t = score[order], signal[order]
    purity = np.cumsum(t) / np.arange(1, len(t) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # a cut takes every event of a tied score
    ok = np.flatnonzero(last & (purity >= min_purity))
    return float(s[ok[-1]]) if len(ok) else None


def _class_names(num_classes: int, names: Sequence[str] | None) -> Sequence[str]:
    """``names``, or the segmentation classes for 5 classes and "0", "1", ... otherwise."""
    if names is not None:
        return names
    return CLASS_NAMES if num_classes == NUM_CLASSES else tuple(str(i) for i in range(num_classes))


# ---------------------------------------------------------------------------- accumulator
class ConfusionAccumulator:
    """Accumulate confusion matrices over many events, overall and per plane.

    Examples
    --------
    >>> acc = ConfusionAccumulator()
    >>> acc.add(event.labels, pred, plane=event.plane)      # doctest: +SKIP
    >>> report = acc.summary()                               # doctest: +SKIP
    """

    def __init__(self, num_classes: int = NUM_CLASSES, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = int(num_classes)
        class_names = _class_names(self.num_classes, class_names)
        if len(class_names) != self.num_classes:
            raise ValueError(f"ConfusionAccumulator: {len(class_names)} class names for {self.num_classes} classes")
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.per_plane: dict[str, np.ndarray] = {}
        self.events = 0

    def add(self, truth: Any, pred: Any, plane: str | None = None) -> np.ndarray:
        """Add one image's pixels; returns that image's own confusion matrix.

        ``plane`` ("U", "V", "Y", "3D", ...) also books the pixels under that plane.
        """
        cm = confusion_matrix(truth, pred, self.num_classes)
        self.matrix += cm
        if plane is not None:
            key = str(plane)
            if key not in self.per_plane:
                self.per_plane[key] = np.zeros_like(self.matrix)
            self.per_plane[key] += cm
        self.events += 1
        return cm

    def add_event(self, event: Any, pred: Any) -> np.ndarray:
        """Add an :class:`~sparseseg.event.Event` (its labels and plane) with its predictions.

        ``pred`` may be codes (N,) or scores/logits (N, C) (argmax is taken).
        """
        if event.labels is None:
            raise ValueError(f"ConfusionAccumulator.add_event: {event!r} has no truth labels")
        p = np.asarray(pred)
        if p.ndim == 2:
            if p.shape[1] != self.num_classes:
                raise ValueError(f"ConfusionAccumulator.add_event: scores have {p.shape[1]} columns, expected {self.num_classes}")
            p = p.argmax(axis=1)
        return self.add(event.labels, p, plane=event.plane)

    def merge(self, other: "ConfusionAccumulator") -> "ConfusionAccumulator":
        """Add another accumulator's counts into this one (e.g. from DDP ranks)."""
        if other.num_classes != self.num_classes:
            raise ValueError("ConfusionAccumulator.merge: class counts differ")
        self.matrix += other.matrix
        for k, m in other.per_plane.items():
            self.per_plane[k] = self.per_plane.get(k, np.zeros_like(self.matrix)) + m
        self.events += other.events
        return self

    def summary(self) -> dict[str, Any]:
        """``summarize(overall)`` plus ``per_plane: {plane: summarize(...)}`` and ``events``."""
        out = summarize(self.matrix, self.class_names)
        out["events"] = int(self.events)
        out["per_plane"] = {k: summarize(m, self.class_names) for k, m in sorted(self.per_plane.items(), key=lambda kv: _plane_order(kv[0]))}
        return out


class ScoreCurves:
    """Efficiency at a purity floor for each class, from per-pixel class scores: the
    selection "P(c) >= cut" (one class against the rest, whatever the argmax) with the lowest
    cut whose purity is at least ``min_purity``, as :func:`cut_for_purity` chooses it.

    Scores are counted at float16 resolution (the precision prediction files store them in):
    each non-negative float16 value is one bin of an exact histogram (its 16-bit pattern, which
    orders non-negative floats), so any number of pixels fits in 5 x 2 x 65,536 counters and the
    result equals :func:`cut_for_purity` on the float16 scores.
    """

    BINS = 1 << 16

    def __init__(self, num_classes: int = NUM_CLASSES, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = int(num_classes)
        self.class_names = tuple(_class_names(self.num_classes, class_names))
        self.signal = np.zeros((self.num_classes, self.BINS), np.int64)
        self.background = np.zeros((self.num_classes, self.BINS), np.int64)

    def add(self, truth: Any, scores: Any) -> None:
        """One image: truth codes (N,) (IGNORE pixels are skipped) and scores (N, C) in [0, 1]."""
        labels = _as_label_array(truth, "truth")
        sc = np.asarray(scores)
        if sc.ndim != 2 or sc.shape != (len(labels), self.num_classes):
            raise ValueError(f"ScoreCurves.add: scores of shape {sc.shape} for {len(labels)} labels "
                             f"and {self.num_classes} classes")
        keep = labels != IGNORE
        labels, sc = labels[keep], np.ascontiguousarray(sc[keep], dtype=np.float16)
        if not np.isfinite(sc).all() or (sc < 0).any():
            raise ValueError("ScoreCurves.add: scores must be finite and >= 0")
        bits = np.abs(sc).view(np.uint16)  # abs: -0.0 counts as 0.0
        for c in range(self.num_classes):
            is_c = labels == c
            self.signal[c] += np.bincount(bits[is_c, c], minlength=self.BINS)
            self.background[c] += np.bincount(bits[~is_c, c], minlength=self.BINS)

    def at_purity(self, c: int, min_purity: float = 0.8) -> dict[str, float | None]:
        """{cut, efficiency, purity} of the most efficient selection of class ``c`` with purity
        >= ``min_purity``; cut None (efficiency 0) when no cut reaches it or the class is absent."""
        sig = np.cumsum(self.signal[c][::-1])  # pixels at or above each value, highest first
        sel = sig + np.cumsum(self.background[c][::-1])
        total = sig[-1]
        occupied = (self.signal[c] + self.background[c])[::-1] > 0
        purity = sig / np.maximum(sel, 1)  # 0 where nothing is selected yet
        ok = np.flatnonzero(occupied & (purity >= min_purity))
        if total == 0 or len(ok) == 0:
            return {"cut": None, "efficiency": 0.0, "purity": None}
        k = ok[-1]
        cut = float(np.array([self.BINS - 1 - k], np.uint16).view(np.float16)[0])
        return {"cut": cut, "efficiency": float(sig[k] / total), "purity": float(purity[k])}

    def summary(self, min_purity: float = 0.8) -> dict[str, dict[str, float | None]]:
        """:meth:`at_purity` for every class, by class name."""
        return {name: self.at_purity(c, min_purity) for c, name in enumerate(self.class_names)}


def _plane_order(name: str) -> tuple[int, str]:
    order = {"U": 0, "V": 1, "Y": 2, "2D": 3, "3D": 4}
    return (order.get(name, 5), name)


# ---------------------------------------------------------------------------- text table
def _fmt(x: Any, width: int = 8, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-".rjust(width)
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x)).rjust(width)
    return f"{float(x):.{digits}f}".rjust(width)


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table of a :func:`summarize` / ``ConfusionAccumulator.summary`` dict.

    Header lines give pixels, accuracy, track/shower accuracy and mean IoU; then one row per
    class with efficiency, purity, IoU and truth pixel count; when ``per_plane`` is present,
    extra columns give each plane's efficiency for the class and a final row each plane's
    accuracy.
    """
    names = list(summary["efficiency"].keys())
    planes: dict[str, Any] = summary.get("per_plane") or {}
    lines = []
    head = [
        ("pixels", _fmt(summary.get("pixels"), 10)),
        ("accuracy", _fmt(summary.get("accuracy"), 10)),
    ]
    if "track_shower_accuracy" in summary:
        head.append(("track/shower accuracy", _fmt(summary.get("track_shower_accuracy"), 10)))
    head.append(("mean IoU", _fmt(summary.get("mean_iou"), 10)))
    for k, v in head:
        lines.append(f"{k:<22}{v}")
    lines.append("")

    name_w = max(8, max((len(n) for n in names), default=0) + 1)
    cols = f"{'class':<{name_w}}{'eff':>8}{'purity':>8}{'IoU':>8}{'truth px':>11}"
    if planes:
        cols += "  |" + "".join(f"{('eff ' + p):>9}" for p in planes)
    lines.append(cols)
    lines.append("-" * len(cols))
    truth_px = summary.get("truth_pixels") or {}
    for n in names:
        row = (
            f"{n:<{name_w}}{_fmt(summary['efficiency'][n])}{_fmt(summary['purity'][n])}"
            f"{_fmt(summary['iou'][n])}{_fmt(truth_px.get(n), 11)}"
        )
        if planes:
            row += "  |" + "".join(_fmt(planes[p]["efficiency"].get(n), 9) for p in planes)
        lines.append(row)
    if "track_shower_efficiency" in summary:
        lines.append("-" * len(cols))
        ts_counts = summary.get("track_shower_confusion")
        for i, g in enumerate(TRACK_SHOWER_NAMES):
            px = sum(ts_counts[i]) if ts_counts else None
            row = (
                f"{g:<{name_w}}{_fmt(summary['track_shower_efficiency'][g])}"
                f"{_fmt(summary['track_shower_purity'][g])}{'':>8}{_fmt(px, 11)}"
            )
            if planes:
                row += "  |" + "".join(_fmt((planes[p].get("track_shower_efficiency") or {}).get(g), 9) for p in planes)
            lines.append(row)
    if planes:
        lines.append("-" * len(cols))
        lead = name_w + 8 + 8 + 8 + 11

        def plane_row(label: str, key: str, width: int = 9) -> str:
            return f"{label:<{lead}}  |" + "".join(_fmt(planes[p].get(key), width) for p in planes)

        lines.append(plane_row("accuracy", "accuracy"))
        if any("track_shower_accuracy" in planes[p] for p in planes):
            lines.append(plane_row("track/shower accuracy", "track_shower_accuracy"))
        lines.append(plane_row("mean IoU", "mean_iou"))
        lines.append(plane_row("pixels", "pixels"))
    return "\n".join(lines)
