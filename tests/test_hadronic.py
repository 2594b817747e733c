"""Hadronic interactions of pions and protons (sparseseg.simulate.hadronic): the rate follows
the nuclear interaction length of argon, secondaries conserve energy, and with the option
off the simulator's stream is unchanged."""
import numpy as np
import pytest

from sparseseg.classes import HIP, MICHEL, MIP
from sparseseg.simulate import hadronic, physics as ph, simulate_full
from sparseseg.simulate.generator import Primaries, _run_physics
from sparseseg.simulate.geometry import TPC_HI, TPC_LO


def reach(T, mass):
    return float(ph.csda_range(np.array([T]), mass)[0] - ph.csda_range(np.array([hadronic.T_MIN]), mass)[0])


def test_interaction_length_of_liquid_argon():
    assert hadronic.INTERACTION_LENGTH == pytest.approx(119.7 / 1.396, abs=0.05)  # PDG lambda_I / density


def test_interaction_distance_follows_the_exponential_law_within_the_range():
    rng = np.random.default_rng(0)
    n = 20000
    T = np.full(n, 300.0)
    d = hadronic.interaction_distance(rng, np.full(n, 2212), T, np.full(n, ph.M_P), np.ones(n, bool))
    R = reach(300.0, ph.M_P)
    p = 1 - np.exp(-R / hadronic.INTERACTION_LENGTH)  # ~0.55 for a 300 MeV proton (R ~ 70 cm)
    hit = np.isfinite(d)
    assert abs(hit.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    lam = hadronic.INTERACTION_LENGTH  # mean of an exponential truncated at R
    mean = lam - R * np.exp(-R / lam) / (1 - np.exp(-R / lam))
    assert d[hit].mean() == pytest.approx(mean, rel=0.02) and d[hit].max() < R
    # no draws for muons, cosmics or particles below T_MIN: the stream is untouched
    rng2 = np.random.default_rng(5)
    none = hadronic.interaction_distance(rng2, np.array([13, 2212, 211]), np.array([500.0, 500.0, 15.0]),
                                         np.array([ph.M_MU, ph.M_P, ph.M_PI]), np.array([True, False, True]))
    assert np.isinf(none).all() and rng2.random() == np.random.default_rng(5).random()


def test_secondaries_conserve_energy_and_pion_channels_have_their_fractions():
    rng = np.random.default_rng(1)
    d = np.array([0.0, 0.0, 1.0])
    for _ in range(300):
        out = hadronic.products(rng, 2212, 200.0, d)
        assert all(pdg == 2212 and T >= 1.0 for pdg, _, T in out)
        assert sum(T for _, _, T in out) <= 0.7 * 200.0 + 1e-9
        assert all(abs(np.linalg.norm(v) - 1) < 1e-9 for _, v, _ in out)
    n, with_pion, with_photons = 3000, 0, 0
    for _ in range(n):
        out = hadronic.products(rng, 211, 300.0, d)
        pions = [o for o in out if o[0] == 211]
        photons = [o for o in out if o[0] == 22]
        with_pion += bool(pions)
        with_photons += bool(photons)
        kinetic = sum(T for pdg, _, T in out if pdg != 22) + (sum(E for _, _, E in photons) - ph.M_PI0 if photons else 0.0)
        assert kinetic <= 300.0 + ph.M_PI + 1e-6  # absorption may release the pion's mass
    assert with_pion / n == pytest.approx(hadronic.PION_SCATTER, abs=0.03)  # a few pions fall below 1 MeV
    assert with_photons / n == pytest.approx(1 - hadronic.PION_SCATTER - hadronic.PION_ABSORB, abs=0.02)
    # the two photons of a pi0 carry its energy
    g = hadronic.pi0_photons(rng, 200.0, d)
    assert sum(E for _, _, E in g) == pytest.approx(np.hypot(200.0, ph.M_PI0))


@pytest.mark.parametrize("pdg,mass,T", [(2212, ph.M_P, 300.0), (211, ph.M_PI, 400.0)])
def test_tracks_in_the_simulation_interact_at_the_rate(pdg, mass, T):
    """Primary pions or protons started in the middle of the TPC: the fraction that stop at
    the end of their range (contained) is exp(-reach / lambda); the rest end in secondaries."""
    n = 600
    prim = Primaries()
    centre = (np.asarray(TPC_LO) + np.asarray(TPC_HI)) / 2
    for _ in range(n):
        prim.add(pdg, centre, [0.0, 0.0, 1.0], T)
    rng = np.random.default_rng(7)
    _, truth = _run_physics(rng, prim, TPC_LO, TPC_HI, "test", centre, hadronic_on=True)
    primaries = truth.track_cluster < n
    survive = np.exp(-reach(T, mass) / hadronic.INTERACTION_LENGTH)
    got = truth.track_contained[primaries].mean()
    assert abs(got - survive) < 4 * np.sqrt(survive * (1 - survive) / n)
    assert (~primaries).sum() > 0.5 * n * (1 - survive)  # the interactions made secondary tracks
    # every interaction point is a vertex (interaction vertex first)
    assert len(truth.vertices3d) > 1 + 0.9 * n * (1 - survive) / 2


def test_switching_off_adds_no_draw_and_on_makes_secondaries():
    """Off: no hadronic draw at all, so the physics stream is that of simulator 0.4 (pinned in
    test_regression); on (the default): secondaries with their labels."""
    from sparseseg.simulate.generator import _run_physics as run

    prim = Primaries()
    prim.add(2212, [100.0, 0.0, 500.0], [0.0, 0.0, 1.0], 300.0)
    rng = np.random.default_rng(3)
    run(rng, prim, TPC_LO, TPC_HI, "test", np.array([100.0, 0.0, 500.0]), hadronic_on=False)
    rng_ref = np.random.default_rng(3)
    prim_ref = Primaries()
    prim_ref.add(2212, [100.0, 0.0, 500.0], [0.0, 0.0, 1.0], 300.0)
    run(rng_ref, prim_ref, TPC_LO, TPC_HI, "test", np.array([100.0, 0.0, 500.0]))  # the default of _run_physics: off
    assert rng.random() == rng_ref.random() and len(prim) == 1
    a, _ = simulate_full("crop512", 3, 1)
    b, _ = simulate_full("crop512", 3, 1, hadronic=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.coords, y.coords)
        np.testing.assert_array_equal(x.features, y.features)
    assert a[0].meta["hadronic"] is True
    # an interaction with hadrons: find one whose tracks interact
    for i in range(40):
        ev_on, t_on = simulate_full("crop512", 3, i)
        ev_off, t_off = simulate_full("crop512", 3, i, hadronic=False)
        if len(t_on.track_pdg) > len(t_off.track_pdg):
            break
    else:
        pytest.fail("no interacting hadron in 40 interactions")
    assert ev_off[0].meta["hadronic"] is False
    new = np.setdiff1d(t_on.track_cluster, t_off.track_cluster)
    labels = np.concatenate([e.labels[np.isin(e.clusters, new)] for e in ev_on])
    kinds = t_on.track_pdg[np.isin(t_on.track_cluster, new)]
    expected = {HIP if k == 2212 else MIP for k in kinds}
    assert labels.size and set(np.unique(labels).tolist()) <= expected | {MICHEL}  # Michels of stopped pions


def test_config_cli_and_training_stream_pass_the_option(tmp_path):
    from sparseseg.cli import main
    from sparseseg.config import resolve
    from sparseseg.io import EventFile
    from sparseseg.tasks.segment import ImageSource

    assert resolve({})["data"]["hadronic"] is True
    with pytest.raises(ValueError, match=r"config: data.hadronic must be true or false \(bool\), got 'yes' \(str\)"):
        resolve({"data": {"hadronic": "yes"}})
    out = tmp_path / "h.h5"
    assert main(["simulate", "--preset", "crop512", "-n", "2", "--seed", "3", "--no-hadronic", "-q", "-o", str(out)]) == 0
    on = [simulate_full("crop512", 3, i, hadronic=False)[0] for i in range(2)]
    with EventFile(out) as f:
        assert bool(f.attrs["hadronic"]) is False
        got = list(f)
    assert len(got) == 6
    for a, b in zip(got, [e for evs in on for e in evs]):
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.labels, b.labels)
    cfg = resolve({"data": {"simulate": "crop512", "seed": 3, "hadronic": False}})["data"]
    np.testing.assert_array_equal(ImageSource(cfg)._interaction(1)[0].coords, on[1][0].coords)
    assert len(on[1][0]) != len(simulate_full("crop512", 3, 1)[0][0])  # interaction 1 holds an interacting hadron
    cfg_on = resolve({"data": {"simulate": "crop512", "seed": 3}})["data"]
    np.testing.assert_array_equal(ImageSource(cfg_on)._interaction(1)[0].coords, simulate_full("crop512", 3, 1)[0][0].coords)
