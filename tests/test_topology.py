"""sparseseg.tasks.topology: the features of a hand-made view, and the classifier file."""
import json

import numpy as np
import pytest

from sparseseg import Event
from sparseseg.calibration import mip_scale
from sparseseg.tasks.topology import (FEATURE_NAMES, VIEW_FEATURES, TopologyClassifier, fit, interaction_features,
                                      view_features)


def _view():
    """Vertex (10, 10); a MIP track from it to (10, 30); a cosmic MIP along row 38 (away from the
    vertex); a 5 x 5 shower at rows 30-34, cols 5-9 at twice the track's charge; a 4-pixel delta."""
    pix, adc, cls = [], [], []
    for c in range(10, 31):
        pix.append((10, c)); adc.append(60.0); cls.append(1)
    for c in range(0, 40):
        pix.append((38, c)); adc.append(60.0); cls.append(1)
    for r in range(30, 35):
        for c in range(5, 10):
            pix.append((r, c)); adc.append(120.0 if c != 9 else 150.0); cls.append(2)
    for r in range(20, 24):
        pix.append((r, 25)); adc.append(60.0); cls.append(3)
    ev = Event(np.array(pix, np.int32), np.array(adc, np.float32)[:, None], (40, 40),
               vertices=np.array([[10.0, 10.0]], np.float32))
    return ev, np.array(cls)


def test_view_features_by_hand():
    ev, cls = _view()
    f = dict(zip(VIEW_FEATURES, view_features(ev, cls)))
    s = mip_scale(ev.features[:, 0])
    assert s == 60.0
    assert [f["n_hip"], f["n_mip"], f["n_shower"], f["n_delta"], f["n_michel"]] == [0, 61, 25, 4, 0]
    assert f["track_length"] == 20.0 and f["track_charge"] == 1.0  # the cosmic is not at the vertex
    # the 25-pixel shower: nearest pixel (30, 9), sqrt(20^2 + 1); its 8 pixels closest to the vertex
    # are row 30 (columns 5-9) and (31, 7..9): two of column 9 (150 ADC), six at 120 ADC
    assert f["shower1_pixels"] == 25 and f["shower1_gap"] == pytest.approx(np.sqrt(401))
    assert f["shower1_start_charge"] == pytest.approx((2 * 150 + 6 * 120) / 8 / 60)
    # the delta (4 pixels) is below the 20-pixel shower size: no second shower, one in all
    assert (f["shower2_pixels"], f["shower2_gap"], f["shower2_start_charge"], f["n_showers"]) == (0, -1, -1, 1)


def test_interaction_features_and_errors():
    ev, cls = _view()
    x = interaction_features([ev, ev, ev], [cls, cls, cls], [0.7, 0.2, 0.1])
    assert x.shape == (len(FEATURE_NAMES),) == (3 * len(VIEW_FEATURES) + 3,)
    assert x[-3:] == pytest.approx(np.log([0.7, 0.2, 0.1]))
    with pytest.raises(ValueError, match="expected the U, V and Y views, got 2 views"):
        interaction_features([ev, ev], [cls, cls], [0.7, 0.2, 0.1])
    no_vertex = Event(ev.coords, ev.features, ev.shape)
    with pytest.raises(ValueError, match=r"the event has no vertex \(Event.vertices\)"):
        view_features(no_vertex, cls)
    with pytest.raises(ValueError, match="one class per pixel, got dim 2, 90 pixels and 3 classes"):
        view_features(ev, cls[:3])


def test_classifier_learns_round_trips_and_refuses_other_files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    x = rng.normal(size=(180, len(FEATURE_NAMES)))
    x[:, 5] += 4.0 * (y == 0)  # a long track from the vertex: nu_mu CC
    x[:, 9] -= 3.0 * (y == 1)  # a low start charge: nu_e CC
    clf = fit(x, y, c=1.0, info={"note": "test"})
    p = clf.probabilities(x)
    assert p.shape == (180, 3) and np.allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == y).mean() > 0.9
    path = clf.save(tmp_path / "topology.json")
    back = TopologyClassifier.load(path)
    assert np.array_equal(back.probabilities(x), p) and back.info == {"note": "test", "c": 1.0, "n": 180}
    with pytest.raises(ValueError, match=f"expected {len(FEATURE_NAMES)} features per row, got 3"):
        back.probabilities(np.zeros((1, 3)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a topology classifier file \\(format 'something else'"):
        TopologyClassifier.load(other)
    with pytest.raises(ValueError, match="every class must occur in the training rows, got classes \\[0, 1\\]"):
        fit(x[:120], y[:120])


def test_script_fits_scores_and_reuses_its_tables(tmp_path, capsys):
    from conftest import load_script

    script = load_script("topology_classifier")
    out = tmp_path / "topology.json"
    args = ["--fit", "24", "--out", str(out), "-n", "6", "--tune-n", "6", "--cache", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "heldout"), "--gains", "2"]
    assert script.main(args) == 0
    m = json.loads((tmp_path / "heldout" / "metrics.json").read_text())
    (row,) = m["gains"]
    assert row["gain"] == 2.0 and 0.0 <= row["topology"]["accuracy"] <= 1.0
    assert set(row["cvn"]["efficiency"]) == {"nu_mu CC", "nu_e CC", "NC"}
    for name in ("cvn", "topology"):
        cm = np.array(m[name]["confusion"])
        assert cm.sum() == 6 and m[name]["accuracy"] == pytest.approx(np.trace(cm) / 6)
    assert TopologyClassifier.load(out).info["fit_interactions"] == 24
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4  # fit, validation, held-out, held-out at gain 2
    # rescoring reads the cached tables: same figures
    assert script.main(["--weights", str(out), "-n", "6", "--tune-n", "6", "--cache", str(tmp_path / "cache"),
                        "--out-dir", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["topology"] == m["topology"]
    text = capsys.readouterr().out
    assert "| CVN alone |" in text and "| segmentation + CVN |" in text


def test_shipped_classifier_was_fitted_on_the_shipped_models():
    from sparseseg import registry
    from sparseseg.tasks.topology import shipped_classifier_path

    clf = TopologyClassifier.load(shipped_classifier_path())
    refit = "refit it: python scripts/topology_classifier.py --fit 3000 --out sparseseg/weights/topology.json"
    assert clf.info["segmentation_sha256"] == registry.get("uresnet2d").sha256, refit
    assert clf.info["cvn_sha256"] == registry.get("cvn").sha256, refit
    assert clf.info["fit_interactions"] == 3000 and clf.info["simulator"] == "0.5"
    assert shipped_classifier_path().with_suffix(".md").exists()


@pytest.mark.parametrize("gains,message", [("0.5,x", "--gains: expected numbers separated by commas, got '0.5,x'"),
                                           ("0,2", "--gains: every gain must be > 0, got '0,2'")])
def test_script_refuses_bad_gains(gains, message, capsys):
    from conftest import load_script

    with pytest.raises(SystemExit) as e:
        load_script("topology_classifier").main(["--gains", gains])
    assert e.value.code == 2 and message in capsys.readouterr().err
