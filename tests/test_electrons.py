"""Electron stepping and the EM cascade: energy conservation, Michel endpoint, range straggling."""
from __future__ import annotations

import numpy as np
import pytest

from sparseseg.simulate import physics as ph
from sparseseg.simulate.deposits import Deposits
from sparseseg.simulate.showers import cascade
from sparseseg.simulate.tracks import electron_energy_at_range, electron_range, propagate_electrons, step_electrons

BIG_LO = np.full(3, -1.0e4)  # cm: nothing escapes
BIG_HI = np.full(3, 1.0e4)


def _beam(n):
    return np.zeros((n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1))


def _cascade(seed, energies, lo=BIG_LO, hi=BIG_HI, dirs=None):
    n = energies.size
    start, d = _beam(n)
    if dirs is not None:
        d = dirs
    res = cascade(np.random.default_rng(seed), start, d, energies, np.zeros(n, bool), np.zeros(n, np.uint8),
                  np.arange(n, dtype=np.int32), np.zeros(n), lo, hi)
    per = np.bincount(res.deposits.cluster, weights=res.deposits.energy, minlength=n)
    return res, per


def test_range_inverse():
    E = np.logspace(-3, 4, 500)
    np.testing.assert_allclose(electron_energy_at_range(electron_range(E)), E, rtol=1e-6)
    # continuous-loss range: ~0.31 cm at 1 MeV, ~2 cm at 5 MeV (a ~ 2.2 MeV/cm)
    assert 0.25 < electron_range(np.array([1.0]))[0] < 0.4
    assert 1.8 < electron_range(np.array([5.0]))[0] < 2.3


@pytest.mark.parametrize("E0", [1.0, 5.0, 30.0, 300.0])
def test_step_deposits_plus_photons_equal_initial_energy(E0):
    n = 200 if E0 < 100 else 40
    start, d = _beam(n)
    steps, em = step_electrons(np.random.default_rng(3), start, d, np.full(n, E0), BIG_LO, BIG_HI)
    assert steps.contained.all() and (steps.count > 0).all()
    dep = np.bincount(steps.owner, weights=steps.dedx * steps.length, minlength=n)
    rad = np.bincount(steps.owner[em.step], weights=em.energy, minlength=n)
    np.testing.assert_allclose(dep + rad, E0, rtol=1e-9)
    assert (em.energy >= 1.0).all() and (em.energy <= em.parent_energy).all()
    # the kinetic energy at the step middles falls along each electron
    de = np.diff(steps.energy)
    same = steps.owner[1:] == steps.owner[:-1]
    assert (de[same] <= 1e-12).all()
    assert (steps.energy > 0).all() and (steps.energy < E0).all()
    # radiated fraction: small well below the critical energy (~30 MeV), dominant far above it
    frac = rad.sum() / (n * E0)
    lo_f, hi_f = {1.0: (0.0, 0.0), 5.0: (0.0, 0.12), 30.0: (0.15, 0.5), 300.0: (0.6, 0.95)}[E0]
    assert lo_f <= frac <= hi_f, frac


def test_escaping_electrons_lose_energy_not_gain():
    n = 200
    start, d = _beam(n)
    lo, hi = np.array([-5.0, -5.0, -1.0]), np.array([5.0, 5.0, 4.0])
    steps, em = step_electrons(np.random.default_rng(4), start, d, np.full(n, 30.0), lo, hi)
    dep = np.bincount(steps.owner, weights=steps.dedx * steps.length, minlength=n)
    rad = np.bincount(steps.owner[em.step], weights=em.energy, minlength=n)
    assert (~steps.contained).mean() > 0.5
    assert (dep + rad <= 30.0 + 1e-9).all()
    # photons start inside the box
    p = steps.start[em.step] + steps.vec[em.step]
    assert ((p >= lo) & (p <= hi)).all()


@pytest.mark.parametrize("E0,n", [(1.0, 2000), (5.0, 800), (30.0, 200), (300.0, 30)])
def test_cascade_energy_conservation(E0, n):
    res, per = _cascade(5, np.full(n, E0))
    ratio = per.sum() / (n * E0)
    # nothing leaves the volume; untracked are only pair rest masses, photons < 0.25 MeV, e < 50 keV
    assert 0.9 <= ratio <= 1.0 + 1e-9, ratio
    assert (per <= E0 * (1 + 1e-9)).all()  # no electron deposits more than it had
    if E0 <= 5.0:
        assert ratio > 0.99  # no pair production below 8 MeV
    assert (res.deposits.charge < res.deposits.energy).all()  # recombination


def test_cascade_in_small_box_deposits_less():
    n = 100
    big = _cascade(6, np.full(n, 100.0))[1].sum()
    small = _cascade(6, np.full(n, 100.0), np.array([-20.0, -20.0, -1.0]), np.array([20.0, 20.0, 10.0]))[1].sum()
    assert small < 0.85 * big


def test_michel_electrons_below_endpoint():
    rng = np.random.default_rng(7)
    n = 3000
    T = np.maximum(ph.sample_michel_energy(rng, n) - ph.M_E, 0.5)
    _, per = _cascade(8, T, dirs=ph.random_directions(rng, n))
    assert np.mean(per > ph.MICHEL_EMAX) < 0.01
    assert 0.9 <= per.sum() / T.sum() <= 1.0 + 1e-9
    # the deposited-energy spectrum still reaches close to the endpoint
    assert np.quantile(per, 0.95) > 0.8 * ph.MICHEL_EMAX


def test_path_length_varies_at_30_mev():
    n = 1000
    start, d = _beam(n)
    steps = propagate_electrons(np.random.default_rng(9), start, d, np.full(n, 30.0), BIG_LO, BIG_HI)
    L = np.bincount(steps.owner, weights=steps.length, minlength=n)
    assert L.std() / L.mean() > 0.10
    # bounded by the continuous-loss range (no radiation) and of order X0 / 1.5
    assert L.max() <= electron_range(np.array([30.0]))[0] + 1e-4 * steps.count.max()  # 1e-4: length floor
    assert 6.0 < L.mean() < 12.0
    assert steps.length.max() < 0.45  # about the 3 mm step


def test_steps_layout_compatible_with_deposits():
    n = 50
    start, d = _beam(n)
    rng = np.random.default_rng(10)
    steps = propagate_electrons(rng, start, d, rng.uniform(0.1, 50.0, n), BIG_LO, BIG_HI)
    assert steps.first.tolist() == np.concatenate([[0], np.cumsum(steps.count)[:-1]]).tolist()
    np.testing.assert_allclose(np.linalg.norm(steps.vec, axis=1), steps.length)
    last = steps.first + steps.count - 1
    np.testing.assert_allclose(steps.end, steps.start[last] + steps.vec[last])
    # consecutive steps of one electron join up
    same = steps.owner[1:] == steps.owner[:-1]
    np.testing.assert_allclose((steps.start[:-1] + steps.vec[:-1])[same], steps.start[1:][same], atol=1e-9)
    dep = Deposits.from_steps(rng, steps, np.zeros(n, np.uint8), np.arange(n, dtype=np.int32), np.zeros(n), 0.15)
    assert len(dep) == steps.length.size and np.isfinite(dep.energy).all()


def test_cascade_reproducible():
    E = np.array([3.0, 30.0, 200.0])
    a, _ = _cascade(11, E)
    b, _ = _cascade(11, E)
    c, _ = _cascade(12, E)
    assert a.deposits.energy.tobytes() == b.deposits.energy.tobytes()
    assert a.deposits.start.tobytes() == b.deposits.start.tobytes()
    assert len(a.deposits) != len(c.deposits) or not np.array_equal(a.deposits.energy, c.deposits.energy)
