"""Event displays, confusion-matrix heatmaps and training curves (PNG, matplotlib Agg).

matplotlib is imported inside the plotting functions, so ``import sparseseg`` stays light.

Full MicroBooNE planes (1008 x 3456) are far larger than a screen panel. Event displays pool
each image down to the panel's pixel size *before* drawing, so that nothing is lost to the
renderer's resampling: ADC with max-pooling (:func:`max_pool2d`), labels with
priority-preserving pooling that keeps the lowest class code in a block
(:func:`label_pool2d`), so thin tracks and small Michels stay visible.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .classes import CLASS_COLORS, CLASS_NAMES, IGNORE, NUM_CLASSES, TRACK_SHOWER_NAMES
from .event import Event

__all__ = [
    "event_display",
    "display_title",
    "interaction_type",
    "confusion_heatmap",
    "score_histograms",
    "loss_curve",
    "max_pool2d",
    "label_pool2d",
    "pool_factor",
]

DPI = 100
CONFUSION_SIZE_PX = (1100, 500)
"""(width, height) in pixels of :func:`confusion_heatmap` output."""
LOSS_SIZE_PX = (1100, 420)
"""(width, height) in pixels of :func:`loss_curve` output."""

_IGNORE_COLOR = "#6e6e6e"
_BG = "#0e1014"  # figure background of event displays
_PANEL_BG = "#000000"  # empty pixels
_FG = "#d9dce1"  # text on the dark background
_CODE_IGNORE = NUM_CLASSES  # display code of a kept pixel without truth
_CODE_EMPTY = NUM_CLASSES + 1  # display code of a pixel not in the list


def _new_figure(size_in: tuple[float, float]):
    """A Figure on an Agg canvas, outside pyplot's global state (no display, no leaks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------- pooling
def _pad_to_multiple(a: np.ndarray, factor: int, fill: Any) -> np.ndarray:
    h, w = a.shape
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="constant", constant_values=fill)
    return a


def _check_pool_args(a: np.ndarray, factor: int, who: str) -> int:
    if a.ndim != 2:
        raise ValueError(f"{who}: expected a 2D array, got shape {a.shape}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"{who}: factor must be a positive integer, got {factor}")
    return int(factor)


def max_pool2d(image: np.ndarray, factor: int, fill: float = 0.0) -> np.ndarray:
    """Max-pool a 2D image in ``factor x factor`` blocks.

    Parameters
    ----------
    image : array (H, W)
    factor : int
        Block size; edges are padded with ``fill`` up to a multiple of it.

    Returns
    -------
    array (ceil(H / factor), ceil(W / factor)), same dtype as ``image``.
    """
    image = np.asarray(image)
    f = _check_pool_args(image, factor, "max_pool2d")
    if f == 1:
        return image.copy()
    a = _pad_to_multiple(image, f, fill)
    h, w = a.shape
    return a.reshape(h // f, f, w // f, f).max(axis=(1, 3))


def label_pool2d(labels: np.ndarray, factor: int, fill: int = IGNORE) -> np.ndarray:
    """Pool a 2D label image in ``factor x factor`` blocks, keeping the **lowest** code.

    Lower codes have priority (HIP > MIP > shower > delta > Michel; 255 = ignore loses to
    any class), the same rule the truth uses for overlapping deposits, so a one-pixel-wide
    track or a small Michel survives the downsampling.

    Parameters
    ----------
    labels : int array (H, W)
    factor : int
        Block size; edges are padded with ``fill`` (which should be the highest code in use).

    Returns
    -------
    array (ceil(H / factor), ceil(W / factor)), same dtype as ``labels``.
    """
    labels = np.asarray(labels)
    f = _check_pool_args(labels, factor, "label_pool2d")
    if f == 1:
        return labels.copy()
    a = _pad_to_multiple(labels, f, fill)
    h, w = a.shape
    return a.reshape(h // f, f, w // f, f).min(axis=(1, 3))


def pool_factor(shape: Sequence[int], max_width: int, max_height: int | None = None) -> int:
    """Smallest integer block size that brings an (H, W) image within max_width (x max_height)."""
    h, w = int(shape[0]), int(shape[1])
    f = max(1, math.ceil(w / max(1, max_width)))
    if max_height is not None:
        f = max(f, math.ceil(h / max(1, max_height)))
    return f


# ---------------------------------------------------------------------------- titles
INTERACTION_NAMES = {
    "ccmu": "νμ CC",
    "cce": "νe CC",
    "ncpi0": "NC π0",
    "bomb": "particle bomb",
}
"""Readable names of the simulator's topologies (meta ``topology``)."""

_INTERACTION_KEYS = ("interaction_type", "interaction", "topology")


def interaction_type(meta: dict[str, Any]) -> str | None:
    """The interaction type of an event from its metadata, readable; None when it has none.

    Looks for ``interaction_type``, ``interaction`` or the simulator's ``topology`` (e.g.
    ``ccmu`` -> "νμ CC"; several interactions of one volume, ``bomb+ccmu``, are joined with
    " + "). Unknown names are returned as they are.
    """
    for key in _INTERACTION_KEYS:
        value = meta.get(key)
        if value not in (None, ""):
            return " + ".join(INTERACTION_NAMES.get(part, part) for part in str(value).split("+"))
    return None


def display_title(meta: dict[str, Any], source: str | None = None) -> str:
    """Title of an event display: ``source`` (a file name), event id, interaction type, preset.

    Parts that are unknown are left out, e.g. "events.h5  ·  event 3  ·  νμ CC  ·  uboone".
    """
    parts = [source] if source else []
    if meta.get("event_id") is not None:
        parts.append(f"event {meta['event_id']}")
    kind = interaction_type(meta)
    if kind:
        parts.append(kind)
    if meta.get("preset"):
        parts.append(str(meta["preset"]))
    return "  ·  ".join(parts)


# ---------------------------------------------------------------------------- views
@dataclass
class _View:
    """One row of an event display: a 2D image (rows = vertical axis) and what goes on it."""

    name: str
    xlabel: str
    ylabel: str
    adc: np.ndarray  # (H, W) float32, 0 = empty
    truth: np.ndarray | None  # (H, W) display codes, or None
    pred: np.ndarray | None  # (H, W) display codes, or None
    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (V, 2) (x, y)
    info: str = ""
    accuracy: float | None = None


def _project(coords2: np.ndarray, values: np.ndarray, shape2: tuple[int, int], mode: str, fill: Any) -> np.ndarray:
    """Scatter values at (row, col) into a dense (H, W) array, combining duplicates by max/min."""
    out = np.full(shape2[0] * shape2[1], fill, dtype=values.dtype)
    if len(values):
        flat = coords2[:, 0].astype(np.int64) * shape2[1] + coords2[:, 1].astype(np.int64)
        (np.maximum if mode == "max" else np.minimum).at(out, flat, values)
    return out.reshape(shape2)


def _display_codes(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes).astype(np.int16)
    c[c == IGNORE] = _CODE_IGNORE
    return c


def checked_planes(planes, who: str) -> list[Event]:
    """``planes`` (one Event or a sequence of them) as a non-empty list of Events; ValueError
    naming ``who`` otherwise."""
    if isinstance(planes, Event):
        planes = [planes]
    planes = list(planes)
    if not planes:
        raise ValueError(f"{who}: planes is empty; expected at least one Event")
    for i, ev in enumerate(planes):
        if not isinstance(ev, Event):
            raise ValueError(f"{who}: planes[{i}] is a {type(ev).__name__}, expected an Event")
    return planes


def _check_pred(pred: Any, event: Event, i: int) -> np.ndarray:
    p = np.asarray(pred)
    if p.ndim == 2 and p.shape[0] == len(event) and p.shape[1] == NUM_CLASSES:
        p = p.argmax(axis=1)
    if p.shape != (len(event),):
        raise ValueError(
            f"event_display: preds[{i}] has shape {p.shape}; expected ({len(event)},) class codes "
            f"(or ({len(event)}, {NUM_CLASSES}) scores) for {event!r}"
        )
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"event_display: preds[{i}] must hold integer class codes, got dtype {p.dtype}")
    if p.size and ((p < 0) | (p >= NUM_CLASSES)).any():
        raise ValueError(f"event_display: preds[{i}] values must be 0..{NUM_CLASSES - 1}")
    return p


def _accuracy(labels: np.ndarray | None, pred: np.ndarray | None) -> float | None:
    if labels is None or pred is None:
        return None
    keep = labels != IGNORE
    if not keep.any():
        return None
    return float((labels[keep] == pred[keep]).mean())


def _views_2d(planes: Sequence[Event], preds: Sequence[Any] | None) -> list[_View]:
    views = []
    for i, ev in enumerate(planes):
        shape2 = (ev.shape[0], ev.shape[1])
        rc = ev.coords
        adc = _project(rc, ev.features[:, 0].astype(np.float32), shape2, "max", np.float32(0))
        truth = None
        if ev.labels is not None:
            truth = _project(rc, _display_codes(ev.labels), shape2, "min", np.int16(_CODE_EMPTY))
        pred = None
        p = None
        if preds is not None and preds[i] is not None:
            p = _check_pred(preds[i], ev, i)
            pred = _project(rc, p.astype(np.int16), shape2, "min", np.int16(_CODE_EMPTY))
        vtx = np.zeros((0, 2))
        if ev.vertices is not None and len(ev.vertices):
            vtx = ev.vertices[:, ::-1].astype(np.float64)  # (row, col) -> (x = col, y = row)
        views.append(
            _View(
                name=ev.plane,
                xlabel="wire",
                ylabel="time tick",
                adc=adc,
                truth=truth,
                pred=pred,
                vertices=vtx,
                info=f"{len(ev):,} px  ({100 * ev.occupancy:.2f} %)",
                accuracy=_accuracy(ev.labels, p),
            )
        )
    return views


def _views_3d(ev: Event, pred_in: Any | None) -> list[_View]:
    p = None if pred_in is None else _check_pred(pred_in, ev, 0)
    axes_names = "xyz"
    views = []
    for a, b in ((0, 1), (0, 2), (1, 2)):  # horizontal a, vertical b
        shape2 = (ev.shape[b], ev.shape[a])
        rc = ev.coords[:, [b, a]]
        adc = _project(rc, ev.features[:, 0].astype(np.float32), shape2, "max", np.float32(0))
        truth = None
        if ev.labels is not None:
            truth = _project(rc, _display_codes(ev.labels), shape2, "min", np.int16(_CODE_EMPTY))
        pred = None if p is None else _project(rc, p.astype(np.int16), shape2, "min", np.int16(_CODE_EMPTY))
        vtx = np.zeros((0, 2))
        if ev.vertices is not None and len(ev.vertices):
            vtx = ev.vertices[:, [a, b]].astype(np.float64)
        views.append(
            _View(
                name=axes_names[a] + axes_names[b],
                xlabel=axes_names[a],
                ylabel=axes_names[b],
                adc=adc,
                truth=truth,
                pred=pred,
                vertices=vtx,
                info=f"{len(ev):,} voxels" if (a, b) == (0, 1) else "",
                accuracy=_accuracy(ev.labels, p) if (a, b) == (0, 1) else None,
            )
        )
    return views


def _adc_norm(views: Sequence[_View]):
    from matplotlib.colors import LogNorm, Normalize

    vals = np.concatenate([v.adc[v.adc > 0].ravel() for v in views]) if views else np.zeros(0)
    if vals.size == 0:
        return Normalize(vmin=0.0, vmax=1.0, clip=True), False
    lo = float(np.percentile(vals, 1.0))
    hi = float(np.percentile(vals, 99.5))
    if hi <= lo:
        hi = lo * 1.01 + 1e-6
    if lo > 0 and hi / lo >= 8:
        return LogNorm(vmin=lo, vmax=hi, clip=True), True
    return Normalize(vmin=min(lo, 0.0) if lo <= 0 else lo, vmax=hi, clip=True), False


def _adc_cmap():
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base = colormaps["inferno"]
    # drop the near-black low end, so the faintest kept pixel still shows on black
    return ListedColormap(base(np.linspace(0.22, 1.0, 256)), name="inferno_visible")


def _label_cmap():
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(list(CLASS_COLORS) + [_IGNORE_COLOR], name="sparseseg_classes")
    norm = BoundaryNorm(np.arange(-0.5, NUM_CLASSES + 1.5, 1.0), cmap.N)
    return cmap, norm


# ---------------------------------------------------------------------------- event display
def event_display(
    planes: Sequence[Event] | Event,
    preds: Sequence[np.ndarray | None] | np.ndarray | None,
    out: str,
    title: str | None = None,
    max_width_px: int = 1200,
) -> str:
    """Draw an event: one row per wire plane, columns ADC | truth | prediction.

    Parameters
    ----------
    planes : list of Event
        The 2D images of one interaction (e.g. U, V, Y), or a single 2D image, or one 3D
        event; a 3D event is drawn as three projections (xy, xz, yz): ADC as the maximum and
        labels as the highest-priority (lowest) code along the projected axis.
    preds : list of int arrays (N_i,), or None
        Predicted class codes per plane, in each event's coordinate order; an (N_i, 5) score
        array is reduced with argmax. ``None`` (or a ``None`` entry) leaves out the prediction.
    out : str
        PNG path; parent folders are created.
    title : str, optional
        Figure title; defaults to :func:`display_title` of the first event's ``meta`` (event
        id, interaction type, preset) when that is not empty.
    max_width_px : int
        Width of the PNG in pixels. Images are pooled (max for ADC, lowest code for labels)
        with one integer factor for all rows, so each panel shows at most one pooled pixel per
        screen pixel and all planes share one scale.

    Returns
    -------
    str
        ``out``.
    """
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(planes, Event) and preds is not None and not isinstance(preds, (list, tuple)):
        preds = [preds]
    planes = checked_planes(planes, "event_display")
    if preds is not None:
        preds = list(preds)
        if len(preds) != len(planes):
            raise ValueError(f"event_display: {len(preds)} prediction arrays for {len(planes)} planes")
    dims = {ev.ndim for ev in planes}
    if dims == {3}:
        if len(planes) != 1:
            raise ValueError(f"event_display: draws one 3D event at a time, got {len(planes)}")
        views = _views_3d(planes[0], None if preds is None else preds[0])
    elif dims == {2}:
        views = _views_2d(planes, preds)
    else:
        raise ValueError("event_display: planes mix 2D and 3D events")
    if int(max_width_px) < 300:
        raise ValueError(f"event_display: max_width_px must be >= 300, got {max_width_px}")

    has_truth = any(v.truth is not None for v in views)
    has_pred = any(v.pred is not None for v in views)
    columns = ["ADC"] + (["truth"] if has_truth or not has_pred else []) + (["prediction"] if has_pred else [])
    ncols = len(columns)
    is_3d = dims == {3}
    value_name = "value (MeV)" if is_3d else "ADC"  # 3D voxel values are energies (PILArNet-style)

    # ---- layout in pixels (DPI = 100, so inches = px / 100)
    W = int(max_width_px)
    left, right, gap = 78, 14, 18
    if title is None:
        title = display_title(planes[0].meta) or None
    top = 30 + (30 if title else 0)
    row_gap, bottom = 34, 104
    panel_w = (W - left - right - (ncols - 1) * gap) // ncols
    max_h = max(v.adc.shape[0] for v in views)
    max_w = max(v.adc.shape[1] for v in views)
    f = pool_factor((max_h, max_w), panel_w, int(1.25 * panel_w))
    sizes = [(math.ceil(v.adc.shape[0] / f), math.ceil(v.adc.shape[1] / f)) for v in views]
    row_h = [s[0] for s in sizes]
    H = top + sum(row_h) + row_gap * (len(views) - 1) + bottom
    px = 1.0 / DPI

    norm, is_log = _adc_norm(views)
    adc_cmap = _adc_cmap().with_extremes(bad=_PANEL_BG)
    lab_cmap, lab_norm = _label_cmap()
    lab_cmap = lab_cmap.with_extremes(bad=_PANEL_BG)

    rc = {
        "figure.facecolor": _BG,
        "savefig.facecolor": _BG,
        "axes.facecolor": _PANEL_BG,
        "axes.edgecolor": "#5a5f69",
        "axes.labelcolor": _FG,
        "text.color": _FG,
        "xtick.color": "#a9aeb7",
        "ytick.color": "#a9aeb7",
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "axes.labelsize": 8,
        "font.size": 9,
    }
    with matplotlib.rc_context(rc):
        fig = _new_figure((W * px, H * px))
        try:
            if title:
                fig.text(0.5, 1 - 16 * px / (H * px), title, ha="center", va="center", fontsize=12, weight="bold")
            y_top = H - top  # pixel y of the current row's top edge (from the bottom)
            adc_im = None
            for r, (v, (ph, pw)) in enumerate(zip(views, sizes)):
                y0 = y_top - ph
                ext = (0, pw * f, 0, ph * f)
                for c, col in enumerate(columns):
                    x0 = left + c * (panel_w + gap)
                    ax = fig.add_axes((x0 / W, y0 / H, pw / W, ph / H))
                    ax.set_xlim(0, pw * f)
                    ax.set_ylim(0, ph * f)
                    ax.tick_params(length=2.5, pad=1.5)
                    if col == "ADC":
                        a = max_pool2d(v.adc, f)
                        adc_im = ax.imshow(
                            np.ma.masked_less_equal(a, 0), cmap=adc_cmap, norm=norm, origin="lower",
                            extent=ext, interpolation="nearest", aspect="auto",
                        )
                        if v.info:
                            ax.text(0.995, 0.985, v.info, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#c9ccd2")
                    else:
                        codes = v.truth if col == "truth" else v.pred
                        if codes is None:
                            ax.text(0.5, 0.5, f"no {col}", transform=ax.transAxes, ha="center", va="center", color="#777")
                        else:
                            lp = label_pool2d(codes, f, fill=_CODE_EMPTY)
                            ax.imshow(
                                np.ma.masked_equal(lp, _CODE_EMPTY), cmap=lab_cmap, norm=lab_norm, origin="lower",
                                extent=ext, interpolation="nearest", aspect="auto",
                            )
                        if col == "truth" and len(v.vertices):
                            ax.scatter(v.vertices[:, 0], v.vertices[:, 1], s=36, facecolors="none", edgecolors="white", linewidths=0.9, zorder=3)
                        if col == "prediction" and v.accuracy is not None:
                            ax.text(0.995, 0.985, f"accuracy {v.accuracy:.3f}", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#c9ccd2")
                    if r == 0:
                        ax.set_title(value_name if col == "ADC" else col, fontsize=10, pad=4, color=_FG)
                    if c == 0:
                        ax.set_ylabel(v.ylabel, labelpad=2)
                    else:
                        ax.tick_params(labelleft=False)
                    if r == len(views) - 1 or v.xlabel != views[r + 1].xlabel:
                        ax.set_xlabel(v.xlabel, labelpad=1)
                # plane / projection name at the far left of the row
                fig.text(10 / W, (y0 + ph / 2) / H, v.name, rotation=90, ha="center", va="center", fontsize=13, weight="bold")
                y_top = y0 - row_gap

            # ---- ADC (3D: value) colour bar under the ADC column
            cb_w = min(panel_w, 360)
            cax = fig.add_axes((left / W, 52 / H, cb_w / W, 10 / H))
            cb = fig.colorbar(adc_im, cax=cax, orientation="horizontal")
            cb.outline.set_edgecolor("#5a5f69")
            cb.ax.tick_params(labelsize=7, length=2)
            if is_log:
                from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

                cb.ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
                cb.ax.xaxis.set_major_formatter(ScalarFormatter())
                cb.ax.xaxis.set_minor_formatter(NullFormatter())
            if is_3d:
                how = "max along the projection" + (" and in block" if f > 1 else "")
                cb.set_label(f"value (MeV; {how}" + (", log scale)" if is_log else ")"), fontsize=8, labelpad=2)
            else:
                cb.set_label("ADC (max in block" + (", log scale)" if is_log else ")"), fontsize=8, labelpad=2)

            # ---- class legend under the label columns
            if ncols > 1:
                handles = [Patch(facecolor=col, edgecolor="none", label=n) for n, col in zip(CLASS_NAMES, CLASS_COLORS)]
                handles.append(Patch(facecolor=_IGNORE_COLOR, edgecolor="none", label="no truth (255)"))
                if any(len(v.vertices) for v in views):
                    handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor="white", label="vertex"))
                span = (ncols - 1) * panel_w + (ncols - 2) * gap
                x_mid = left + panel_w + gap + span / 2
                ncol = max(1, min(len(handles), int(span // 88)))
                fig.legend(
                    handles=handles, loc="center", bbox_to_anchor=(x_mid / W, 52 / H), ncol=ncol, frameon=False,
                    fontsize=8, handlelength=1.2, handleheight=1.0, columnspacing=1.1, labelcolor=_FG,
                )
            if f > 1:
                fig.text(1 - 6 / W, 6 / H, f"display pooled {f}x{f}: ADC max, labels by priority (HIP > MIP > shower > delta > Michel)",
                         ha="right", va="bottom", fontsize=6.5, color="#8a8f99")
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            fig.savefig(out, dpi=DPI)
        finally:
            fig.clear()
    return out


# ---------------------------------------------------------------------------- confusion
def _si(n: float) -> str:
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{int(n)}"


def confusion_heatmap(
    cm: np.ndarray,
    out: str,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str | None = None,
    unit: str = "pixels",
) -> str:
    """Two heatmaps of a confusion matrix: normalised to truth (efficiency) and to prediction (purity).

    Parameters
    ----------
    cm : int array (C, C)
        Rows = truth, columns = prediction. A 2x2 matrix with the default names is labelled
        track/shower.
    out : str
        PNG path (``CONFUSION_SIZE_PX`` pixels).
    class_names : sequence of C str
    title : str, optional
    unit : str
        What is counted (``pixels``; ``interactions`` for an event classifier).

    Returns
    -------
    str
        ``out``.
    """
    import matplotlib

    short = " px" if unit == "pixels" else ""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion_heatmap: expected a square (C, C) matrix, got shape {cm.shape}")
    if cm.shape == (2, 2) and tuple(class_names) == tuple(CLASS_NAMES):
        class_names = TRACK_SHOWER_NAMES
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"confusion_heatmap: {len(class_names)} class names for a {cm.shape[0]}x{cm.shape[0]} matrix")
    cm = cm.astype(np.float64)
    c = cm.shape[0]
    rows = cm.sum(axis=1)
    cols = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(rows[:, None] > 0, cm / rows[:, None], np.nan)
        pur = np.where(cols[None, :] > 0, cm / cols[None, :], np.nan)
    total = cm.sum()
    acc = np.trace(cm) / total if total else float("nan")

    w, h = CONFUSION_SIZE_PX
    with matplotlib.rc_context({"font.size": 9}):
        fig = _new_figure((w / DPI, h / DPI))
        axes = fig.subplots(1, 2)
        try:
            fig.subplots_adjust(left=0.1, right=0.9, bottom=0.16, top=0.82, wspace=0.38)
            cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#e6e6e6")
            im = None
            for ax, mat, name, along in (
                (axes[0], eff, "Efficiency (normalised to truth)", "row"),
                (axes[1], pur, "Purity (normalised to prediction)", "col"),
            ):
                im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
                for i in range(c):
                    for j in range(c):
                        v = mat[i, j]
                        if np.isnan(v):
                            ax.text(j, i, "–", ha="center", va="center", color="#777", fontsize=9)
                            continue
                        colour = "white" if v > 0.55 else "#1b1b1b"
                        weight = "bold" if i == j else "normal"
                        ax.text(j, i - 0.13, f"{v:.3f}", ha="center", va="center", color=colour, fontsize=9 if c <= 6 else 7, weight=weight)
                        ax.text(j, i + 0.22, _si(cm[i, j]), ha="center", va="center", color=colour, fontsize=6.5, alpha=0.85)
                ax.set_xticks(range(c))
                ax.set_yticks(range(c))
                if along == "row":
                    ax.set_yticklabels([f"{n}\n{_si(r)}{short}" for n, r in zip(class_names, rows)], fontsize=8)
                    ax.set_xticklabels(class_names, fontsize=8)
                else:
                    ax.set_yticklabels(class_names, fontsize=8)
                    ax.set_xticklabels([f"{n}\n{_si(k)}{short}" for n, k in zip(class_names, cols)], fontsize=8)
                ax.set_xlabel("predicted class")
                ax.set_ylabel("true class")
                ax.set_title(name, fontsize=10)
                ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
                ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
                ax.grid(which="minor", color="white", linewidth=1.2)
                ax.tick_params(which="minor", length=0)
            cax = fig.add_axes((0.92, 0.16, 0.012, 0.66))
            fig.colorbar(im, cax=cax)
            head = title or "Confusion matrix"
            acc_txt = f"accuracy {acc:.4f}" if np.isfinite(acc) else "accuracy –"
            fig.suptitle(f"{head}\n{_si(total)} {unit}  ·  {acc_txt}", fontsize=11)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            fig.savefig(out, dpi=DPI)
        finally:
            fig.clear()
    return out


def score_histograms(score: np.ndarray, truth: np.ndarray, class_names: Sequence[str], out: str,
                     score_name: str = "score", cut: float | None = None, title: str | None = None) -> str:
    """Histograms of one classifier score (0..1), one per true class, each normalised to
    unit area, with the selection cut as a vertical line; PNG at ``out``. Returns ``out``."""
    score, truth = np.asarray(score, float).ravel(), np.asarray(truth).ravel()
    if score.shape != truth.shape:
        raise ValueError(f"score_histograms: {score.size} scores for {truth.size} truth labels")
    fig = _new_figure((6.4, 4.2))
    try:
        ax = fig.subplots()
        bins = np.linspace(0.0, 1.0, 26)
        for c, name in enumerate(class_names):
            sel = score[truth == c]
            if len(sel):
                ax.hist(sel, bins=bins, density=True, histtype="step", linewidth=1.6, label=f"{name} ({len(sel)})")
        if cut is not None:
            ax.axvline(cut, color="k", linestyle="--", linewidth=1.0, label=f"cut {cut:.3f}")
        ax.set_yscale("log")
        ax.set_xlabel(score_name)
        ax.set_ylabel("density (per true class)")
        ax.legend(fontsize=8, loc="upper center")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        fig.savefig(out, dpi=DPI)
    finally:
        fig.clear()
    return out


# ---------------------------------------------------------------------------- training curves
def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            xs.append(float(r["step"]))
            ys.append(v)
    return np.asarray(xs), np.asarray(ys)


def _smooth(y: np.ndarray) -> np.ndarray:
    """Exponential moving average with a span of ~5 % of the points (bias-corrected)."""
    n = len(y)
    if n < 8:
        return y
    alpha = 2.0 / (max(3, n // 20) + 1)
    out = np.empty(n)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


def loss_curve(records: Sequence[dict], out: str, title: str | None = None) -> str:
    """Training curves from log records: loss (left) and accuracy (right) versus step.

    Parameters
    ----------
    records : list of dict
        Each with ``step`` and any of ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``
        (missing or ``None`` values are skipped). Training series are drawn raw (faint) and
        smoothed; validation series with markers.
    out : str
        PNG path (``LOSS_SIZE_PX`` pixels).

    Returns
    -------
    str
        ``out``.
    """
    import matplotlib

    records = list(records)
    if not records:
        raise ValueError("loss_curve: no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "step" not in r:
            raise ValueError(f"loss_curve: record {i} has no 'step': {r!r}")
    records = sorted(records, key=lambda r: float(r["step"]))
    series = {k: _series(records, k) for k in ("loss", "val_loss", "accuracy", "val_accuracy")}
    if not any(len(series[k][0]) for k in series):
        raise ValueError("loss_curve: records hold none of loss, val_loss, accuracy, val_accuracy")

    w, h = LOSS_SIZE_PX
    with matplotlib.rc_context({"font.size": 9}):
        fig = _new_figure((w / DPI, h / DPI))
        ax_l, ax_a = fig.subplots(1, 2)
        try:
            fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.86, wspace=0.22)
            for ax, train_key, val_key, label in ((ax_l, "loss", "val_loss", "loss"), (ax_a, "accuracy", "val_accuracy", "accuracy")):
                xt, yt = series[train_key]
                xv, yv = series[val_key]
                if len(xt):
                    if len(xt) >= 8:
                        ax.plot(xt, yt, color="#0072B2", alpha=0.25, linewidth=0.8)
                    ax.plot(xt, _smooth(yt), color="#0072B2", linewidth=1.6, label=f"train {label}")
                if len(xv):
                    ax.plot(xv, yv, color="#D55E00", marker="o", markersize=3.5, linewidth=1.2, label=f"validation {label}")
                if not len(xt) and not len(xv):
                    ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center", va="center", color="#777")
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    ax.legend(fontsize=8, frameon=False)
                    ax.grid(alpha=0.3, linewidth=0.6)
                ax.set_xlabel("step")
                ax.set_ylabel(label)
                ax.set_title(label.capitalize(), fontsize=10)
            yl = np.concatenate([series["loss"][1], series["val_loss"][1]])
            if yl.size and (yl > 0).all() and yl.max() / yl.min() > 20:
                ax_l.set_yscale("log")
            ya = np.concatenate([series["accuracy"][1], series["val_accuracy"][1]])
            if ya.size and ya.min() >= 0 and ya.max() <= 1:
                ax_a.set_ylim(max(0.0, min(ya.min() - 0.02, 0.9)), 1.0)
            last = [f"{k} {series[k][1][-1]:.4g}" for k in ("loss", "val_loss", "accuracy", "val_accuracy") if len(series[k][1])]
            fig.suptitle((title + "\n" if title else "") + f"step {int(float(records[-1]['step']))}:  " + ",  ".join(last), fontsize=10)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            fig.savefig(out, dpi=DPI)
        finally:
            fig.clear()
    return out
