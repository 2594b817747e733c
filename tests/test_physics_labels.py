"""Physics numbers of the simulator (energy loss with explicit knock-ons, recombination at
the drift field) and the label convention (sparseseg.simulate.labels)."""
import numpy as np
import pytest

from sparseseg.classes import DELTA, MIP, SHOWER
from sparseseg.simulate import physics as ph
from sparseseg.simulate import simulate_interaction
from sparseseg.simulate.generator import DELTA_TMIN, Primaries, _run_physics
from sparseseg.simulate.labels import fold_unresolved_deltas


def test_restricted_energy_loss_of_muons():
    for T in (500.0, 1000.0, 4000.0):
        r = float(ph.restricted_dedx(T, ph.M_MU, DELTA_TMIN))
        assert 1.85 <= r <= 2.05, (T, r)
        assert r < float(ph.bethe_dedx(T, ph.M_MU))
    # a cut above the maximum transfer gives the full loss back
    assert float(ph.restricted_dedx(5.0, ph.M_P, 10.0)) == pytest.approx(float(ph.bethe_dedx(5.0, ph.M_P)))


def test_recombination_at_273_V_per_cm():
    assert 0.62 <= float(ph.recombination(2.1)) <= 0.65  # MIP charge survival (~0.63)
    hip_mip = 8.0 * float(ph.recombination(8.0)) / (2.1 * float(ph.recombination(2.1)))
    assert 2.1 <= hip_mip <= 2.5  # a proton near its Bragg peak vs a MIP, in collected charge


def test_muon_track_carries_restricted_loss_and_knock_ons_the_rest():
    rng = np.random.default_rng(4)
    prim = Primaries()
    lo, hi = np.array([-1e4] * 3), np.array([1e4] * 3)
    for _ in range(40):  # 40 muons of 2 GeV, 2 m each
        prim.add(13, [0.0, 0.0, 0.0], ph.random_directions(rng, 1)[0], 2000.0, max_len=200.0)
    deps, truth = _run_physics(rng, prim, lo, hi, "bomb", np.zeros(3))
    track = (deps.label == MIP) & np.isin(deps.cluster, truth.track_cluster)
    length = float(np.sqrt((deps.vec[track] ** 2).sum(1)).sum())
    track_dedx = float(deps.energy[track].sum()) / length
    total_dedx = float(deps.energy.sum()) / length  # + every knock-on's deposits
    assert 1.85 <= track_dedx <= 2.1, track_dedx
    full = float(ph.bethe_dedx(1900.0, ph.M_MU))
    assert total_dedx == pytest.approx(full, rel=0.15), (total_dedx, full)
    assert total_dedx > track_dedx + 0.1  # the knock-ons carry the rest


def _event(pixels):
    coords = np.array([p[:2] for p in pixels], np.int32)
    labels = np.array([p[2] for p in pixels], np.uint8)
    clusters = np.array([p[3] for p in pixels], np.int32)
    return coords, labels, clusters


def test_fold_unresolved_deltas_by_hand():
    track = [(10, c, MIP, 1) for c in range(30)]  # a horizontal muon, id 1, on row 10
    pixels = track + [
        (11, 3, DELTA, 7), (12, 3, DELTA, 7),  # 2 px, (12, 3) is 2 rows from the track: stays delta
        (9, 8, DELTA, 8), (11, 9, DELTA, 8),  # 2 px, both touching: folds into the muon
        (20, 20, DELTA, 9), (20, 21, DELTA, 9),  # 2 px far away: stays
        (11, 14, DELTA, 10), (11, 15, DELTA, 10), (11, 16, DELTA, 10), (11, 17, DELTA, 10), (11, 18, DELTA, 10),  # 5 px: stays
        (9, 25, DELTA, 11),  # 1 px touching, but its parent is another track (id 2): stays
    ]
    coords, labels, clusters = _event(pixels)
    lab, clu = fold_unresolved_deltas(coords, (40, 40), labels, clusters, {7: 1, 8: 1, 9: 1, 10: 1, 11: 2})
    n = len(track)
    assert lab[n:].tolist() == [DELTA, DELTA, MIP, MIP, DELTA, DELTA] + [DELTA] * 5 + [DELTA]
    assert clu[n + 2:n + 4].tolist() == [1, 1]
    assert (lab[:n] == MIP).all() and (clu[:n] == 1).all()
    assert labels[n + 2] == DELTA  # inputs untouched


def test_visible_rule_changes_labels_only():
    a = simulate_interaction("crop512", 3, 2, label_rule="legacy")
    b = simulate_interaction("crop512", 3, 2, label_rule="visible")
    da = db = 0
    for ea, eb in zip(a, b):
        assert np.array_equal(ea.coords, eb.coords) and np.array_equal(ea.features, eb.features)
        changed = ea.labels != eb.labels
        # deltas become MIP (folded) or shower (energetic knock-ons), nothing else changes
        assert set(ea.labels[changed].tolist()) <= {DELTA}
        assert set(eb.labels[changed].tolist()) <= {MIP, SHOWER}
        da += int((ea.labels == DELTA).sum())
        db += int((eb.labels == DELTA).sum())
        assert eb.meta["label_rule"] == "visible"
    assert db < 0.8 * da
    with pytest.raises(ValueError, match="label_rule 'strict' unknown; expected one of visible, legacy"):
        simulate_interaction("crop512", 3, 2, label_rule="strict")
