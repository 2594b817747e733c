"""Interactive HTML event display (plotly): points at full resolution, hover, linked axes,
self-contained page; `sparseseg show` output naming (folders, formats) and display titles."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from sparseseg import Event
from sparseseg.classes import CLASS_NAMES, DELTA, IGNORE, MICHEL, MIP, NUM_CLASSES
from sparseseg.cli import main
from sparseseg.display_html import event_display_html
from sparseseg.infer import EXTRAS
from sparseseg.io import EventWriter, write_events
from sparseseg.plots import display_title, interaction_type

KNOWN = {"row": 7, "col": 11, "adc": 123.4, "truth": MICHEL, "pred": DELTA,
         "scores": np.array([0.05, 0.05, 0.1, 0.7, 0.1], np.float32)}
"""A pixel of plane U whose hover is checked."""


# ---------------------------------------------------------------------------- helpers
def _plane(shape, plane, n, seed, event_id=5):
    """n random unique pixels (labels 0..4 and a few 255) plus, on plane U, the KNOWN pixel."""
    rng = np.random.default_rng(seed)
    lin = rng.choice(int(np.prod(shape)), size=n, replace=False)
    known = KNOWN["row"] * shape[1] + KNOWN["col"]
    lin = lin[lin != known]
    coords = np.stack(np.unravel_index(lin, shape), axis=1).astype(np.int32)
    adc = rng.uniform(10, 300, len(coords)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, len(coords)).astype(np.uint8)
    labels[rng.random(len(coords)) < 0.1] = IGNORE
    if plane == "U":
        coords = np.vstack([coords, [[KNOWN["row"], KNOWN["col"]]]]).astype(np.int32)
        adc = np.append(adc, np.float32(KNOWN["adc"]))
        labels = np.append(labels, np.uint8(KNOWN["truth"]))
    meta = {"plane": plane, "event_id": event_id, "preset": "test", "topology": "ccmu"}
    return Event(coords, adc[:, None], shape, labels=labels, vertices=np.array([[20.0, 30.0]], np.float32), meta=meta)


def _prediction(ev, seed):
    """(pred codes, softmax-like scores): the truth with some flips; the KNOWN pixel as in KNOWN."""
    rng = np.random.default_rng(seed)
    pred = np.where(ev.labels == IGNORE, MIP, ev.labels).astype(np.uint8)
    flip = rng.random(len(ev)) < 0.2
    pred[flip] = rng.integers(0, NUM_CLASSES, int(flip.sum()))
    scores = rng.dirichlet(np.ones(NUM_CLASSES), len(ev)).astype(np.float32)
    if ev.plane == "U":
        pred[-1] = KNOWN["pred"]
        scores[-1] = KNOWN["scores"]
    return pred, scores


def _planes():
    return [_plane((60, 90), "U", 400, 0), _plane((60, 90), "V", 350, 1), _plane((60, 130), "Y", 300, 2)]


def _decode(v):
    """A plotly array: a typed-array spec ({dtype, bdata, shape}) or a plain list."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<"))
        if "shape" in v:
            a = a.reshape([int(s) for s in v["shape"].split(",")])
        return a
    return np.asarray(v)


def _figure(path):
    """(html, data, layout, config) of the Plotly.newPlot call embedded in an HTML file."""
    html = path.read_text(encoding="utf-8")
    start = html.index("Plotly.newPlot(", html.index("</script>"))  # after the plotly.js library
    dec = json.JSONDecoder()
    pos = html.index(",", start) + 1  # skip the div id
    parts = []
    for _ in range(3):
        while html[pos] in " ,\n":
            pos += 1
        obj, pos = dec.raw_decode(html, pos)
        parts.append(obj)
    return (html, *parts)


def _hover(trace, i):
    """The hover text of point i of a trace, rendered from its hovertemplate like plotly.js does."""
    def field(m):
        name, fmt = m.group(1), m.group(2)
        if name.startswith("customdata"):
            k = int(name[name.index("[") + 1 : -1])
            value = _decode(trace["customdata"])[i][k]
        elif name in ("x", "y", "z"):
            value = _decode(trace[name])[i]
        else:  # text, hovertext: lists of str
            value = trace[name][i]
        if fmt:
            return format(float(value), fmt)
        return str(int(value)) if isinstance(value, (np.integer, int)) else str(value)

    text = re.sub(r"%\{([a-z]+(?:\[\d+\])?)(?::([^}]*))?\}", field, trace["hovertemplate"])
    return re.sub(r"<[^>]+>", " ", text.replace("<extra></extra>", ""))


def _pixel_traces(data, plane, view):
    return [t for t in data if t.get("meta", {}).get("kind") in ("pixels", "voxels")
            and t["meta"]["plane"] == plane and t["meta"]["view"] == view]


# ---------------------------------------------------------------------------- 2D
def test_html_2d_full_resolution_hover_linked_and_self_contained(tmp_path):
    planes = _planes()
    preds, scores = zip(*[_prediction(ev, i) for i, ev in enumerate(planes)])
    out = tmp_path / "sub" / "ev.html"
    assert event_display_html(planes, list(preds), str(out), scores=list(scores)) == str(out)
    html, data, layout, config = _figure(out)

    # self-contained: plotly.js inline, no external script
    assert "plotly.js v" in html[:200000] and len(html) > 1_000_000
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?https?:", html)

    for ev in planes:
        want = {(int(w), int(t)) for t, w in ev.coords}
        for view in ("ADC", "truth", "prediction"):
            traces = _pixel_traces(data, ev.plane, view)
            assert traces and all(t["type"] == "scattergl" and t["marker"]["symbol"] == "square" for t in traces)
            # every pixel exactly once per view (255 pixels too: grey "no truth" in the truth view)
            assert sum(len(_decode(t["x"])) for t in traces) == len(ev), (ev.plane, view)
            got = {(int(x), int(y)) for t in traces for x, y in zip(_decode(t["x"]), _decode(t["y"]))}
            assert got == want

    # hover of the known pixel, in each of its three views
    for view in ("ADC", "truth", "prediction"):
        hits = [(t, i) for t in _pixel_traces(data, "U", view)
                for i in np.flatnonzero((_decode(t["x"]) == KNOWN["col"]) & (_decode(t["y"]) == KNOWN["row"]))]
        assert len(hits) == 1
        text = _hover(*hits[0])
        assert "plane U" in text and f"wire {KNOWN['col']}" in text and f"tick {KNOWN['row']}" in text
        assert f"ADC {KNOWN['adc']:.1f}" in text
        assert "truth  Michel" in text and "prediction  delta" in text
        for name, s in zip(CLASS_NAMES, KNOWN["scores"]):
            assert f"{name} {s:.3f}" in text

    # colours: truth and prediction panels in the class colours, a legend entry per class
    legend = {t["name"] for t in data if t.get("showlegend")}
    assert set(CLASS_NAMES) | {"no truth", "vertex"} == legend

    # linked views: the panels of a plane share wire, all planes share tick (same number of rows)
    for r in range(3):
        first = r * 3 + 1
        ref = "x" if first == 1 else f"x{first}"
        for c in (2, 3):
            assert layout[f"xaxis{first + c - 1}"]["matches"] == ref
    assert all(layout[f"yaxis{i}"]["matches"] == "y" for i in range(2, 10))
    assert "matches" not in layout["yaxis"]

    # title: event id and interaction type
    assert "event 5" in layout["title"]["text"] and "νμ CC" in layout["title"]["text"]
    assert "<title>event 5" in html
    assert config["scrollZoom"] is True


def test_html_2d_without_prediction_and_without_truth(tmp_path):
    planes = _planes()
    event_display_html(planes, None, str(tmp_path / "t.html"))
    _, data, layout, _ = _figure(tmp_path / "t.html")
    assert {t["meta"]["view"] for t in data if t["meta"]["kind"] == "pixels"} == {"ADC", "truth"}
    text = _hover(_pixel_traces(data, "U", "ADC")[0], 0)
    assert "truth" in text and "prediction" not in text and "scores" not in text

    bare = [Event(ev.coords, ev.features, ev.shape, meta={"plane": ev.plane}) for ev in planes]
    event_display_html(bare, None, str(tmp_path / "b.html"), title="bare")
    _, data, layout, _ = _figure(tmp_path / "b.html")
    assert layout["title"]["text"] == "bare"
    for ev in bare:
        traces = _pixel_traces(data, ev.plane, "ADC")
        assert len(traces) == 1 and len(_decode(traces[0]["x"])) == len(ev)


# ---------------------------------------------------------------------------- 3D
def test_html_3d_one_scatter3d_per_view(tmp_path):
    rng = np.random.default_rng(3)
    shape = (64, 64, 64)
    lin = rng.choice(int(np.prod(shape)), size=500, replace=False)
    coords = np.stack(np.unravel_index(lin, shape), axis=1).astype(np.int32)
    value = rng.uniform(0.05, 5.0, (len(coords), 1)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, len(coords)).astype(np.uint8)
    ev = Event(coords, value, shape, labels=labels, meta={"plane": "3D", "event_id": 9, "topology": "bomb+ncpi0"})
    pred = np.roll(labels, 1).astype(np.int64)
    scores = rng.dirichlet(np.ones(NUM_CLASSES), len(coords)).astype(np.float32)
    out = tmp_path / "ev3d.html"
    event_display_html([ev], [pred], str(out), scores=[scores])
    _, data, layout, _ = _figure(out)
    voxels = [t for t in data if t["meta"]["kind"] == "voxels"]
    assert [t["meta"]["view"] for t in voxels] == ["value", "truth", "prediction"]
    for t in voxels:
        assert t["type"] == "scatter3d"
        assert len(_decode(t["x"])) == len(_decode(t["y"])) == len(_decode(t["z"])) == len(ev)
    assert [t["visible"] for t in voxels] == [False, True, False]  # truth first; buttons switch
    assert len(layout["updatemenus"][0]["buttons"]) == 3
    truth_colours = _decode(voxels[1]["marker"]["color"])
    np.testing.assert_array_equal(truth_colours, labels)
    text = _hover(voxels[2], 17)
    assert f"value {float(value[17, 0]):.3g} MeV" in text
    assert f"truth  {CLASS_NAMES[labels[17]]}" in text and f"prediction  {CLASS_NAMES[pred[17]]}" in text
    assert f"{CLASS_NAMES[0]} {scores[17, 0]:.3f}" in text
    assert f"x {coords[17, 0]}  y {coords[17, 1]}  z {coords[17, 2]}" in text
    assert "event 9" in layout["title"]["text"] and "particle bomb + NC π0" in layout["title"]["text"]


def test_html_errors(tmp_path):
    planes = _planes()
    out = str(tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"scores\[0\] has shape \(3, 5\)"):
        event_display_html(planes[:1], None, out, scores=[np.zeros((3, 5))])
    with pytest.raises(ValueError, match="2 prediction arrays for 3 planes"):
        event_display_html(planes, [np.zeros(len(planes[0]), np.int64)] * 2, out)
    with pytest.raises(ValueError, match="mix 2D and 3D"):
        ev3 = Event(np.zeros((1, 3), np.int32), np.ones((1, 1), np.float32), (4, 4, 4))
        event_display_html([planes[0], ev3], None, out)
    assert not list(tmp_path.iterdir())


def test_import_stays_light():
    code = "import sys, sparseseg.display_html; print('plotly' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False False"


# ---------------------------------------------------------------------------- titles
def test_display_title_and_interaction_type():
    assert interaction_type({"topology": "cce"}) == "νe CC"
    assert interaction_type({"interaction_type": "CCQE"}) == "CCQE"
    assert interaction_type({}) is None
    assert display_title({"event_id": 3, "topology": "ncpi0", "preset": "uboone"}, source="a.h5") == \
        "a.h5  ·  event 3  ·  NC π0  ·  uboone"
    assert display_title({}) == ""


# ---------------------------------------------------------------------------- the show command
@pytest.fixture
def event_files(tmp_path):
    planes = _planes()
    events = tmp_path / "events.h5"
    write_events(str(events), planes)
    pred = tmp_path / "pred.h5"
    with EventWriter(str(pred), extras=EXTRAS) as w:
        for i, ev in enumerate(planes):
            p, s = _prediction(ev, i)
            w.append(ev, extras={"pred": p, "scores": s.astype(np.float16)})
    return planes, str(events), str(pred)


def test_show_html_reads_scores(event_files, tmp_path, capsys):
    planes, events, pred = event_files
    out = tmp_path / "show.html"
    assert main(["show", events, "--pred", pred, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    _, data, layout, _ = _figure(out)
    assert layout["title"]["text"] == "events.h5  ·  event 5  ·  νμ CC  ·  test"
    hits = [(t, i) for t in _pixel_traces(data, "U", "prediction")
            for i in np.flatnonzero((_decode(t["x"]) == KNOWN["col"]) & (_decode(t["y"]) == KNOWN["row"]))]
    text = _hover(*hits[0])
    assert "prediction  delta" in text and f"delta {np.float16(0.7):.3f}" in text


def test_show_output_folder_and_formats(event_files, tmp_path, capsys, monkeypatch):
    _, events, pred = event_files
    d = tmp_path / "plots"
    d.mkdir()
    for target in (str(d), str(d) + "/"):  # an existing folder, with or without the slash
        assert main(["show", events, "-o", target]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {d / 'event5.png'}"
        assert sorted(p.name for p in d.iterdir()) == ["event5.png"]  # no hidden ".png"
        (d / "event5.png").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["show", events]) == 0 and (tmp_path / "event5.png").is_file()  # the default name

    assert main(["show", events, "-o", str(tmp_path / "new") + "/"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"sparseseg show: error: -o {tmp_path / 'new'}/: folder {tmp_path / 'new'} does not exist"
    assert main(["show", events, "-o", str(tmp_path / "ev.txt")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"sparseseg show: error: -o {tmp_path / 'ev.txt'}: unknown display format .txt; give a .png, .pdf, .svg or .html file, or a folder"
    assert not (tmp_path / "new").exists() and not (tmp_path / "ev.txt").exists()


def test_show_png_title_has_event_id_and_interaction(event_files, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    _, events, pred = event_files
    texts = []
    real = Figure.text

    def spy(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return real(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Figure, "text", spy)
    out = tmp_path / "ev.png"
    assert main(["show", events, "--pred", pred, "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "events.h5  ·  event 5  ·  νμ CC  ·  test" in texts
