"""sparseseg.tasks.topology: the features of a hand-made view, and the classifier file."""
import json

import numpy as np
import pytest

from sparseseg import Event
from sparseseg.calibration import mip_scale
from sparseseg.tasks.topology import (FEATURE_NAMES, SUMMARY_FEATURES, TREE_DEFAULTS, VIEW_FEATURES,
                                      TopologyClassifier, cross_validated, fit, interaction_features, summary_features,
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


def test_summary_features_by_hand():
    ev, cls = _view()
    f = view_features(ev, cls)
    no_shower = f.copy()
    no_shower[7:14] = [0, -1, -1, 0, -1, -1, 0]  # a view that sees no shower
    no_shower[2] = 0
    longer = f.copy()
    longer[5] = 50.0
    x = np.concatenate([f, no_shower, longer, np.log([0.7, 0.2, 0.1])])
    s = dict(zip(SUMMARY_FEATURES, summary_features(x[None])[0]))
    assert (s["track_length_max"], s["track_length_median"]) == (50.0, 20.0)
    # the shower's gap and start charge over the two views that see it
    assert s["shower1_gap_min"] == s["shower1_gap_median"] == pytest.approx(np.sqrt(401))
    assert s["shower1_start_charge_min"] == pytest.approx((2 * 150 + 6 * 120) / 8 / 60)
    assert (s["shower2_pixels_max"], s["shower2_gap_median"], s["n_showers_max"], s["n_showers_median"]) == (0, -1, 1, 1)
    # fractions of the 90 pixels (25 shower + 4 delta shower-like, 61 MIP), the middle view 65 pixels, 4 shower-like
    assert s["shower_fraction"] == pytest.approx((29 / 90 * 2 + 4 / 65) / 3)
    assert s["track_fraction"] == pytest.approx((61 / 90 * 2 + 61 / 65) / 3)
    assert s["hip_fraction"] == 0.0 and s["shower1_fraction"] == pytest.approx(25 / 90 * 2 / 3)
    nothing = np.zeros(len(FEATURE_NAMES))
    nothing[[8, 9, 11, 12, 22, 23, 25, 26, 36, 37, 39, 40]] = -1  # three empty views
    assert summary_features(nothing)[0].tolist() == [0, 0, -1, -1, -1, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0]


def test_smeared_vertices_share_the_drift_shift():
    from sparseseg.tasks.topology import smear_vertices

    ev, _ = _view()
    views = [ev, ev, ev]
    moved = smear_vertices(views, 4.0, np.random.default_rng(0))
    rows = [m.vertices[0, 0] for m in moved]
    cols = [m.vertices[0, 1] for m in moved]
    assert rows[0] == rows[1] == rows[2] != 10.0  # one drift-time shift for the three views
    assert len(set(cols)) == 3  # a wire shift per view
    assert ev.vertices[0].tolist() == [10.0, 10.0] and moved[0].coords is ev.coords  # the input is untouched
    again = smear_vertices(views, 4.0, np.random.default_rng(0))
    assert [m.vertices.tolist() for m in again] == [m.vertices.tolist() for m in moved]


def _toy_rows(n_per_class=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n_per_class)
    x = rng.normal(size=(3 * n_per_class, len(FEATURE_NAMES)))
    x[:, 5] += 4.0 * (y == 0)  # a long track from the vertex: nu_mu CC
    x[:, 9] -= 3.0 * (y == 1)  # a low start charge: nu_e CC
    return x, y


@pytest.mark.parametrize("model", ["trees", "logistic"])
def test_classifier_learns_round_trips_and_refuses_other_files(tmp_path, model):
    x, y = _toy_rows()
    clf = fit(x, y, model, c=1.0, info={"note": "test"})
    p = clf.probabilities(x)
    assert p.shape == (180, 3) and np.allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == y).mean() > 0.9
    path = clf.save(tmp_path / "topology.json")
    back = TopologyClassifier.load(path)
    assert np.array_equal(back.probabilities(x), p)
    hyper = {"c": 1.0} if model == "logistic" else dict(TREE_DEFAULTS, seed=0)
    assert back.info == {"note": "test", "model": model, "n": 180, **hyper}
    with pytest.raises(ValueError, match=f"expected {len(FEATURE_NAMES)} features per row, got 3"):
        back.probabilities(np.zeros((1, 3)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a topology classifier file \\(format 'something else'"):
        TopologyClassifier.load(other)
    d = json.loads(path.read_text())
    other.write_text(json.dumps(dict(d, model="forest")))
    with pytest.raises(ValueError, match="unknown model 'forest', expected one of \\('trees', 'logistic'\\)"):
        TopologyClassifier.load(other)
    with pytest.raises(ValueError, match="every class must occur in the training rows, got classes \\[0, 1\\]"):
        fit(x[:120], y[:120], model)


def test_stored_trees_are_the_fitted_ensemble():
    """The node arrays in the file reproduce scikit-learn's own probabilities."""
    from sklearn.ensemble import GradientBoostingClassifier

    from sparseseg.tasks.topology import _inputs

    x, y = _toy_rows(40, seed=1)
    clf = fit(x, y, "trees", seed=3)
    xt, _ = _toy_rows(20, seed=2)
    z = (_inputs(x) - clf.mean) / clf.std
    ref = GradientBoostingClassifier(random_state=3, **TREE_DEFAULTS).fit(z, y)
    expected = ref.predict_proba((_inputs(xt) - clf.mean) / clf.std)
    assert np.abs(clf.probabilities(xt) - expected).max() < 1e-12
    assert len(clf.params["trees"]) == TREE_DEFAULTS["n_estimators"] and len(clf.params["trees"][0]) == 3


def test_cross_validated_probabilities_come_from_other_folds():
    x, y = _toy_rows(10)
    p = cross_validated(x, y, "logistic", c=1.0)
    assert p.shape == (30, 3) and np.allclose(p.sum(1), 1.0)
    assert not np.allclose(p, fit(x, y, "logistic", c=1.0).probabilities(x))  # not the full fit's
    with pytest.raises(ValueError, match=r"every class needs at least 2 rows, got \[10, 1, 10\]"):
        cross_validated(np.vstack([x[:10], x[10:11], x[20:]]), np.r_[y[:10], y[10:11], y[20:]], "logistic")


def test_script_fits_scores_and_reuses_its_tables(tmp_path, capsys):
    from conftest import load_script

    script = load_script("topology_classifier")
    out = tmp_path / "topology.json"
    args = ["--fit", "20", "--fit-seed", "21,22", "--fit-vertex-smear", "0,3", "--model", "logistic", "--out", str(out), "-n", "6", "--tune-n", "6", "--cache", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "heldout"), "--gains", "2", "--vertex-smear", "3"]
    assert script.main(args) == 0
    m = json.loads((tmp_path / "heldout" / "metrics.json").read_text())
    (row,) = m["gains"]
    assert row["gain"] == 2.0 and 0.0 <= row["topology"]["accuracy"] <= 1.0
    assert set(row["cvn"]["efficiency"]) == {"nu_mu CC", "nu_e CC", "NC"}
    (smeared,) = m["vertex_smear"]
    assert smeared["vertex_sigma"] == 3.0
    assert smeared["cvn"]["accuracy"] == pytest.approx(m["cvn"]["accuracy"])  # the CVN's views do not move with it
    for name in ("cvn", "topology"):
        cm = np.array(m[name]["confusion"])
        assert cm.sum() == 6 and m[name]["accuracy"] == pytest.approx(np.trace(cm) / 6)
    info = TopologyClassifier.load(out).info
    assert info["fit_interactions"] == 40 and info["fit_seeds"] == [21, 22] and info["model"] == "logistic"
    assert info["fit_vertex_sigma"] == [0.0, 3.0]
    assert m["topology"]["nue_selection"]["chosen_on"] == ("validation" if info["nue_cut"] is None else "cross-validation")
    assert m["cvn"]["nue_selection"]["chosen_on"] == "validation"
    # fit seed 21; fit seed 22 smeared by 3; validation; held-out; held-out at gain 2; held-out smeared by 3
    names = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "cache").glob("*.npz"))
    assert names == ["crop512-seed1001-n6", "crop512-seed21-n20", "crop512-seed22-n20-vtx3", "crop512-seed31337-n6",
                     "crop512-seed31337-n6-gain2", "crop512-seed31337-n6-vtx3"]
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
    refit = ("refit it: python scripts/topology_classifier.py --fit 3000 --fit-seed 21,22 --fit-vertex-smear 0,4 "
             "--out sparseseg/weights/topology.json")
    assert clf.info["segmentation_sha256"] == registry.get("uresnet2d").sha256, refit
    assert clf.info["cvn_sha256"] == registry.get("cvn").sha256, refit
    assert clf.info["fit_interactions"] == 6000 and clf.info["fit_seeds"] == [21, 22] and clf.info["simulator"] == "0.5"
    assert clf.info["fit_vertex_sigma"] == [0.0, 4.0]
    assert clf.model == "trees" and 0.3 < clf.info["nue_cut"] < 0.9
    assert shipped_classifier_path().with_suffix(".md").exists()


@pytest.mark.parametrize("args,message", [
    (["--gains", "0.5,x"], "--gains: expected numbers separated by commas, got '0.5,x'"),
    (["--gains", "0,2"], "--gains: every value must be > 0, got '0,2'"),
    (["--vertex-smear", "-1"], "--vertex-smear: every value must be > 0, got '-1'"),
    (["--fit-seed", "21,22", "--fit-vertex-smear", "0"], "--fit-vertex-smear: expected one sigma >= 0 per --fit-seed (2), got '0'"),
    (["--fit-vertex-smear", "x"], "--fit-vertex-smear: expected numbers separated by commas, got 'x'"),
    (["--fit-seed", "21,a"], "--fit-seed: expected integers separated by commas, got '21,a'"),
    (["--fit-seed", "21,1001"], "--fit-seed: the seeds must differ from each other, from the validation seed 1001"),
    (["--fit-seed", "21,21"], "--fit-seed: the seeds must differ from each other"),
])
def test_script_refuses_bad_arguments(args, message, capsys):
    from conftest import load_script

    with pytest.raises(SystemExit) as e:
        load_script("topology_classifier").main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_crop_around_vertex_by_hand():
    from sparseseg.tasks.topology import crop_around_vertex

    coords = np.array([[100, 1000], [400, 1300], [99, 1000], [700, 3000], [1000, 3400]], np.int32)
    ev = Event(coords, np.arange(5, dtype=np.float32)[:, None] + 10, (1008, 3456),
               vertices=np.array([[300.0, 1200.0], [5.0, 5.0]], np.float32))
    c = crop_around_vertex(ev)  # window rows 44-555, wires 944-1455
    assert c.shape == (512, 512) and c.coords.tolist() == [[56, 56], [356, 356], [55, 56]]
    assert c.features[:, 0].tolist() == [10, 11, 12] and c.vertices.tolist() == [[256, 256], [-39, -939]]
    edge = Event(coords, ev.features, (1008, 3456), vertices=np.array([[1000.0, 3450.0]], np.float32))
    e = crop_around_vertex(edge)  # moved inside the image: rows 496-1007, wires 2944-3455
    assert e.coords.tolist() == [[204, 56], [504, 456]] and e.vertices.tolist() == [[504, 506]]
    small, _ = _view()
    with pytest.raises(ValueError, match="the view is 40 x 40, smaller than the 512 x 512 the classifier reads"):
        crop_around_vertex(small)
    with pytest.raises(ValueError, match=r"has no vertex \(Event.vertices\)"):
        crop_around_vertex(Event(coords, ev.features, (1008, 3456)))


def test_classify_file_matches_the_fitting_features_and_names_bad_files(tmp_path):
    """The rows of `sparseseg classify` are the classifier's probabilities of the features the
    fitting tables hold for the same interactions."""
    import torch

    from sparseseg.checkpoint import load_model
    from sparseseg.infer import Predictor
    from sparseseg.io import write_events
    from sparseseg.registry import get
    from sparseseg.simulate import simulate_full
    from sparseseg.tasks.cvn import neutrino_indices
    from sparseseg.tasks.topology import classify_file, interaction_row, shipped_classifier_path

    torch.set_num_threads(1)
    clf = TopologyClassifier.load(shipped_classifier_path())
    predictor = Predictor(weights=str(get("uresnet2d").path))
    cvn = load_model(get("cvn").path)[0].eval()
    views = [simulate_full("crop512", 31337, i)[0] for i in neutrino_indices(2, 31337)]
    write_events(tmp_path / "c.h5", [v for vs in views for v in vs])
    rows = classify_file(tmp_path / "c.h5", clf, predictor, cvn, progress=False)
    expected = clf.probabilities(np.stack([interaction_row(vs, predictor, cvn) for vs in views]))
    assert [r["event_id"] for r in rows] == [vs[0].meta["event_id"] for vs in views]
    got = np.array([[r["p_nu_mu_CC"], r["p_nu_e_CC"], r["p_NC"]] for r in rows])
    assert np.allclose(got, expected, atol=1e-12)
    assert [r["class"] for r in rows] == [clf.classes[k] for k in expected.argmax(1)]
    assert [r["nue_selected"] for r in rows] == (expected[:, 1] >= clf.info["nue_cut"]).tolist()
    write_events(tmp_path / "two.h5", views[0][:2])
    with pytest.raises(ValueError, match=f"event id {views[0][0].meta['event_id']} has planes U x1, V x1; the "
                                         "classifier needs one view of each of U, V and Y"):
        classify_file(tmp_path / "two.h5", clf, predictor, cvn, progress=False)
    write_events(tmp_path / "novtx.h5", [Event(v.coords, v.features, v.shape, meta=v.meta) for v in views[0]])
    with pytest.raises(ValueError, match="plane U, has no vertex"):
        classify_file(tmp_path / "novtx.h5", clf, predictor, cvn, progress=False)


def test_classify_command_writes_csv_and_refuses_3d_files(tmp_path, capsys):
    import csv

    from sparseseg.cli import main
    from sparseseg.io import write_events
    from sparseseg.simulate import simulate_full

    write_events(tmp_path / "3d.h5", simulate_full("pilarnet", 0, 0)[0])
    assert main(["classify", str(tmp_path / "3d.h5"), "-o", str(tmp_path / "x.csv"), "--threads", "1", "-q"]) == 2
    assert "the event classifier reads 2D wire-plane views, the file holds 3D events" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    write_events(tmp_path / "u.h5", simulate_full("uboone", 31337, 0)[0])  # full planes: cropped around the vertex
    assert main(["classify", str(tmp_path / "u.h5"), "-o", str(tmp_path / "u.csv"), "--threads", "1", "-q"]) == 0
    (row,) = list(csv.DictReader((tmp_path / "u.csv").open()))
    assert row["event_id"] == "0" and row["class"] in ("nu_mu CC", "nu_e CC", "NC")
    assert sum(float(row[k]) for k in ("p_nu_mu_CC", "p_nu_e_CC", "p_NC")) == pytest.approx(1.0)
    assert "u.h5: 1 interactions -> " in capsys.readouterr().out
