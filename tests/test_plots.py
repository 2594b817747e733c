"""Event displays, confusion heatmaps and loss curves: PNG output, pooling helpers, errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sparseseg.classes import CLASS_COLORS, IGNORE, MICHEL
from sparseseg.event import Event
from sparseseg.metrics import confusion_matrix
from sparseseg.plots import (
    CONFUSION_SIZE_PX,
    LOSS_SIZE_PX,
    confusion_heatmap,
    event_display,
    label_pool2d,
    loss_curve,
    max_pool2d,
    pool_factor,
)


def _read_png(path):
    import matplotlib.image as mpimg

    assert os.path.getsize(path) > 1000
    return mpimg.imread(path)


def _draw_line(img, lab, r0, c0, r1, c1, code, adc):
    n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    r = np.round(np.linspace(r0, r1, n)).astype(int)
    c = np.round(np.linspace(c0, c1, n)).astype(int)
    img[r, c] = adc
    lab[r, c] = np.minimum(lab[r, c], code)


def _synthetic_plane(shape, plane, seed=0):
    """A small wire-plane image: a muon that stops in a Michel, a proton, a shower-ish fan, noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.zeros(shape, np.float32)
    lab = np.full(shape, 254, np.int16)
    _draw_line(img, lab, 0.1 * h, 0.1 * w, 0.7 * h, 0.6 * w, 1, 70.0)  # muon
    _draw_line(img, lab, 0.7 * h, 0.6 * w, 0.72 * h, 0.66 * w, 4, 60.0)  # Michel
    _draw_line(img, lab, 0.1 * h, 0.1 * w, 0.2 * h, 0.05 * w, 0, 250.0)  # proton
    for a in np.linspace(-0.3, 0.3, 5):  # shower fan
        _draw_line(img, lab, 0.5 * h, 0.2 * w, 0.5 * h + 0.3 * h * np.sin(a), 0.2 * w + 0.3 * w * np.cos(a), 2, 40.0)
    noise = rng.integers(0, h * w, 40)
    img.flat[noise] = np.maximum(img.flat[noise], 12.0)
    lab = np.where(lab == 254, IGNORE, lab).astype(np.uint8)
    ev = Event.from_dense(img, lab, meta={"plane": plane, "event_id": 3})
    ev.vertices = np.array([[0.1 * h, 0.1 * w]], np.float32)
    return ev


def _planes():
    return [_synthetic_plane((120, 300), "U", 0), _synthetic_plane((120, 300), "V", 1), _synthetic_plane((120, 420), "Y", 2)]


def _predict(ev, seed=0):
    rng = np.random.default_rng(seed)
    p = ev.labels.astype(np.int64)
    p[p == IGNORE] = 1
    flip = rng.random(len(p)) < 0.1
    p[flip] = rng.integers(0, 5, int(flip.sum()))
    return p


# ---------------------------------------------------------------------------- pooling helpers
def test_max_pool2d_hand_computed():
    a = np.array(
        [
            [1, 0, 0, 5, 2],
            [0, 3, 0, 0, 0],
            [7, 0, 0, 0, 9],
        ],
        dtype=np.float32,
    )
    expected = np.array([[3, 5, 2], [7, 0, 9]], dtype=np.float32)
    out = max_pool2d(a, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(max_pool2d(a, 3), [[7, 9]])
    np.testing.assert_array_equal(max_pool2d(a, 1), a)


def test_label_pool2d_keeps_lowest_code():
    e = IGNORE
    lab = np.array(
        [
            [e, e, 2, e, e, 4],
            [e, 1, e, 3, e, e],
            [e, e, e, e, e, e],
            [4, e, 0, 2, e, e],
        ],
        dtype=np.uint8,
    )
    expected = np.array([[1, 2, 4], [4, 0, e]], dtype=np.uint8)
    out = label_pool2d(lab, 2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    # a ragged edge is padded with the fill code, which never wins over a class
    np.testing.assert_array_equal(label_pool2d(lab[:3, :5], 2), [[1, 2, e], [e, e, e]])
    np.testing.assert_array_equal(label_pool2d(lab, 4), [[0, 4]])


def test_pool_factor_and_errors():
    assert pool_factor((1008, 3456), 346) == 10
    assert pool_factor((1008, 3456), 3456) == 1
    assert pool_factor((2000, 100), 400, max_height=500) == 4
    with pytest.raises(ValueError, match="positive integer"):
        max_pool2d(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match="2D"):
        label_pool2d(np.zeros((2, 2, 2)), 2)


# ---------------------------------------------------------------------------- event display
def test_event_display_three_planes_with_predictions(tmp_path):
    planes = _planes()
    preds = [_predict(ev, i) for i, ev in enumerate(planes)]
    out = event_display(planes, preds, str(tmp_path / "sub" / "display.png"), title="three planes", max_width_px=900)
    assert out == str(tmp_path / "sub" / "display.png")
    img = _read_png(out)
    assert img.shape[1] == 900
    assert 300 < img.shape[0] < 900
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_event_display_without_predictions_and_single_event(tmp_path):
    ev = _synthetic_plane((200, 200), "Y")
    out = event_display(ev, None, str(tmp_path / "single.png"), max_width_px=700)
    img = _read_png(out)
    assert img.shape[1] == 700
    # no labels at all: still draws ADC with an empty truth panel
    bare = Event(coords=ev.coords, features=ev.features, shape=ev.shape, meta={"plane": "Y"})
    img2 = _read_png(event_display([bare], None, str(tmp_path / "bare.png")))
    assert img2.shape[1] == 1200


def test_event_display_thin_michel_survives_pooling(tmp_path):
    """A 6-pixel Michel in a full 1008 x 3456 plane must still be drawn in its class colour."""
    h, w = 1008, 3456
    coords = np.array([[500, 2000 + k] for k in range(6)], np.int32)
    ev = Event(
        coords=coords,
        features=np.full((6, 1), 60.0, np.float32),
        shape=(h, w),
        labels=np.full(6, MICHEL, np.uint8),
        meta={"plane": "Y"},
    )
    img = _read_png(event_display([ev], [np.full(6, MICHEL)], str(tmp_path / "michel.png")))
    rgb = img[..., :3]
    target = np.array([int(CLASS_COLORS[MICHEL][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    close = np.abs(rgb - target).max(axis=-1) < 0.02
    # one pooled pixel per label panel at least (truth and prediction; the legend adds a patch)
    assert close.sum() >= 3


def test_event_display_3d_projections(tmp_path):
    rng = np.random.default_rng(4)
    t = np.linspace(0, 1, 300)[:, None]
    coords = np.unique(np.round(np.array([5, 5, 5]) + t * np.array([90, 60, 40])).astype(np.int32), axis=0)
    n = len(coords)
    labels = np.where(np.arange(n) < n // 2, 1, 4).astype(np.uint8)
    ev = Event(
        coords=coords,
        features=rng.uniform(0.1, 3.0, (n, 1)).astype(np.float32),
        shape=(128, 128, 128),
        labels=labels,
        vertices=np.array([[5, 5, 5]], np.float32),
        meta={"plane": "3D"},
    )
    img = _read_png(event_display([ev], [labels.astype(np.int64)], str(tmp_path / "d3.png"), max_width_px=800))
    assert img.shape[1] == 800 and img.shape[0] > 500  # three square-ish rows


def test_event_display_errors(tmp_path):
    planes = _planes()
    out = str(tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 prediction arrays for 3 planes"):
        event_display(planes, [_predict(planes[0]), _predict(planes[1])], out)
    with pytest.raises(ValueError, match=r"preds\[0\] has shape"):
        event_display(planes[:1], [np.zeros(3, np.int64)], out)
    with pytest.raises(ValueError, match=r"values must be 0\.\.4"):
        event_display(planes[:1], [np.full(len(planes[0]), 7)], out)
    ev3 = Event(coords=np.zeros((1, 3), np.int32), features=np.ones((1, 1), np.float32), shape=(4, 4, 4))
    with pytest.raises(ValueError, match="mix 2D and 3D"):
        event_display([planes[0], ev3], None, out)
    with pytest.raises(ValueError, match="at least one"):
        event_display([], None, out)
    assert not os.path.exists(out)


# ---------------------------------------------------------------------------- confusion heatmap
def test_confusion_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 3000)
    t[t == 3] = 0  # a class without truth: a row of undefined efficiencies
    p = np.where(rng.random(3000) < 0.8, t, rng.integers(0, 5, 3000))
    cm = confusion_matrix(t, p)
    img = _read_png(confusion_heatmap(cm, str(tmp_path / "cm.png"), title="test"))
    assert img.shape[:2] == (CONFUSION_SIZE_PX[1], CONFUSION_SIZE_PX[0])
    img2 = _read_png(confusion_heatmap(np.array([[90, 10], [5, 95]]), str(tmp_path / "ts.png")))
    assert img2.shape[:2] == (CONFUSION_SIZE_PX[1], CONFUSION_SIZE_PX[0])
    with pytest.raises(ValueError, match="square"):
        confusion_heatmap(np.zeros((2, 3)), str(tmp_path / "bad.png"))


# ---------------------------------------------------------------------------- loss curve
def test_loss_curve(tmp_path):
    records = [{"step": s, "loss": 2.0 * np.exp(-s / 50) + 0.1, "accuracy": 1 - 0.5 * np.exp(-s / 50)} for s in range(0, 300, 3)]
    records += [{"step": s, "val_loss": 2.0 * np.exp(-s / 50) + 0.2, "val_accuracy": 0.95 - 0.5 * np.exp(-s / 50)} for s in range(0, 301, 50)]
    img = _read_png(loss_curve(records, str(tmp_path / "loss.png")))
    assert img.shape[:2] == (LOSS_SIZE_PX[1], LOSS_SIZE_PX[0])
    # loss only, with a missing value: the accuracy panel says so instead of failing
    img2 = _read_png(loss_curve([{"step": 0, "loss": 1.0}, {"step": 1, "loss": None}, {"step": 2, "loss": 0.5}], str(tmp_path / "l2.png")))
    assert img2.shape[:2] == (LOSS_SIZE_PX[1], LOSS_SIZE_PX[0])
    with pytest.raises(ValueError, match="no records"):
        loss_curve([], str(tmp_path / "e.png"))
    with pytest.raises(ValueError, match="record 1 has no 'step'"):
        loss_curve([{"step": 0, "loss": 1.0}, {"loss": 2.0}], str(tmp_path / "e.png"))


def test_import_is_light():
    code = "import sys, sparseseg.plots, sparseseg.metrics; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"
