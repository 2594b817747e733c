"""Detector response and rendering: charge sub-points, diffusion, wire response, priority
labelling, gains, electron lifetime, white and coherent electronics noise, dead wires,
thresholding into sparse lists. The changeable part of the response is a
:class:`~sparseseg.simulate.detector.Conditions`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import correlate1d
from scipy.special import ndtri, erfc

from ..classes import IGNORE
from ..event import ADC_MAX
from .deposits import Deposits
from .detector import IDEAL, Conditions
from .physics import recombination
from .geometry import (
    CUBE_VOXELS,
    DRIFT_VELOCITY,
    PLANES,
    TPC_HI,
    VOXEL_CM,
    WirePlane,
    dead_wires,
    drift_row,
    wire_coordinate,
)

ADC_PER_MEV = 260.0
"""ADC per MeV of charge surviving recombination (energy equivalent), on the collection plane.
Calibrated on MIPs: a crossing muon's track gives the same ADC per pixel as before the
recombination field (500 -> 273 V/cm) and restricted-loss corrections of simulator 0.3, so
the 10 ADC threshold keeps its meaning relative to a MIP."""
MIP_DEDX = 2.12
"""Mean energy loss of a minimum-ionising muon in liquid argon, MeV/cm."""
VOXEL_MEV = 1.0 / (ADC_PER_MEV * float(recombination(MIP_DEDX)))
"""MeV per simulator charge unit in 3D volumes: voxel values are the collected charge
converted to deposited energy with the recombination correction of a MIP (what a calorimetric
reconstruction calibrated on crossing muons reports), so a MIP voxel holds its deposited energy
(~0.6 MeV per 3 mm) and a proton's Bragg peak keeps its recombination suppression. These are the
units of PILArNet-M's voxel values (MeV)."""
SUBSTEP_CM = 0.1
SIGMA_L_FULL = 0.17  # cm: longitudinal diffusion over the full drift (D_L ~ 6 cm2/s)
SIGMA_T_FULL = 0.25  # cm: transverse diffusion over the full drift (D_T ~ 13 cm2/s)
SIGMA_SHAPING = 0.12  # cm: electronics shaping time as a drift distance
DENSE_LIMIT = 8_000_000
PLANE_INDEX = {p.name: i for i, p in enumerate(PLANES)}

_CLUSTER_BITS = 24
_Q_BITS = 33
_Q_SCALE = 64.0


@dataclass
class ChargePoints:
    """Point-like charge samples of the deposits (K of them)."""

    pos: np.ndarray  # (K, 3) after diffusion
    q: np.ndarray  # (K,) ADC units (before plane gain)
    label: np.ndarray
    cluster: np.ndarray
    shift: np.ndarray


def charge_points(rng: np.random.Generator, deps: Deposits, diffuse: bool) -> ChargePoints:
    """Split deposit segments into ~1 mm charge samples; optionally diffuse them with drift."""
    L = np.sqrt((deps.vec * deps.vec).sum(axis=1))
    # the tolerance keeps a step of exactly k substeps (0.3 cm tracks) at k whatever its last bits
    n = np.maximum(np.ceil(L / SUBSTEP_CM - 1e-6).astype(np.int64), 1)
    o = np.repeat(np.arange(n.size), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]) if n.size else np.zeros(0, np.int64)
    j = np.arange(o.size) - first[o]
    frac = (j + 0.5) / n[o]
    pos = deps.start[o] + deps.vec[o] * frac[:, None]
    q = (deps.charge * ADC_PER_MEV / n)[o]
    if diffuse and o.size:
        f = np.clip(pos[:, 0] / TPC_HI[0], 0.0, 1.0)
        sig = np.empty((o.size, 3))
        sig[:, 0] = np.sqrt(SIGMA_L_FULL**2 * f + SIGMA_SHAPING**2)
        st = SIGMA_T_FULL * np.sqrt(f)
        sig[:, 1] = st
        sig[:, 2] = st
        pos = pos + rng.standard_normal((o.size, 3)) * sig
    return ChargePoints(pos, q, deps.label[o], deps.cluster[o], deps.shift[o])


def priority_key(q: np.ndarray, label: np.ndarray, cluster: np.ndarray, direct: np.ndarray | None = None) -> np.ndarray:
    """int64 key whose maximum over a pixel's entries picks that pixel's truth.

    Order of precedence: direct deposits over spill from wire response, then the LOWEST class
    code (HIP > MIP > shower > delta > Michel), then the largest charge (which sets the
    cluster id).
    """
    qq = np.minimum((np.asarray(q) * _Q_SCALE).astype(np.int64), (1 << _Q_BITS) - 1)
    qq = np.maximum(qq, 0)
    lab = 7 - np.asarray(label).astype(np.int64)
    clu = np.asarray(cluster).astype(np.int64) + 1
    key = (lab << (_Q_BITS + _CLUSTER_BITS)) | (qq << _CLUSTER_BITS) | clu
    if direct is not None:
        key |= np.asarray(direct).astype(np.int64) << (_Q_BITS + _CLUSTER_BITS + 3)
    return key


def accumulate_pixels(
    lin: np.ndarray,
    q: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    npix: int,
    direct: np.ndarray | None = None,
    q_key: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum charge entries into pixels and assign truth with class priority.

    Parameters
    ----------
    lin : int64 (K,) linear pixel index of each entry
    q : float (K,) charge of each entry
    label, cluster : (K,) class code and particle id of each entry
    npix : number of pixels in the image
    direct : bool (K,), optional; False marks wire-response spill, which only labels a pixel
        that no direct deposit reaches.
    q_key : float (K,), optional
        Charge used to pick the truth (default ``q``): passing the charge before detector
        effects (gain, lifetime) keeps the truth independent of the detector conditions.

    Returns
    -------
    pix (P,) sorted linear indices of pixels with charge, charge (P,), label uint8 (P,),
    cluster int32 (P,). Where deposits of different classes share a pixel the lowest code wins.
    """
    lin = np.asarray(lin, dtype=np.int64)
    key = priority_key(q if q_key is None else q_key, label, cluster, direct)
    if npix <= DENSE_LIMIT:
        charge = np.bincount(lin, weights=q, minlength=npix)
        touched = np.bincount(lin, minlength=npix)
        pix = np.flatnonzero(touched)
        ch = charge[pix]
        best = np.zeros(npix, dtype=np.int64)
        np.maximum.at(best, lin, key)
        kb = best[pix]
    else:
        pix, inv = np.unique(lin, return_inverse=True)
        ch = np.bincount(inv, weights=q, minlength=pix.size)
        kb = np.zeros(pix.size, dtype=np.int64)
        np.maximum.at(kb, inv, key)
    lab = (7 - ((kb >> (_Q_BITS + _CLUSTER_BITS)) & 7)).astype(np.uint8)
    clu = ((kb & ((1 << _CLUSTER_BITS) - 1)) - 1).astype(np.int32)
    return pix, ch, lab, clu


@dataclass
class Rendered:
    coords: np.ndarray
    adc: np.ndarray
    labels: np.ndarray
    clusters: np.ndarray


def _charge_scale(pts_x: np.ndarray, gain: float, lifetime_ms: float | None) -> np.ndarray | float:
    """Multiplier of each charge sample: overall gain times the electron-lifetime attenuation."""
    if lifetime_ms is None or np.isinf(lifetime_ms):
        return gain
    # exp(-t_drift / tau) with t_drift = x / v_drift (float32 exp: ~10x faster, 1e-7 precise)
    arg = np.maximum(pts_x, 0.0) * (-1.0 / (DRIFT_VELOCITY * 1000.0 * lifetime_ms))
    return gain * np.exp(arg.astype(np.float32)).astype(np.float64)


def _extra_dead_bands(rng, cond: Conditions, plane: WirePlane, wire0: int, n_wires: int,
                      dead: np.ndarray | None) -> np.ndarray | None:
    """The fixed dead-wire mask plus ``cond.extra_dead_bands`` random bands overlapping the window."""
    nb = cond.extra_dead_bands
    if nb == 0:
        return dead
    mask = np.zeros(plane.n_wires, bool) if dead is None else dead.copy()
    lo, hi = cond.dead_band_wires
    width = rng.integers(lo, hi + 1, nb)
    start = rng.integers(wire0 - width + 1, wire0 + n_wires)
    for s, w in zip(start.tolist(), width.tolist()):
        mask[max(s, 0) : max(s + w, 0)] = True
    return mask


def _noise_only_white(rng, npix, n_wires, wire0, noise_adc, thr, dead, charged):
    """Noise-only pixels above threshold for white noise: drawn sparsely from the Gaussian tail."""
    p_tail = 0.5 * erfc(thr / (noise_adc * np.sqrt(2.0)))
    n_noise = rng.poisson(npix * p_tail)
    cand = rng.integers(0, npix, n_noise)
    vals = -noise_adc * ndtri(np.maximum(rng.random(n_noise) * p_tail, 1e-300))
    good = np.ones(n_noise, bool)
    if dead is not None:
        good &= ~dead[cand % n_wires + wire0]
    if charged.size:
        at = np.minimum(np.searchsorted(charged, cand), charged.size - 1)
        good &= charged[at] != cand
    cand, vals = cand[good], vals[good]
    cand, first = np.unique(cand, return_index=True)
    return cand, np.maximum(vals[first], thr)


COHERENT_CHUNK_ROWS = 32
"""Rows per block of the sparse noise-only sampling with coherent noise."""
_DENSE_P = 0.25


@lru_cache(maxsize=64)
def _smoothing_kernel(s: float, pad: int) -> np.ndarray:
    """Gaussian kernel of std s (radius pad) scaled to sum k^2 = 1: unit white noise in, unit
    variance out."""
    x = np.arange(-pad, pad + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / s) ** 2)
    k /= np.sqrt((k * k).sum())
    k.flags.writeable = False
    return k


def _coherent_waveform(rng, n_groups: int, n_rows: int, sigma: float, corr_rows: float) -> np.ndarray:
    """(n_groups, n_rows) stationary Gaussian waveforms of std ``sigma`` whose autocorrelation
    is ~exp(-d^2 / (2 corr_rows^2)) at a distance of d rows.

    Low-pass-filtered white noise, computed on knots every ~corr_rows / 4 rows and linearly
    interpolated in between (the std dips by < 1 % between knots).
    """
    if corr_rows <= 0:
        return sigma * rng.standard_normal((n_groups, n_rows))
    m = max(1, int(corr_rows // 4))  # knot spacing (rows)
    s = corr_rows / np.sqrt(2.0) / m  # kernel std (knots): a Gaussian kernel of std s gives a correlation length s sqrt 2
    pad = int(np.ceil(4 * s))
    nk = (n_rows - 1) // m + 2
    z = rng.standard_normal((n_groups, nk + 2 * pad))
    f = correlate1d(z, _smoothing_kernel(float(s), pad), axis=1, mode="nearest")[:, pad : pad + nk]
    f *= sigma
    if m == 1:
        return f[:, :n_rows]
    t = np.arange(n_rows) / m
    i = t.astype(np.int64)
    fr = t - i
    return f[:, i] * (1.0 - fr) + f[:, i + 1] * fr


def _noise_only_coherent(rng, n_rows, n_wires, wire0, g0, group, coh, noise_adc, thr, dead, charged):
    """Noise-only pixels above threshold for white + coherent noise, drawn sparsely.

    An empty pixel of group g at row r holds ``coh[g, r] + w``, w white. The image is cut into
    blocks of one group x COHERENT_CHUNK_ROWS rows; in a block, with cmax the largest coherent
    value, a pixel can only pass the threshold if w >= thr - cmax (probability pmax). Candidate
    pixels, a Bernoulli(pmax) field, are drawn by Poisson splitting (a Poisson number of throws
    with replacement, -n log(1 - pmax), whose distinct cells are exactly such a field; blocks
    with pmax > 1/4 take all their pixels), each with w drawn from the tail above thr - cmax;
    a candidate is kept when coh + w >= thr. This is exact, and costs ~ the number of blocks
    plus the number of candidates. Dead wires and charged pixels are then removed.
    """
    ng = coh.shape[0]
    R = COHERENT_CHUNK_ROWS
    g = np.arange(g0, g0 + ng)
    b_lo = np.maximum(g * group - wire0, 0)
    b_n = np.minimum((g + 1) * group - wire0, n_wires) - b_lo
    nc = -(-n_rows // R)
    if nc * R == n_rows:
        cmax = coh.reshape(ng, nc, R).max(axis=2)
    else:
        padded = np.full((ng, nc * R), -np.inf)
        padded[:, :n_rows] = coh
        cmax = padded.reshape(ng, nc, R).max(axis=2)
    c_rows = np.minimum(R, n_rows - np.arange(nc) * R)
    npx = (b_n[:, None] * c_rows[None, :]).ravel()
    if noise_adc > 0:
        pmax = (0.5 * erfc((thr - cmax) / (noise_adc * np.sqrt(2.0)))).ravel()
    else:
        pmax = (cmax >= thr).astype(np.float64).ravel()
    dense = pmax > _DENSE_P
    sp = np.flatnonzero(~dense & (pmax > 0))
    throws = rng.poisson(-npx[sp] * np.log1p(-pmax[sp]))
    blk_s = np.repeat(sp, throws)
    loc_s = rng.integers(0, npx[blk_s]) if blk_s.size else np.zeros(0, np.int64)
    dn = np.flatnonzero(dense)
    blk_d = np.repeat(dn, npx[dn])
    loc_d = np.arange(blk_d.size) - np.repeat(np.cumsum(npx[dn]) - npx[dn], npx[dn])
    blk = np.concatenate([blk_s, blk_d])
    loc = np.concatenate([loc_s, loc_d])
    gi, ci = np.divmod(blk, nc)
    bn = b_n[gi]
    rr = ci * R + loc // bn
    ww = b_lo[gi] + loc % bn
    cand, first = np.unique(rr * n_wires + ww, return_index=True)
    blk, rr, ww, gi = blk[first], rr[first], ww[first], gi[first]
    c = coh[gi, rr]
    if noise_adc > 0:
        pm = np.where(dense[blk], 1.0, pmax[blk])
        w = -noise_adc * ndtri(np.clip(rng.random(cand.size) * pm, 1e-300, 1.0 - 1e-16))
        vals = c + w
    else:
        vals = c
    good = vals >= thr
    if dead is not None:
        good &= ~dead[ww + wire0]
    if charged.size:
        at = np.minimum(np.searchsorted(charged, cand), charged.size - 1)
        good &= charged[at] != cand
    return cand[good], vals[good]


def render_plane(
    rng: np.random.Generator,
    pts: ChargePoints,
    plane: WirePlane,
    row0: int,
    wire0: int,
    n_rows: int,
    n_wires: int,
    noise_adc: float,
    dead_fraction: float,
    conditions: Conditions | None = None,
) -> Rendered:
    """Render charge samples on one wire plane, window [row0, row0+n_rows) x [wire0, wire0+n_wires).

    ``noise_adc`` and ``dead_fraction`` are the preset's values for this plane; ``conditions``
    (default ``Conditions()``, the idealised detector) may override them and adds gains,
    coherent noise, extra dead bands, the threshold and the electron lifetime. Truth labels and
    particle ids are picked from the charge before gain and lifetime, so they do not depend on
    the conditions. ``rng`` (the detector stream) is advanced by exactly one draw per call.
    """
    cond = IDEAL if conditions is None else conditions
    if cond.noise_adc is not None:
        noise_adc = cond.noise_adc
    if cond.dead_fraction is not None:
        dead_fraction = cond.dead_fraction
    thr = cond.threshold
    # one draw per plane from the detector stream seeds independent sub-streams for each part
    # of the response, so that changing one condition (say the threshold or the coherent noise)
    # leaves the random numbers of the others, and of the other planes, unchanged
    ss = np.random.SeedSequence(int(rng.integers(0, 2**63)))
    r_dead, r_coh, r_white, r_tail = (np.random.default_rng(s) for s in ss.spawn(4))
    row = np.floor(drift_row(pts.pos[:, 0], pts.shift)).astype(np.int64) - row0
    wire = np.floor(wire_coordinate(pts.pos, plane)).astype(np.int64) - wire0
    ok = (row >= 0) & (row < n_rows) & (wire >= -1) & (wire <= n_wires)
    row, wire = row[ok], wire[ok]
    q = pts.q[ok] * plane.gain
    scale = _charge_scale(pts.pos[ok, 0], cond.gain * cond.plane_gain[PLANE_INDEX[plane.name]], cond.lifetime_ms)
    qd = q if (np.isscalar(scale) and scale == 1.0) else q * scale
    lab, clu = pts.label[ok], pts.cluster[ok]
    a = plane.spread
    # wire response: a fraction `a` of each wire's charge also shows on each neighbour
    wires = np.concatenate([wire, wire - 1, wire + 1])
    rows = np.concatenate([row, row, row])
    qs = np.concatenate([qd * (1 - 2 * a), qd * a, qd * a])
    qk = qs if qd is q else np.concatenate([q * (1 - 2 * a), q * a, q * a])
    labs = np.concatenate([lab, lab, lab])
    clus = np.concatenate([clu, clu, clu])
    direct = np.zeros(wires.size, bool)
    direct[: wire.size] = True
    dead = dead_wires(plane.name, dead_fraction) if dead_fraction > 0 else None
    dead = _extra_dead_bands(r_dead, cond, plane, wire0, n_wires, dead)
    ok = (wires >= 0) & (wires < n_wires)
    if dead is not None:
        ok[ok] = ~dead[wires[ok] + wire0]
    lin = rows[ok] * n_wires + wires[ok]
    npix = n_rows * n_wires
    pix, ch, plab, pclu = accumulate_pixels(
        lin, qs[ok], labs[ok], clus[ok], npix, direct[ok], q_key=None if qk is qs else qk[ok]
    )
    coh_sigma = cond.coherent_noise_adc
    if coh_sigma > 0:
        group = cond.coherent_group_wires
        g0 = wire0 // group
        ng = (wire0 + n_wires - 1) // group - g0 + 1
        coh = _coherent_waveform(r_coh, ng, n_rows, coh_sigma, cond.coherent_corr_rows)
    adc = ch + noise_adc * r_white.standard_normal(pix.size) if noise_adc > 0 else ch
    if coh_sigma > 0 and pix.size:
        adc = adc + coh[(pix % n_wires + wire0) // group - g0, pix // n_wires]
    charged = pix
    keep = adc >= thr
    pix, adc, plab, pclu = pix[keep], adc[keep], plab[keep], pclu[keep]
    if coh_sigma > 0:
        cand, vals = _noise_only_coherent(r_tail, n_rows, n_wires, wire0, g0, group, coh, noise_adc, thr, dead, charged)
    elif noise_adc > 0:
        cand, vals = _noise_only_white(r_tail, npix, n_wires, wire0, noise_adc, thr, dead, charged)
    else:
        cand = None
    if cand is not None:
        pix = np.concatenate([pix, cand])
        adc = np.concatenate([adc, vals])
        plab = np.concatenate([plab, np.full(cand.size, IGNORE, np.uint8)])
        pclu = np.concatenate([pclu, np.full(cand.size, -1, np.int32)])
        order = np.argsort(pix, kind="stable")
        pix, adc, plab, pclu = pix[order], adc[order], plab[order], pclu[order]
    coords = np.stack([pix // n_wires, pix % n_wires], axis=1).astype(np.int32)
    return Rendered(coords, np.minimum(adc, ADC_MAX).astype(np.float32)[:, None], plab, pclu)


def render_voxels(
    pts: ChargePoints, n: int = CUBE_VOXELS, voxel: float = VOXEL_CM, conditions: Conditions | None = None
) -> Rendered:
    """Voxelise charge samples in the n^3 cube of ``voxel`` cm (no noise: 3D truth-like).

    Values are in MeV (:data:`VOXEL_MEV`), not clipped (no electronics saturation in 3D). Of
    ``conditions`` only ``gain`` (applied before the threshold) and ``threshold`` apply; the
    threshold is in the same charge units as on the wire planes (10 = 10 x VOXEL_MEV = 0.061 MeV),
    so one threshold means the same fraction of a MIP in 2D and 3D.
    """
    cond = IDEAL if conditions is None else conditions
    ijk = np.floor(pts.pos / voxel).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < n), axis=1)
    ijk = ijk[ok]
    lin = (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]
    q = pts.q[ok]
    qd = q if cond.gain == 1.0 else q * cond.gain
    pix, ch, lab, clu = accumulate_pixels(lin, qd, pts.label[ok], pts.cluster[ok], n**3,
                                          q_key=None if qd is q else q)
    keep = ch >= cond.threshold
    pix, ch, lab, clu = pix[keep], ch[keep], lab[keep], clu[keep]
    coords = np.stack([pix // (n * n), (pix // n) % n, pix % n], axis=1).astype(np.int32)
    return Rendered(coords, (ch * VOXEL_MEV).astype(np.float32)[:, None], lab, clu)
