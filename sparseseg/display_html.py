"""Interactive event displays: one self-contained HTML file made with plotly.

plotly is imported inside :func:`event_display_html`, so ``import sparseseg`` stays light. The
file embeds plotly.js and opens offline in any browser.

2D (wire planes): one row per plane, columns ADC | truth | prediction. Every active pixel is a
square WebGL marker (``Scattergl``) at full resolution, nothing is pooled. The panels of a plane
share their wire and tick axes, and planes with the same number of ticks share the tick axis,
so zooming or panning one panel moves the others. Pixels are drawn as one trace per (truth,
predicted) class pair, which lets every hover name both classes and lets a click on a class in
the legend hide it in all truth and prediction panels (a double click shows that class alone).

3D (voxel volumes): one rotatable scene with one ``Scatter3d`` per view (value, truth,
prediction) and buttons to switch between them.

Hover: plane, wire, tick (3D: x, y, z), ADC (3D: value in MeV), truth class, predicted class
and the five class scores of ``sparseseg predict`` when they are given.
"""
from __future__ import annotations

import base64
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from .classes import CLASS_COLORS, CLASS_NAMES, IGNORE, NUM_CLASSES
from .event import Event
from .plots import _accuracy, _check_pred, checked_planes, display_title

__all__ = ["event_display_html"]

NO_TRUTH = NUM_CLASSES
"""Display code of a kept pixel without truth (label 255)."""
NAMES = tuple(CLASS_NAMES) + ("no truth",)
COLORS = tuple(CLASS_COLORS) + ("#6e6e6e",)
ROW_HEIGHT_PX = 300
"""Height of one plane's row of panels."""
MARKER_PX = 3
"""Side of a pixel's square marker (2D) in screen pixels, at least (zoomed in, markers grow to
the size of a pixel); 3D voxels are drawn at 2."""

_BG = "#0e1014"  # figure background (as the PNG display)
_PANEL_BG = "#000000"  # empty pixels
_FG = "#d9dce1"
_AXIS = "#5a5f69"


# ---------------------------------------------------------------------------- inputs
def _as_list(x: Any, n: int, what: str) -> list:
    if x is None:
        return [None] * n
    if isinstance(x, np.ndarray):
        x = [x]
    x = list(x)
    if len(x) != n:
        raise ValueError(f"event_display_html: {len(x)} {what} arrays for {n} planes")
    return x


def _check_scores(s: Any, ev: Event, i: int) -> np.ndarray | None:
    if s is None:
        return None
    s = np.asarray(s, dtype=np.float32)
    if s.shape != (len(ev), NUM_CLASSES):
        raise ValueError(f"event_display_html: scores[{i}] has shape {s.shape}; expected ({len(ev)}, {NUM_CLASSES}) for {ev!r}")
    return s


def _truth_codes(ev: Event) -> np.ndarray | None:
    if ev.labels is None:
        return None
    c = ev.labels.astype(np.int64)
    c[c == IGNORE] = NO_TRUTH
    return c


# ---------------------------------------------------------------------------- colours
def _nice_ticks(lo: float, hi: float) -> list[float]:
    """1-2-3-5 x 10^k values within [lo, hi] (for a log colour bar)."""
    out = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 3, 5):
            v = m * 10.0**k
            if lo <= v <= hi:
                out.append(v)
    return out


def _value_axis(values: np.ndarray, title: str) -> tuple[dict[str, Any], bool]:
    """A layout ``coloraxis`` for pixel values, and whether the colours are log10(value).

    The range is the 1st to 99.5th percentile, as in the PNG display; a range wider than 8x
    of positive values gets a log scale (colour = log10(value), colour bar labelled in value).
    """
    from plotly.colors import sequential

    scale = list(sequential.Inferno[2:])  # drop the near-black end: the faintest pixel shows on black
    colorscale = [[i / (len(scale) - 1), c] for i, c in enumerate(scale)]
    bar: dict[str, Any] = {"title": {"text": title, "side": "top"}, "thickness": 10, "outlinewidth": 0}
    lo, hi = (float(np.percentile(values, 1.0)), float(np.percentile(values, 99.5))) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo * 1.01 + 1e-6
    if lo > 0 and hi / lo >= 8:
        ticks = _nice_ticks(lo, hi)
        bar.update(tickvals=[math.log10(t) for t in ticks], ticktext=[f"{t:g}" for t in ticks])
        bar["title"]["text"] = f"{title} (log scale)"
        return {"colorscale": colorscale, "cmin": math.log10(lo), "cmax": math.log10(hi), "colorbar": bar}, True
    return {"colorscale": colorscale, "cmin": lo, "cmax": hi, "colorbar": bar}, False


def _class_colorscale() -> list[list[Any]]:
    """A stepped colour scale for display codes 0..NO_TRUTH with cmin -0.5, cmax NO_TRUTH + 0.5."""
    n = len(COLORS)
    out = []
    for i, c in enumerate(COLORS):
        out += [[i / n, c], [(i + 1) / n, c]]
    return out


# ---------------------------------------------------------------------------- hover
def _score_line(first_column: int) -> str:
    return "<br>scores  " + "  ".join(f"{n} %{{customdata[{first_column + k}]:.3f}}" for k, n in enumerate(CLASS_NAMES))


def _customdata(values: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """(N, 1) value, or (N, 6) value + five scores, float32."""
    cols = [values.astype(np.float32)[:, None]]
    if scores is not None:
        cols.append(scores.astype(np.float32))
    return np.ascontiguousarray(np.concatenate(cols, axis=1))


_TYPED = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
          "float32": "f4", "float64": "f8"}


def _typed(a: np.ndarray) -> dict[str, str]:
    """A numpy array as a plotly.js typed-array spec (base64 of little-endian data), far smaller
    than a JSON list of numbers. plotly.js reads these since version 2.28 (plotly 5.19)."""
    a = np.asarray(a)
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    spec = {"dtype": _TYPED[a.dtype.name], "bdata": base64.b64encode(a.tobytes()).decode("ascii")}
    if a.ndim > 1:
        spec["shape"] = ", ".join(str(n) for n in a.shape)
    return spec


def _coord_array(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int16 if a.size == 0 or a.max() < 2**15 else np.int32)


# ---------------------------------------------------------------------------- 2D
def _axis_style() -> dict[str, Any]:
    return {"showgrid": False, "zeroline": False, "linecolor": _AXIS, "mirror": True, "ticks": "outside",
            "tickcolor": _AXIS, "color": "#a9aeb7", "title": {"font": {"color": _FG}}}


def _figure_2d(planes: Sequence[Event], preds: list, scores: list, title: str) -> dict[str, Any]:
    truths = [_truth_codes(ev) for ev in planes]
    has_truth = any(t is not None for t in truths)
    has_pred = any(p is not None for p in preds)
    views = ["ADC"] + (["truth"] if has_truth or not has_pred else []) + (["prediction"] if has_pred else [])
    nrow, ncol = len(planes), len(views)

    # ---- layout of the panels, in pixels, then as fractions of the plot area
    top, bottom, row_gap, col_gap = 80, 110, 56, 0.025
    height = top + bottom + nrow * ROW_HEIGHT_PX + (nrow - 1) * row_gap
    plot_h = height - top - bottom
    col_w = (1 - col_gap * (ncol - 1)) / ncol
    layout: dict[str, Any] = {"annotations": []}
    same_ticks = len({ev.shape[0] for ev in planes}) == 1  # one drift-time axis for all planes
    for r, (ev, t, p) in enumerate(zip(planes, truths, preds)):
        y1 = 1 - r * (ROW_HEIGHT_PX + row_gap) / plot_h
        y0 = y1 - ROW_HEIGHT_PX / plot_h
        for c, view in enumerate(views):
            i = r * ncol + c + 1
            x0 = c * (col_w + col_gap)
            x_ref = f"x{'' if r * ncol + 1 == 1 else r * ncol + 1}"  # the plane's first panel
            y_ref = "y" if same_ticks else x_ref.replace("x", "y")
            xa = dict(_axis_style(), domain=[x0, x0 + col_w], anchor=f"y{i}", range=[-0.5, ev.shape[1] - 0.5])
            ya = dict(_axis_style(), domain=[y0, y1], anchor=f"x{i}", range=[-0.5, ev.shape[0] - 0.5])
            if c > 0:
                xa["matches"] = x_ref
                ya["showticklabels"] = False
            else:
                ya["title"] = dict(ya["title"], text=f"<b>{ev.plane}</b>  tick")
            if f"y{i}" != (y_ref if y_ref != "y" else "y1"):
                ya["matches"] = y_ref
            if r == nrow - 1:
                xa["title"] = dict(xa["title"], text="wire")
            layout["xaxis" if i == 1 else f"xaxis{i}"] = xa
            layout["yaxis" if i == 1 else f"yaxis{i}"] = ya
            head = f"<b>{ev.plane}</b>  {view}"
            if view == "ADC":
                head += f"  ({len(ev):,} px, {100 * ev.occupancy:.2f} %)"
            elif view == "truth" and t is None:
                head += "  (none)"
            elif view == "prediction":
                acc = _accuracy(ev.labels, p)
                head += "  (none)" if p is None else (f"  (accuracy {acc:.3f})" if acc is not None else "")
            layout["annotations"].append({
                "text": head, "x": x0 + col_w / 2, "y": y1, "xref": "paper", "yref": "paper", "xanchor": "center",
                "yanchor": "bottom", "yshift": 4, "showarrow": False, "font": {"size": 13, "color": _FG},
            })

    values = np.concatenate([ev.features[:, 0] for ev in planes])
    coloraxis, is_log = _value_axis(values[values > 0], "ADC")

    traces: list[dict[str, Any]] = []
    shown: set[str] = set()  # legend groups that already have a legend entry
    for r, (ev, truth, pred, sc) in enumerate(zip(planes, truths, preds, scores)):
        adc = ev.features[:, 0]
        wire, tick = _coord_array(ev.coords[:, 1]), _coord_array(ev.coords[:, 0])
        colour = np.log10(np.maximum(adc, 1e-12)).astype(np.float32) if is_log else adc.astype(np.float32)
        custom = _customdata(adc, sc)
        # one trace per (truth, prediction) pair, largest first so that rare classes are drawn on top
        t_key = truth if truth is not None else np.full(len(ev), -1)
        p_key = pred if pred is not None else np.full(len(ev), -1)
        keys = (t_key + 1) * 16 + (p_key + 1)
        uniq, counts = np.unique(keys, return_counts=True)
        for key in uniq[np.argsort(-counts, kind="stable")]:
            idx = np.flatnonzero(keys == key)
            t, p = int(key // 16) - 1, int(key % 16) - 1
            hover = f"<b>plane {ev.plane}</b>  wire %{{x}}  tick %{{y}}<br>ADC %{{customdata[0]:.1f}}"
            if t >= 0:
                hover += f"<br>truth <b>{NAMES[t]}</b>"
            if p >= 0:
                hover += ("  ·  " if t >= 0 else "<br>") + f"prediction <b>{NAMES[p]}</b>"
            if sc is not None:
                hover += _score_line(1)
            hover += "<extra></extra>"
            common = {"x": _typed(wire[idx]), "y": _typed(tick[idx]), "customdata": _typed(custom[idx])}
            for c, view in enumerate(views):
                i = r * ncol + c + 1
                code = {"ADC": None, "truth": t, "prediction": p}[view]
                if code is not None and code < 0:
                    continue
                marker: dict[str, Any] = {"symbol": "square", "size": MARKER_PX, "line": {"width": 0}}
                if code is None:
                    marker.update(color=_typed(colour[idx]), coloraxis="coloraxis")
                else:
                    marker["color"] = COLORS[code]
                group = None if code is None else NAMES[code]
                trace = dict(
                    common, type="scattergl", mode="markers", marker=marker, hovertemplate=hover,
                    xaxis=f"x{'' if i == 1 else i}", yaxis=f"y{'' if i == 1 else i}",
                    name=group or "ADC", showlegend=False, meta={"plane": ev.plane, "view": view, "kind": "pixels"},
                )
                if group is not None:
                    trace.update(legendgroup=group, showlegend=group not in shown, legendrank=code)
                    shown.add(group)
                traces.append(trace)
        if ev.vertices is not None and len(ev.vertices) and "truth" in views:
            vtx = ev.vertices.astype(np.float64)
            i = r * ncol + views.index("truth") + 1
            traces.append({
                "type": "scattergl", "mode": "markers", "x": vtx[:, 1].tolist(), "y": vtx[:, 0].tolist(),
                "xaxis": f"x{'' if i == 1 else i}", "yaxis": f"y{'' if i == 1 else i}", "name": "vertex",
                "legendgroup": "vertex", "showlegend": "vertex" not in shown, "legendrank": NUM_CLASSES + 2,
                "marker": {"symbol": "circle-open", "size": 11, "color": "white", "line": {"width": 1.2}},
                "hovertemplate": f"<b>plane {ev.plane}</b>  vertex  wire %{{x:.1f}}  tick %{{y:.1f}}<extra></extra>",
                "meta": {"plane": ev.plane, "view": "truth", "kind": "vertex"},
            })
            shown.add("vertex")

    # ---- colour bar under the ADC column, class legend under the others
    below = -72 / plot_h
    coloraxis["colorbar"].update(orientation="h", x=col_w / 2, xanchor="center", y=below, yanchor="top", len=col_w * 0.9)
    layout.update(
        height=height, coloraxis=coloraxis, margin={"t": top, "b": bottom, "l": 70, "r": 20},
        title={"text": title, "x": 0.5, "xanchor": "center", "font": {"size": 16}},
        legend={"orientation": "h", "x": (col_w + 1) / 2 if ncol > 1 else 0.5, "xanchor": "center", "y": below,
                "yanchor": "top", "itemsizing": "constant", "font": {"size": 12}, "bgcolor": "rgba(0,0,0,0)"},
    )
    return {"data": traces, "layout": layout}


# ---------------------------------------------------------------------------- 3D
def _figure_3d(ev: Event, pred: np.ndarray | None, sc: np.ndarray | None, title: str) -> dict[str, Any]:
    truth = _truth_codes(ev)
    value = ev.features[:, 0]
    xyz = {k: _typed(_coord_array(ev.coords[:, j])) for j, k in enumerate("xyz")}
    custom = _typed(_customdata(value, sc))
    coloraxis, is_log = _value_axis(value[value > 0], "value (MeV)")
    colour = np.log10(np.maximum(value, 1e-12)).astype(np.float32) if is_log else value.astype(np.float32)

    hover = "voxel  x %{x}  y %{y}  z %{z}<br>value %{customdata[0]:.3g} MeV"
    names: dict[str, Any] = {}
    if truth is not None:
        names["text"] = [NAMES[c] for c in truth.tolist()]
        hover += "<br>truth <b>%{text}</b>"
    if pred is not None:
        names["hovertext"] = [NAMES[c] for c in pred.tolist()]
        hover += ("  ·  " if truth is not None else "<br>") + "prediction <b>%{hovertext}</b>"
    if sc is not None:
        hover += _score_line(1)
    hover += "<extra></extra>"

    views: list[tuple[str, dict[str, Any]]] = [("value", {"color": _typed(colour), "coloraxis": "coloraxis"})]
    for view, codes in (("truth", truth), ("prediction", pred)):
        if codes is not None:
            views.append((view, {
                "color": _typed(codes.astype(np.uint8)), "colorscale": _class_colorscale(), "cmin": -0.5,
                "cmax": NO_TRUTH + 0.5, "colorbar": {"title": {"text": view}, "tickvals": list(range(len(NAMES))),
                                                    "ticktext": list(NAMES), "thickness": 12, "outlinewidth": 0, "len": 0.6},
            }))
    start = 1 if len(views) > 1 else 0  # truth (or prediction) first; the value view is a click away
    traces: list[dict[str, Any]] = []
    for k, (view, marker) in enumerate(views):
        traces.append(dict(
            xyz, **names, type="scatter3d", mode="markers", name=view, visible=k == start, showlegend=False,
            marker=dict(marker, size=2, symbol="square", line={"width": 0}), customdata=custom, hovertemplate=hover,
            meta={"plane": ev.plane, "view": view, "kind": "voxels"},
        ))
    if ev.vertices is not None and len(ev.vertices):
        v = ev.vertices.astype(np.float64)
        traces.append({
            "type": "scatter3d", "mode": "markers", "x": v[:, 0].tolist(), "y": v[:, 1].tolist(), "z": v[:, 2].tolist(),
            "name": "vertex", "showlegend": False, "marker": {"size": 6, "symbol": "circle-open", "color": "white"},
            "hovertemplate": "vertex  x %{x:.1f}  y %{y:.1f}  z %{z:.1f}<extra></extra>",
            "meta": {"plane": ev.plane, "view": "all", "kind": "vertex"},
        })
    extra = len(traces) - len(views)
    buttons = [
        {"label": view, "method": "restyle", "args": [{"visible": [j == k for j in range(len(views))] + [True] * extra}]}
        for k, (view, _) in enumerate(views)
    ]
    axis = {"backgroundcolor": _PANEL_BG, "gridcolor": "#30343b", "zerolinecolor": _AXIS, "showbackground": True,
            "color": "#a9aeb7"}
    info = f"{len(ev):,} voxels in {' x '.join(str(s) for s in ev.shape)}"
    acc = _accuracy(ev.labels, pred)
    if acc is not None:
        info += f"  ·  accuracy {acc:.3f}"
    coloraxis["colorbar"].update(len=0.6)
    layout = {
        "height": 900, "coloraxis": coloraxis, "margin": {"t": 90, "b": 20, "l": 20, "r": 20},
        "title": {"text": f"{title}<br><span style='font-size:12px'>{info}</span>", "x": 0.5, "xanchor": "center"},
        "scene": {"xaxis": dict(axis, title={"text": "x"}), "yaxis": dict(axis, title={"text": "y"}),
                  "zaxis": dict(axis, title={"text": "z"}), "aspectmode": "data", "bgcolor": _PANEL_BG},
        "updatemenus": [{"type": "buttons", "direction": "right", "buttons": buttons, "active": start, "x": 0.0,
                         "xanchor": "left", "y": 1.0, "yanchor": "bottom", "showactive": True,
                         "bgcolor": "#c9ccd2", "bordercolor": _AXIS, "font": {"color": "#111111"}}],
    }
    return {"data": traces, "layout": layout}


# ---------------------------------------------------------------------------- public
def event_display_html(
    planes: Sequence[Event] | Event,
    preds: Sequence[np.ndarray | None] | np.ndarray | None,
    out: str,
    title: str | None = None,
    scores: Sequence[np.ndarray | None] | np.ndarray | None = None,
) -> str:
    """Write an interactive event display as one self-contained HTML file (plotly.js embedded).

    Parameters
    ----------
    planes : list of Event
        The 2D images of one interaction (e.g. U, V, Y), a single 2D image, or one 3D event.
    preds : list of int arrays (N_i,), or None
        Predicted class codes per plane, in each event's coordinate order; an (N_i, 5) score
        array is reduced with argmax (and used as the scores). ``None`` (or a ``None`` entry)
        leaves out the prediction.
    out : str
        HTML path; parent folders are created. Written through a temporary file and renamed.
    title : str, optional
        Page and figure title; defaults to :func:`sparseseg.plots.display_title` of the first
        event's ``meta`` (event id, interaction type, preset).
    scores : list of float arrays (N_i, 5), or None
        Class scores per pixel (``scores`` of a ``sparseseg predict`` file), shown on hover.

    Returns
    -------
    str
        ``out``.
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ValueError("event_display_html: needs plotly (pip install 'plotly>=5.19')") from None

    planes = checked_planes(planes, "event_display_html")
    raw = _as_list(preds, len(planes), "prediction")
    sc = [_check_scores(s, ev, i) for i, (s, ev) in enumerate(zip(_as_list(scores, len(planes), "score"), planes))]
    pred_codes = []
    for i, (p, ev) in enumerate(zip(raw, planes)):
        if p is None:
            pred_codes.append(None)
            continue
        p_arr = np.asarray(p)
        if p_arr.ndim == 2 and sc[i] is None:
            sc[i] = _check_scores(p_arr, ev, i)
        pred_codes.append(_check_pred(p_arr, ev, i).astype(np.int64))
    if title is None:
        title = display_title(planes[0].meta) or "event display"
    dims = {ev.ndim for ev in planes}
    if dims == {3}:
        if len(planes) != 1:
            raise ValueError(f"event_display_html: draws one 3D event at a time, got {len(planes)}")
        fig = _figure_3d(planes[0], pred_codes[0], sc[0], title)
    elif dims == {2}:
        fig = _figure_2d(planes, pred_codes, sc, title)
    else:
        raise ValueError("event_display_html: planes mix 2D and 3D events")
    fig["layout"].update(
        paper_bgcolor=_BG, plot_bgcolor=_PANEL_BG, font={"color": _FG}, hovermode="closest", dragmode="zoom",
        hoverlabel={"font": {"size": 12}, "align": "left"}, modebar={"bgcolor": "rgba(0,0,0,0)", "color": "#a9aeb7", "activecolor": "#ffffff"},
    )
    config = {"scrollZoom": True, "displaylogo": False, "responsive": True,
              "toImageButtonOptions": {"format": "png", "filename": os.path.splitext(os.path.basename(out))[0]}}
    # The figure is plain JSON already (arrays as typed-array specs), written straight into the
    # page: plotly's figure validation would take seconds for the ~100 traces of a MicroBooNE event.
    html = _PAGE.format(
        title=_escape(title), height=int(fig["layout"]["height"]), plotlyjs=get_plotlyjs(),
        data=_script_json(fig["data"]), layout=_script_json(fig["layout"]), config=_script_json(config),
        resize=_RESIZE_JS if dims == {2} else "",
    )
    from .atomic import write_text

    write_text(out, html)
    return out


_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>html, body {{margin: 0; background: #0e1014;}}</style>
</head>
<body>
<div id="sparseseg-display" class="sparseseg-display" style="width: 100%; height: {height}px;"></div>
<script type="text/javascript">{plotlyjs}</script>
<script type="text/javascript">
Plotly.newPlot("sparseseg-display", {data}, {layout}, {config});
</script>
<script type="text/javascript">{resize}</script>
</body>
</html>
"""
"""The page: plotly.js inline (opens offline), then the figure as JSON literals."""

_RESIZE_JS = """
// Zoomed in, a pixel's marker grows to the pixel's size on screen, so that pixels tile as in
// the image instead of standing apart as dots (never below the default size).
(function () {
  var gd = document.getElementById("sparseseg-display");
  var pixels = gd.data.map(function (t, i) { return t.meta && t.meta.kind === "pixels" ? i : -1; })
                      .filter(function (i) { return i >= 0; });
  if (!pixels.length || !gd.on) return;
  function resize() {
    var full = gd._fullLayout, groups = {};
    pixels.forEach(function (i) {
      var t = gd._fullData[i];
      var xa = full[t.xaxis.replace("x", "xaxis")], ya = full[t.yaxis.replace("y", "yaxis")];
      var per = Math.min(xa._length / Math.abs(xa.range[1] - xa.range[0]), ya._length / Math.abs(ya.range[1] - ya.range[0]));
      var size = Math.max(%(min)d, Math.min(%(max)d, Math.round(per)));
      if (t.marker.size !== size) (groups[size] = groups[size] || []).push(i);
    });
    Object.keys(groups).forEach(function (s) { Plotly.restyle(gd, {"marker.size": Number(s)}, groups[s]); });
  }
  gd.on("plotly_relayout", resize);
})();
""" % {"min": MARKER_PX, "max": 48}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>", no HTML comment openers)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/").replace("<!--", "\\u003c!--")
