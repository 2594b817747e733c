"""Confusion matrices, efficiency/purity/IoU, track/shower collapse and the text table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from sparseseg.classes import CLASS_NAMES, IGNORE
from sparseseg.event import Event
from sparseseg.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    format_table,
    summarize,
    track_shower_matrix,
)


# ---------------------------------------------------------------------------- confusion_matrix
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matches_sklearn_and_skips_ignore(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    truth = rng.integers(0, 5, n).astype(np.uint8)
    truth[rng.random(n) < 0.1] = IGNORE
    pred = rng.integers(0, 5, n)
    cm = confusion_matrix(truth, pred)
    keep = truth != IGNORE
    expected = sk_confusion_matrix(truth[keep], pred[keep], labels=range(5))
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == keep.sum()


def test_confusion_other_num_classes_and_empty():
    np.testing.assert_array_equal(confusion_matrix([0, 1, 1], [1, 1, 0], num_classes=2), [[0, 1], [1, 1]])
    cm = confusion_matrix(np.zeros(0, np.uint8), np.zeros(0, np.int64))
    assert cm.shape == (5, 5) and cm.sum() == 0
    # every pixel ignored: an all-zero matrix, not an error
    assert confusion_matrix([IGNORE, IGNORE], [0, 4]).sum() == 0


def test_confusion_errors():
    with pytest.raises(ValueError, match="truth has 3 pixels but pred has 2"):
        confusion_matrix([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"pred values must be 0\.\.4.*\[5\]"):
        confusion_matrix([0, 1, 2], [0, 1, 5])
    with pytest.raises(ValueError, match=r"pred values must be 0\.\.4.*\[-1\]"):
        confusion_matrix([0, 1, 2], [0, -1, 2])
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix([0, 1, 2], [0, 1, 255])
    with pytest.raises(ValueError, match=r"truth values must be 0\.\.4 or 255.*\[7\]"):
        confusion_matrix([0, 7, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="integer class codes"):
        confusion_matrix([0.5, 1.0], [0, 1])


# ---------------------------------------------------------------------------- summarize
# truth:  HIP HIP MIP MIP MIP shower delta Michel ignore
# pred:   HIP MIP MIP MIP HIP shower MIP   Michel delta
HAND_TRUTH = np.array([0, 0, 1, 1, 1, 2, 3, 4, 255], dtype=np.uint8)
HAND_PRED = np.array([0, 1, 1, 1, 0, 2, 1, 4, 3])


def test_hand_made_case():
    cm = confusion_matrix(HAND_TRUTH, HAND_PRED)
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 2, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(cm, expected)
    s = summarize(cm)
    assert s["pixels"] == 8
    assert s["accuracy"] == pytest.approx(5 / 8)
    assert s["efficiency"] == pytest.approx({"HIP": 1 / 2, "MIP": 2 / 3, "shower": 1.0, "delta": 0.0, "Michel": 1.0})
    # delta is never predicted: its purity is 0/0 -> None
    assert s["purity"]["delta"] is None
    assert {k: v for k, v in s["purity"].items() if k != "delta"} == pytest.approx(
        {"HIP": 1 / 2, "MIP": 2 / 4, "shower": 1.0, "Michel": 1.0}
    )
    # IoU = TP / (TP + FP + FN)
    assert s["iou"] == pytest.approx({"HIP": 1 / 3, "MIP": 2 / 5, "shower": 1.0, "delta": 0.0, "Michel": 1.0})
    assert s["mean_iou"] == pytest.approx((1 / 3 + 2 / 5 + 1 + 0 + 1) / 5)
    # track = HIP+MIP, shower = shower+delta+Michel; the delta predicted as MIP is shower -> track
    assert s["track_shower_confusion"] == [[5, 0], [1, 2]]
    assert s["track_shower_accuracy"] == pytest.approx(7 / 8)
    assert s["track_shower_efficiency"] == pytest.approx({"track": 1.0, "shower": 2 / 3})
    assert s["track_shower_purity"] == pytest.approx({"track": 5 / 6, "shower": 1.0})
    assert s["confusion"] == expected.tolist()
    eff_m = np.array(s["efficiency_matrix"], dtype=float)
    np.testing.assert_allclose(eff_m[1], [1 / 3, 2 / 3, 0, 0, 0])
    np.testing.assert_allclose(eff_m.sum(axis=1), 1.0)
    pur_m = np.array([[np.nan if v is None else v for v in row] for row in s["purity_matrix"]])
    np.testing.assert_allclose(pur_m[:, 1], [1 / 4, 2 / 4, 0, 1 / 4, 0])
    assert all(row[3] is None for row in s["purity_matrix"])  # column with no predictions
    np.testing.assert_array_equal(track_shower_matrix(cm), [[5, 0], [1, 2]])


def test_undefined_ratios_are_none_and_json_clean():
    # only HIP and MIP appear: the other classes have no truth and no prediction
    cm = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1])
    s = summarize(cm)
    for name in ("shower", "delta", "Michel"):
        assert s["efficiency"][name] is None
        assert s["purity"][name] is None
        assert s["iou"][name] is None
    # mean IoU only over classes that occur: HIP 1/2, MIP 2/3
    assert s["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["track_shower_efficiency"]["shower"] is None
    text = json.dumps(s, allow_nan=False)  # raises on NaN
    assert "NaN" not in text
    assert json.loads(text)["iou"]["delta"] is None

    empty = summarize(np.zeros((5, 5), np.int64))
    assert empty["accuracy"] is None and empty["mean_iou"] is None and empty["pixels"] == 0
    json.dumps(empty, allow_nan=False)
    for value in empty["efficiency_matrix"]:
        assert value == [None] * 5


def test_summarize_types_and_validation():
    s = summarize(confusion_matrix(HAND_TRUTH, HAND_PRED))
    assert isinstance(s["accuracy"], float) and isinstance(s["pixels"], int)
    assert list(s["efficiency"]) == list(CLASS_NAMES)
    s2 = summarize(np.array([[3, 1], [0, 4]]), class_names=("track", "shower"))
    assert s2["accuracy"] == pytest.approx(7 / 8) and "track_shower_accuracy" not in s2
    with pytest.raises(ValueError, match="square"):
        summarize(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 class names"):
        summarize(np.zeros((2, 2)), class_names=("a", "b", "c"))


# ---------------------------------------------------------------------------- accumulator
def test_accumulator_per_plane_equals_sum_of_parts():
    rng = np.random.default_rng(7)
    acc = ConfusionAccumulator()
    parts = {"U": [], "V": [], "Y": []}
    for _ in range(4):
        for plane in parts:
            n = int(rng.integers(50, 400))
            t = rng.integers(0, 5, n).astype(np.uint8)
            t[rng.random(n) < 0.05] = IGNORE
            p = rng.integers(0, 5, n)
            parts[plane].append((t, p))
            acc.add(t, p, plane=plane)
    for plane, items in parts.items():
        t = np.concatenate([a for a, _ in items])
        p = np.concatenate([b for _, b in items])
        np.testing.assert_array_equal(acc.per_plane[plane], confusion_matrix(t, p))
    np.testing.assert_array_equal(acc.matrix, sum(acc.per_plane.values()))
    s = acc.summary()
    assert list(s["per_plane"]) == ["U", "V", "Y"]
    assert s["pixels"] == sum(s["per_plane"][k]["pixels"] for k in "UVY")
    assert s["events"] == 12
    assert s["per_plane"]["V"] == summarize(acc.per_plane["V"])
    json.dumps(s, allow_nan=False)

    other = ConfusionAccumulator()
    other.add(HAND_TRUTH, HAND_PRED, plane="3D")
    before = acc.matrix.copy()
    acc.merge(other)
    np.testing.assert_array_equal(acc.matrix - before, confusion_matrix(HAND_TRUTH, HAND_PRED))
    assert "3D" in acc.per_plane
    acc.reset()
    assert acc.matrix.sum() == 0 and acc.per_plane == {}


def test_accumulator_without_plane_and_add_event():
    acc = ConfusionAccumulator()
    cm = acc.add(HAND_TRUTH, HAND_PRED)
    assert acc.per_plane == {} and cm.sum() == 8
    assert "per_plane" in acc.summary() and acc.summary()["per_plane"] == {}

    coords = np.stack([np.arange(9), np.zeros(9)], axis=1).astype(np.int32)
    ev = Event(coords=coords, features=np.full((9, 1), 50, np.float32), shape=(16, 4), labels=HAND_TRUTH.copy(), meta={"plane": "Y"})
    scores = np.eye(5)[HAND_PRED]  # (N, 5) one-hot logits
    acc2 = ConfusionAccumulator()
    acc2.add_event(ev, scores)
    np.testing.assert_array_equal(acc2.per_plane["Y"], cm)
    with pytest.raises(ValueError, match="no truth labels"):
        acc2.add_event(Event(coords=coords, features=ev.features, shape=(16, 4)), HAND_PRED)


# ---------------------------------------------------------------------------- table
def test_format_table():
    acc = ConfusionAccumulator()
    acc.add(HAND_TRUTH, HAND_PRED, plane="U")
    acc.add(HAND_TRUTH, HAND_PRED, plane="Y")
    text = format_table(acc.summary())
    lines = text.splitlines()
    assert lines[0].split() == ["pixels", "16"]
    assert "0.6250" in lines[1] and lines[1].startswith("accuracy")
    assert "track/shower accuracy" in text and "0.8750" in text
    assert "eff U" in text and "eff Y" in text
    hip = next(line for line in lines if line.startswith("HIP"))
    assert hip.split()[:4] == ["HIP", "0.5000", "0.5000", "0.3333"]
    delta = next(line for line in lines if line.startswith("delta"))
    assert delta.split()[2] == "-"  # undefined purity
    # the fixed-width body lines all have the same width
    body = [line for line in lines[5:] if line and not line.startswith("-")]
    assert len({len(line) for line in body}) == 1
    # plain summaries (no planes) format too
    assert "eff U" not in format_table(summarize(confusion_matrix(HAND_TRUTH, HAND_PRED)))
    assert math.isfinite(acc.summary()["mean_iou"])


def test_cut_for_purity_by_hand():
    from sparseseg.metrics import cut_for_purity

    score = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4]
    signal = [1, 1, 0, 1, 1, 0, 0]
    # cuts: >=0.9 purity 1; >=0.8 takes both 0.8s: 2/3; >=0.7 3/4; >=0.6 4/5; >=0.5 4/6; >=0.4 4/7
    assert cut_for_purity(score, signal, 0.8) == 0.6
    assert cut_for_purity(score, signal, 0.75) == 0.6
    assert cut_for_purity(score, signal, 0.9) == 0.9
    assert cut_for_purity(score, signal, 0.5) == 0.4
    assert cut_for_purity([0.3, 0.2], [0, 1], 0.9) is None
    with pytest.raises(ValueError, match="cut_for_purity: 2 scores for 3 truth flags"):
        cut_for_purity([0.1, 0.2], [0, 1, 1], 0.8)


def test_score_curves_by_hand():
    from sparseseg.metrics import ScoreCurves

    # class 0 scores of 7 pixels as in test_cut_for_purity_by_hand (float16-exact values), plus
    # one ignored pixel with the top score that must not count
    p0 = np.array([0.875, 0.75, 0.75, 0.625, 0.5, 0.375, 0.25, 1.0], np.float16)
    truth = np.array([0, 0, 2, 0, 0, 1, 1, IGNORE])
    scores = np.zeros((8, 5), np.float16)
    scores[:, 0] = p0
    scores[:, 1] = 1 - p0
    curves = ScoreCurves()
    curves.add(truth[:4], scores[:4])  # two images
    curves.add(truth[4:], scores[4:])
    assert curves.at_purity(0, 0.8) == {"cut": 0.5, "efficiency": 1.0, "purity": 0.8}
    assert curves.at_purity(0, 0.9) == {"cut": 0.875, "efficiency": 0.25, "purity": 1.0}
    # class 1: P1 = 1 - p0; its two pixels have the two highest P1 (0.75, 0.625), then a class-0 one at 0.5
    assert curves.at_purity(1, 0.6) == {"cut": 0.5, "efficiency": 1.0, "purity": 2 / 3}
    assert curves.at_purity(1, 0.7) == {"cut": 0.625, "efficiency": 1.0, "purity": 1.0}
    # class 2: score 0 everywhere, one pixel of 7 -> no cut reaches 0.8
    assert curves.at_purity(2, 0.8) == {"cut": None, "efficiency": 0.0, "purity": None}
    assert curves.at_purity(2, 0.1) == {"cut": 0.0, "efficiency": 1.0, "purity": 1 / 7}
    assert curves.summary(0.8)["Michel"] == {"cut": None, "efficiency": 0.0, "purity": None}  # class absent
    with pytest.raises(ValueError, match=r"ScoreCurves.add: scores of shape \(2, 5\) for 3 labels and 5 classes"):
        curves.add([0, 1, 2], scores[:2])
    with pytest.raises(ValueError, match="scores must be finite and >= 0"):
        curves.add([0], np.full((1, 5), np.nan))


def test_score_curves_equal_cut_for_purity():
    from sparseseg.metrics import ScoreCurves, cut_for_purity

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 20000)
    logits = rng.normal(size=(20000, 5)) + 2.0 * np.eye(5)[truth]
    scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float16)  # many ties
    curves = ScoreCurves()
    for part in np.array_split(np.arange(20000), 7):
        curves.add(truth[part], scores[part])
    for c in range(5):
        for floor in (0.5, 0.8, 0.9):
            got = curves.at_purity(c, floor)
            cut = cut_for_purity(scores[:, c].astype(np.float64), truth == c, floor)
            assert got["cut"] == cut
            sel = scores[:, c] >= cut
            assert got["efficiency"] == pytest.approx((sel & (truth == c)).sum() / (truth == c).sum(), abs=1e-15)
            assert got["purity"] == pytest.approx((truth[sel] == c).mean(), abs=1e-15)
