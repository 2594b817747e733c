"""A cheap electromagnetic cascade: electrons radiate bremsstrahlung photons along their
tracks; photons fly an exponential distance before converting (pair production) or Compton
scattering; the charged daughters are stepped again, generation after generation.

All particles of one generation (from every shower, Michel and delta ray in the event) are
handled together as flat arrays.

Energy bookkeeping: electrons are stepped by :func:`tracks.step_electrons`, which removes each
radiated photon's energy from the electron at its emission point and deposits the rest (collision
loss and photons below ``K_CUT``) along the track; the Landau-like step fluctuations are then
rescaled per electron so they move energy along the track without changing its total. In a large
volume the deposits therefore add up to the primary energy, less what is not followed: the rest
mass of converted pairs (no positron annihilation), Compton-scattered photons below
``PHOTON_MIN`` and electrons below ``ELECTRON_MIN``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import physics as ph
from .deposits import Deposits
from .geometry import inside_box
from .tracks import Emissions, step_electrons

K_CUT = 1.0  # MeV: bremsstrahlung photons below this are not followed (absorbed on the electron's step)
PHOTON_MIN = 0.25  # MeV: photons below this are absorbed without a visible electron
ELECTRON_MIN = 0.05  # MeV
PAIR_THRESHOLD = 8.0  # MeV: above, photons convert to e+e-; below, they Compton scatter
MAX_GENERATIONS = 60
ELECTRON_FLUCT = 0.15  # relative width of the Landau-like step fluctuations

# photon attenuation length in LAr (cm) vs energy (MeV); ~9/7 X0 at high energy
_ATT_E = np.log([0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 1.0e5])
_ATT_L = np.array([4.0, 8.5, 11.6, 16.6, 23.7, 26.0, 22.0, 19.5, ph.CONVERSION_LENGTH])


def attenuation_length(k: np.ndarray) -> np.ndarray:
    return np.interp(np.log(np.maximum(k, 0.1)), _ATT_E, _ATT_L)


@dataclass
class _Batch:
    start: np.ndarray
    dir: np.ndarray
    energy: np.ndarray
    prim: np.ndarray  # index of the primary (label/cluster/shift live there)
    first: np.ndarray  # True for a primary photon's own first interaction

    @staticmethod
    def empty() -> "_Batch":
        return _Batch(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool))

    def __len__(self) -> int:
        return self.energy.shape[0]

    @staticmethod
    def cat(parts: list["_Batch"]) -> "_Batch":
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Batch.empty()
        if len(parts) == 1:
            return parts[0]
        return _Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("start", "dir", "energy", "prim", "first")))


@dataclass
class CascadeResult:
    deposits: Deposits
    visible_start: np.ndarray  # (P, 3) per primary: its start (electrons) or conversion point (photons); NaN if none
    conversion_vertices: np.ndarray  # (V, 3) first interaction points of primary photons
    conversion_shift: np.ndarray  # (V,)


def cascade(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    energy: np.ndarray,
    is_photon: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    shift: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> CascadeResult:
    """Develop EM showers from primaries (electrons: kinetic energy; photons: energy, MeV).

    Every descendant inherits its primary's label, cluster id and arrival time.
    """
    P = start.shape[0]
    label = np.asarray(label, np.uint8)
    cluster = np.asarray(cluster, np.int32)
    shift = np.asarray(shift, np.float64)
    vis = np.full((P, 3), np.nan)
    is_photon = np.asarray(is_photon, bool)
    idx = np.arange(P)
    el = _Batch(start[~is_photon], direction[~is_photon], energy[~is_photon], idx[~is_photon], np.zeros((~is_photon).sum(), bool))
    vis[~is_photon] = start[~is_photon]
    ph_b = _Batch(start[is_photon], direction[is_photon], energy[is_photon], idx[is_photon], np.ones(is_photon.sum(), bool))
    deps: list[Deposits] = []
    conv_pts: list[np.ndarray] = []
    conv_shift: list[np.ndarray] = []
    for _ in range(MAX_GENERATIONS):
        if not len(el) and not len(ph_b):
            break
        scattered = _Batch.empty()
        if len(ph_b):
            new_e, scattered, points, firsts = _interact_photons(rng, ph_b, lo, hi)
            if firsts.any():
                vis[ph_b.prim[firsts]] = points[firsts]
                conv_pts.append(points[firsts])
                conv_shift.append(shift[ph_b.prim[firsts]])
            el = _Batch.cat([el, new_e])
        brem = _Batch.empty()
        el = _select(el, el.energy > ELECTRON_MIN)
        if len(el):
            steps, emitted = step_electrons(rng, el.start, el.dir, el.energy, lo, hi, k_cut=K_CUT)
            p = el.prim
            deps.append(_electron_deposits(rng, steps, label[p], cluster[p], shift[p]))
            brem = _bremsstrahlung(rng, steps, emitted, el)
        ph_b = _Batch.cat([scattered, brem])
        el = _Batch.empty()
    cv = np.concatenate(conv_pts) if conv_pts else np.zeros((0, 3))
    cs = np.concatenate(conv_shift) if conv_shift else np.zeros(0)
    return CascadeResult(Deposits.concat(deps), vis, cv, cs)


def _select(b: _Batch, m: np.ndarray) -> _Batch:
    return _Batch(b.start[m], b.dir[m], b.energy[m], b.prim[m], b.first[m])


def _electron_deposits(rng: np.random.Generator, steps, label, cluster, shift) -> Deposits:
    """Electron deposits with Landau-like fluctuations that move energy along each electron's
    track without changing its total: each electron's fluctuated deposits are rescaled to the
    energy it lost (sum of dedx * length), so deposits + radiated photons = initial energy."""
    dep = Deposits.from_steps(rng, steps, label, cluster, shift, ELECTRON_FLUCT)
    if not len(dep):
        return dep
    P = steps.count.size
    want = np.bincount(steps.owner, weights=steps.dedx * steps.length, minlength=P)
    got = np.bincount(steps.owner, weights=dep.energy, minlength=P)
    scale = np.where(got > 0, want / np.maximum(got, 1e-300), 0.0)[steps.owner]
    dep.energy = dep.energy * scale
    dep.charge = dep.energy * ph.recombination(dep.energy / np.maximum(steps.length, 1e-4))
    return dep


def _bremsstrahlung(rng: np.random.Generator, steps, emitted: Emissions, el: _Batch) -> _Batch:
    """Photons radiated by the stepped electrons (their energy already left the electron),
    each from the end of its step, at an angle ~ m/E to the electron's direction there."""
    sel = emitted.step
    if sel.size == 0:
        return _Batch.empty()
    Ej = emitted.parent_energy
    pos = steps.start[sel] + steps.vec[sel]
    d = steps.vec[sel] / np.maximum(steps.length[sel], 1e-9)[:, None]
    theta = np.minimum(ph.M_E / np.maximum(Ej, 0.5) * np.abs(rng.standard_normal(sel.size)) * 1.5, 1.0)
    d = ph.rotate_by(d, np.cos(theta), rng.uniform(0, 2 * np.pi, sel.size))
    prim = el.prim[steps.owner[sel]]
    return _Batch(pos, d, emitted.energy, prim, np.zeros(sel.size, bool))


def _interact_photons(rng: np.random.Generator, g: _Batch, lo, hi):
    """Fly photons to their interaction points; pair-produce or Compton-scatter there."""
    n = len(g)
    dist = rng.exponential(1.0, n) * attenuation_length(g.energy)
    pts = g.start + g.dir * dist[:, None]
    alive = inside_box(pts, lo, hi) & (g.energy > PHOTON_MIN)
    firsts = g.first & alive
    pair = alive & (g.energy >= PAIR_THRESHOLD)
    comp = alive & ~pair
    # pair production: e+ and e- share E - 2m (flat), small opening angles
    ip = np.flatnonzero(pair)
    kin = g.energy[ip] - 2 * ph.M_E
    u = rng.random(ip.size)
    e_en = np.concatenate([u * kin, (1 - u) * kin])
    src = np.concatenate([ip, ip])
    th = np.minimum(ph.M_E / np.maximum(e_en, 0.3) * (1.0 + np.abs(rng.standard_normal(src.size))), 1.2)
    e_dir = ph.rotate_by(g.dir[src], np.cos(th), rng.uniform(0, 2 * np.pi, src.size))
    # Compton: recoil electron T uniform up to the Compton edge, exact two-body angles
    ic = np.flatnonzero(comp)
    k = g.energy[ic]
    tmax = k * 2 * k / (ph.M_E + 2 * k)
    T = tmax * rng.random(ic.size) ** 0.7
    cos_e = np.clip((1 + k / ph.M_E) * np.sqrt(T / (T + 2 * ph.M_E)), -1, 1)
    kp = k - T
    cos_g = np.clip(1 - ph.M_E * (1 / np.maximum(kp, 1e-6) - 1 / k), -1, 1)
    phi = rng.uniform(0, 2 * np.pi, ic.size)
    ce_dir = ph.rotate_by(g.dir[ic], cos_e, phi)
    cg_dir = ph.rotate_by(g.dir[ic], cos_g, phi + np.pi)
    electrons = _Batch(
        np.concatenate([pts[src], pts[ic]]),
        np.concatenate([e_dir, ce_dir]),
        np.concatenate([e_en, T]),
        np.concatenate([g.prim[src], g.prim[ic]]),
        np.zeros(src.size + ic.size, bool),
    )
    keep = kp > PHOTON_MIN
    scattered = _Batch(pts[ic][keep], cg_dir[keep], kp[keep], g.prim[ic][keep], np.zeros(int(keep.sum()), bool))
    return electrons, scattered, pts, firsts
