"""Batched stepping of charged tracks (muons, pions, protons) and of electrons, as flat arrays.

Every function here handles many particles at once: per-step quantities live in one flat
array with a ``owner`` index, and per-particle running sums are segmented cumulative sums.

Electrons (:func:`step_electrons`) conserve energy step by step. Their kinetic energy falls
continuously by a(E) = 2.1 + 0.35/E MeV/cm (collision) plus k_cut/X0 (bremsstrahlung photons
below the tracking cut k_cut, absorbed locally), and in discrete jumps when a photon above the
cut is radiated: rate ln(E/k_cut)/X0 per cm, 1/k spectrum with k <= E, the photon's energy taken
from the electron where it is emitted. The histories are generated event by event for all
electrons at once (distance to the next candidate photon from the current rate, thinning to the
rate where it lands; the continuous loss between photons has a closed-form range), then each
continuous piece is cut into steps of equal energy loss and <= ~3 mm, so that ``dedx * length``
of a step is exactly the energy it lost; multiple scattering is Highland with the local p*beta.
The electron stops when its energy is gone or it leaves the box, so path lengths at one energy
vary as they do for real electrons.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


def concat_steps(a: Steps, b: Steps) -> Steps:
    """The steps of two batches of particles as one batch: ``a``'s particles, then ``b``'s."""
    cat = np.concatenate
    return Steps(cat([a.start, b.start]), cat([a.vec, b.vec]), cat([a.length, b.length]), cat([a.dedx, b.dedx]),
                 cat([a.energy, b.energy]), cat([a.owner, b.owner + a.first.size]),
                 cat([a.first, b.first + a.owner.size]), cat([a.count, b.count]), cat([a.end, b.end]),
                 cat([a.contained, b.contained]))


def _empty_steps() -> Steps:
    z3 = np.zeros((0, 3))
    z = np.zeros(0)
    zi = np.zeros(0, np.int64)
    return Steps(z3, z3, z, z, z, zi, zi, zi, z3, np.zeros(0, bool))


# ----------------------------------------------------------------------------- electrons
# Continuous loss of an electron between hard photons: collision a + b/E (MeV/cm) plus the
# bremsstrahlung below the photon tracking cut, k_cut/X0, both deposited locally.
ELECTRON_B = 0.35  # MeV^2/cm: low-energy rise of the collision stopping power, a + b/E


@dataclass
class Emissions:
    """Bremsstrahlung photons radiated by a batch of electrons (N photons)."""

    step: np.ndarray  # (N,) index into the Steps arrays: emitted at the end point of that step
    energy: np.ndarray  # (N,) photon energy, MeV
    parent_energy: np.ndarray  # (N,) electron kinetic energy just before the emission, MeV


def _continuous_a(k_cut: float) -> float:
    return ph.ELECTRON_DEDX + k_cut / ph.X0


def electron_range(E: np.ndarray, k_cut: float = 1.0) -> np.ndarray:
    """Distance (cm) over which the continuous loss a + b/E alone takes kinetic energy E to 0."""
    a = _continuous_a(k_cut)
    beta = ELECTRON_B / a
    E = np.maximum(np.asarray(E, dtype=np.float64), 0.0)
    return np.maximum(E - beta * np.log1p(E / beta), 0.0) / a


@lru_cache(maxsize=None)
def _range_table(k_cut: float) -> tuple[np.ndarray, np.ndarray]:
    logE = np.linspace(np.log(1e-6), np.log(1e6), 3001)
    return np.log(electron_range(np.exp(logE), k_cut)), logE


def electron_energy_at_range(R: np.ndarray, k_cut: float = 1.0) -> np.ndarray:
    """Inverse of :func:`electron_range`: log-log table, polished by one Newton step on the
    convex E - beta ln(1 + E/beta) = a R."""
    a = _continuous_a(k_cut)
    beta = ELECTRON_B / a
    R = np.maximum(np.asarray(R, dtype=np.float64), 1e-300)
    logR, logE = _range_table(k_cut)
    # below the table (E < 1e-6 MeV) E - beta ln(1 + E/beta) = E^2 / (2 beta) to high accuracy
    E = np.where(R > np.exp(logR[0]), np.exp(np.interp(np.log(R), logR, logE)), np.sqrt(2.0 * beta * a * R))
    E = E - (E - beta * np.log1p(E / beta) - a * R) * (beta + E) / E
    return np.maximum(E, 0.0)


def _brem_rate(E: np.ndarray, k_cut: float) -> np.ndarray:
    """Photons above k_cut per cm: ln(E/k_cut)/X0 (zero below 1.05 k_cut)."""
    r = np.log(np.maximum(E * (1.0 / k_cut), 1.0)) * (1.0 / ph.X0)
    r[r < np.log(1.05) / ph.X0] = 0.0
    return r


def _electron_histories(rng: np.random.Generator, E0: np.ndarray, k_cut: float):
    """Energy histories of electrons as continuous-loss segments separated by hard photons.

    Event-driven: the distance to the next photon is drawn from the rate at the current
    energy (which only falls along a segment), accepted with rate(E_there)/rate(E_here)
    (thinning); an accepted photon takes k from the 1/k spectrum on [k_cut, E] out of the
    electron. Returns segments (owner, E_start, E_end) ordered by owner and arc length, and for
    each photon the index of the segment it ends, its energy and the electron energy before it.
    """
    E = E0.astype(np.float64).copy()
    Eseg = E.copy()
    seg_o, seg_a, seg_b, ph_seg, ph_k = [], [], [], [], []
    nseg = 0
    live = np.flatnonzero(E > 0)
    while live.size:
        e = E[live]
        u = rng.random((3, live.size))
        lam = _brem_rate(e, k_cut)
        R = electron_range(e, k_cut)
        x = -np.log1p(-u[0])  # distance to the next candidate photon, in units of 1/lam
        go = x < lam * R
        ig, lg = live[go], lam[go]
        eb = electron_energy_at_range(R[go] - x[go] / lg, k_cut)
        acc = u[1, go] * lg < _brem_rate(eb, k_cut)
        ia, ea = ig[acc], eb[acc]
        ib = live[~go]
        o = np.concatenate([ia, ib])
        seg_o.append(o)
        seg_a.append(Eseg[o])
        seg_b.append(np.concatenate([ea, np.zeros(ib.size)]))
        ph_seg.append(np.arange(nseg, nseg + ia.size))
        nseg += o.size
        k = k_cut * (ea * (1.0 / k_cut)) ** u[2, go][acc]
        ph_k.append(k)
        E[ig] = eb
        E[ia] = ea - k
        Eseg[ia] = ea - k
        Eseg[ib] = 0.0
        live = ig[Eseg[ig] > 0]  # an open segment (even one already at E = 0) is closed next pass
    if not seg_o:
        z = np.zeros(0)
        return np.zeros(0, np.int64), z, z, np.zeros(0, np.int64), z, z
    seg_o = np.concatenate(seg_o)
    order = np.argsort(seg_o, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    seg_b = np.concatenate(seg_b)
    p_seg = np.concatenate(ph_seg)
    # the electron energy just before a photon is the end energy of the segment it closes
    return seg_o[order], np.concatenate(seg_a)[order], seg_b[order], rank[p_seg], np.concatenate(ph_k), seg_b[p_seg]


def step_electrons(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    E0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    step: float = 0.3,
    k_cut: float = 1.0,
) -> tuple[Steps, Emissions]:
    """Step electrons/positrons with energy-conserving continuous loss and discrete bremsstrahlung.

    Between hard photons the kinetic energy falls deterministically by the local loss
    a + b/E + k_cut/X0 (collision plus sub-cut radiation, all deposited on the step); photons
    above k_cut are emitted at rate ln(E/k_cut)/X0 per cm with a 1/k spectrum (k <= E) and
    their energy is removed from the electron at the emission point, so per electron
    sum(dedx * length) + sum(photon energies) = E0 (before deposit fluctuations; less for
    electrons that leave the box, whose steps and photons beyond the exit are dropped). Each
    continuous segment is cut into steps of equal energy loss and at most ~``step`` cm;
    scattering is Highland with the local p*beta through :func:`walk`.
    """
    P = start.shape[0]
    if P == 0:
        return _empty_steps(), Emissions(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    E0 = np.asarray(E0, dtype=np.float64)
    so, Ea, Eb, p_seg, p_k, p_par = _electron_histories(rng, E0, k_cut)
    Ra = electron_range(Ea, k_cut)
    seg_len = np.maximum(Ra - electron_range(Eb, k_cut), 0.0)
    # per-electron step: ``step``, or half the continuous range for short electrons
    stp = np.clip(0.5 * electron_range(E0, k_cut), 0.02, step)
    ns = np.maximum(np.ceil(seg_len / stp[so] - 1e-9).astype(np.int64), 1)
    sown, sfirst, j = segment_layout(ns)  # steps of each segment
    dEs = (Ea - Eb) / ns
    e_hi = Ea[sown] - j * dEs[sown]
    e_lo = np.where(j == ns[sown] - 1, Eb[sown], e_hi - dEs[sown])
    loss = e_hi - e_lo
    lens = np.maximum(electron_range(e_hi, k_cut) - electron_range(e_lo, k_cut), 1e-4)
    dedx = loss / lens  # dedx * length is exactly the energy lost on the step
    energy = 0.5 * (e_hi + e_lo)
    owner = so[sown]
    n = np.bincount(owner, minlength=P)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    theta0 = np.minimum(ph.highland(ph.pbeta(energy, ph.M_E), lens), 1.2)
    pos, vec = walk(rng, start, direction, lens, theta0, owner, first)
    keep, exited = _truncate_outside(pos, vec, owner, first, n, lo, hi)
    # a photon leaves from the end of its segment's last step, if that point is kept and inside
    p_step = sfirst[p_seg] + ns[p_seg] - 1
    ok = keep[p_step] & inside_box(pos[p_step] + vec[p_step], lo, hi)
    new_index = np.cumsum(keep) - 1
    steps = _finish(pos, vec, lens, dedx, energy, owner, keep, P, ~exited)
    return steps, Emissions(new_index[p_step[ok]], p_k[ok], p_par[ok])


def propagate_electrons(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    E0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    step: float = 0.3,
) -> Steps:
    """Steps of electrons/positrons as in :func:`step_electrons`, without the radiated photons."""
    return step_electrons(rng, start, direction, E0, lo, hi, step)[0]
