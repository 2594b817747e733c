"""Batched stepping of charged tracks (muons, pions, protons) and of electrons, as flat arrays.

Every function here handles many particles at once: per-step quantities live in one flat
array with a ``owner`` index, and per-particle running sums are segmented cumulative sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import physics as ph
from .geometry import inside_box


@dataclass
class Steps:
    """Flat per-step arrays of a batch of particles (M steps in all)."""

    start: np.ndarray  # (M, 3) step start point
    vec: np.ndarray  # (M, 3) step displacement
    length: np.ndarray  # (M,)
    dedx: np.ndarray  # (M,) mean stopping power over the step, MeV/cm
    energy: np.ndarray  # (M,) kinetic energy at the step middle, MeV
    owner: np.ndarray  # (M,) particle index
    first: np.ndarray  # (P,) index of each particle's first step in the flat arrays
    count: np.ndarray  # (P,) steps kept per particle
    end: np.ndarray  # (P, 3) last point of each particle
    contained: np.ndarray  # (P,) True where the particle stopped inside the volume


def segment_layout(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For per-particle step counts n (P,): (owner (M,), first (P,), position-in-particle (M,))."""
    n = np.asarray(n, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]) if n.size else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(n.size), n)
    j = np.arange(owner.size) - first[owner]
    return owner, first, j


def segmented_cumsum(x: np.ndarray, owner: np.ndarray, first: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """Cumulative sum of flat ``x`` restarting at each particle's first step."""
    if x.shape[0] == 0:
        return x.copy()
    c = np.cumsum(x, axis=0)
    base = c[first] - x[first]  # sum of everything before each particle
    out = c - base[owner]
    if exclusive:
        out = out - x
    return out


def walk(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    lengths: np.ndarray,
    theta0: np.ndarray,
    owner: np.ndarray,
    first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-scattering random walk.

    Each step j of particle i deflects by Gaussian projected angles of RMS ``theta0[j]``; the
    accumulated deflection (a, b) in the plane normal to the initial direction is mapped onto
    the sphere with the exponential map, so large total angles (even backwards) are possible.
    Returns the step start points and step vectors (M, 3).
    """
    m = lengths.shape[0]
    kick = rng.standard_normal((m, 2)) * theta0[:, None]
    ab = segmented_cumsum(kick, owner, first)
    e1, e2 = ph.orthonormal_basis(direction)
    r = np.sqrt((ab * ab).sum(axis=1))
    sinc = np.where(r > 1e-9, np.sin(r) / np.maximum(r, 1e-9), 1.0)
    o = owner
    d = np.cos(r)[:, None] * direction[o] + (sinc * ab[:, 0])[:, None] * e1[o] + (sinc * ab[:, 1])[:, None] * e2[o]
    vec = d * lengths[:, None]
    pos = start[o] + segmented_cumsum(vec, owner, first, exclusive=True)
    return pos, vec


def _truncate_outside(pos, vec, owner, first, n, lo, hi):
    """Keep each particle's steps up to (and including) the first one that leaves the box."""
    ends = pos + vec
    out = ~inside_box(ends, lo, hi)
    nout_before = segmented_cumsum(out.astype(np.int64), owner, first, exclusive=True)
    keep = nout_before == 0
    exited = np.zeros(n.size, dtype=bool)
    if out.any():
        exited[owner[out]] = True
    return keep, exited


def propagate_tracks(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    T0: np.ndarray,
    mass: np.ndarray,
    step: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    max_length: np.ndarray | None = None,
) -> Steps:
    """Step heavy charged particles (mu, pi, p) through LAr until they stop or leave the box.

    The length travelled is the CSDA range of T0 (or ``max_length`` if shorter); the energy
    at each step follows the range-energy relation (residual range), dE/dx follows the
    Bragg curve, and directions follow Highland multiple scattering.
    """
    P = start.shape[0]
    if P == 0:
        return _empty_steps()
    mass = np.broadcast_to(np.asarray(mass, dtype=np.float64), (P,))
    step = np.broadcast_to(np.asarray(step, dtype=np.float64), (P,))
    R0 = np.empty(P)
    for mval in np.unique(mass):
        sel = mass == mval
        R0[sel] = ph.csda_range(T0[sel], float(mval))
    L = R0 if max_length is None else np.minimum(R0, max_length)
    L = np.maximum(L, 1e-3)
    n = np.maximum(np.ceil(L / step - 1e-9).astype(np.int64), 1)
    owner, first, j = segment_layout(n)
    lens = np.minimum(step[owner], L[owner] - j * step[owner])
    lens = np.maximum(lens, 1e-4)
    s_mid = j * step[owner] + 0.5 * lens
    resid = np.maximum(R0[owner] - s_mid, 1e-4)
    dedx = np.empty(owner.size)
    energy = np.empty(owner.size)
    mo = mass[owner]
    for mval in np.unique(mass):
        sel = mo == mval
        dedx[sel] = ph.dedx_at_range(resid[sel], float(mval))
        energy[sel] = ph.energy_at_range(resid[sel], float(mval))
    theta0 = np.minimum(ph.highland(ph.pbeta(energy, mo), lens), 0.8)
    pos, vec = walk(rng, start, direction, lens, theta0, owner, first)
    keep, exited = _truncate_outside(pos, vec, owner, first, n, lo, hi)
    stopped_by_range = R0 <= L + 1e-9
    contained = stopped_by_range & ~exited
    return _finish(pos, vec, lens, dedx, energy, owner, keep, P, contained)


def _finish(pos, vec, lens, dedx, energy, owner, keep, P, contained) -> Steps:
    pos, vec, lens, dedx, energy, owner = pos[keep], vec[keep], lens[keep], dedx[keep], energy[keep], owner[keep]
    count = np.bincount(owner, minlength=P)
    first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    last = first + count - 1
    end = np.full((P, 3), np.nan)
    has = count > 0
    end[has] = pos[last[has]] + vec[last[has]]
    return Steps(pos, vec, lens, dedx, energy, owner, first, count, end, contained & has)


def _empty_steps() -> Steps:
    z3 = np.zeros((0, 3))
    z = np.zeros(0)
    zi = np.zeros(0, np.int64)
    return Steps(z3, z3, z, z, z, zi, zi, zi, z3, np.zeros(0, bool))


def propagate_electrons(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    E0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    step: float = 0.3,
) -> Steps:
    """Step electrons/positrons: collision loss ~2.1 MeV/cm plus mean radiative loss E/X0.

    The mean energy follows dE/ds = -E/X0 - a, i.e. E(s) = (E0 + a X0) exp(-s/X0) - a X0; the
    radiated energy is emitted as discrete photons by :func:`bremsstrahlung`. Scattering is
    Highland with the local p*beta, so low-energy electrons wiggle.
    """
    P = start.shape[0]
    if P == 0:
        return _empty_steps()
    a = ph.ELECTRON_DEDX
    aX = a * ph.X0
    E0 = np.asarray(E0, dtype=np.float64)
    L = ph.X0 * np.log1p(E0 / aX)
    stp = np.where(L < 2 * step, np.maximum(L / 2.0, 0.02), step)
    n = np.maximum(np.ceil(L / stp - 1e-9).astype(np.int64), 1)
    owner, first, j = segment_layout(n)
    sp = stp[owner]
    lens = np.maximum(np.minimum(sp, L[owner] - j * sp), 1e-3)
    s_mid = j * sp + 0.5 * lens
    energy = np.maximum((E0[owner] + aX) * np.exp(-s_mid / ph.X0) - aX, 0.01)
    # collision stopping power rises at low energy (roughly 2.1 + 0.35/T MeV/cm in LAr)
    dedx = a + 0.35 / np.maximum(energy, 0.05)
    theta0 = np.minimum(ph.highland(ph.pbeta(energy, ph.M_E), lens), 1.2)
    pos, vec = walk(rng, start, direction, lens, theta0, owner, first)
    keep, exited = _truncate_outside(pos, vec, owner, first, n, lo, hi)
    return _finish(pos, vec, lens, dedx, energy, owner, keep, P, ~exited)
