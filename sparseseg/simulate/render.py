"""Detector response and rendering: charge sub-points, diffusion, wire response, priority
labelling, electronics noise, dead wires, thresholding into sparse lists."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri, erfc

from ..classes import IGNORE
from ..event import ADC_MAX, ADC_MIN
from .deposits import Deposits
from .geometry import CUBE_VOXELS, TPC_HI, VOXEL_CM, WirePlane, dead_wires, drift_row, wire_coordinate

ADC_PER_MEV = 200.0
"""ADC per MeV of charge surviving recombination (energy equivalent), on the collection plane."""
SUBSTEP_CM = 0.1
SIGMA_L_FULL = 0.17  # cm: longitudinal diffusion over the full drift (D_L ~ 6 cm2/s)
SIGMA_T_FULL = 0.25  # cm: transverse diffusion over the full drift (D_T ~ 13 cm2/s)
SIGMA_SHAPING = 0.12  # cm: electronics shaping time as a drift distance
DENSE_LIMIT = 8_000_000

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
    n = np.maximum(np.ceil(L / SUBSTEP_CM).astype(np.int64), 1)
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

    Returns
    -------
    pix (P,) sorted linear indices of pixels with charge, charge (P,), label uint8 (P,),
    cluster int32 (P,). Where deposits of different classes share a pixel the lowest code wins.
    """
    lin = np.asarray(lin, dtype=np.int64)
    key = priority_key(q, label, cluster, direct)
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
) -> Rendered:
    """Render charge samples on one wire plane, window [row0, row0+n_rows) x [wire0, wire0+n_wires)."""
    row = np.floor(drift_row(pts.pos[:, 0], pts.shift)).astype(np.int64) - row0
    wire = np.floor(wire_coordinate(pts.pos, plane)).astype(np.int64) - wire0
    ok = (row >= 0) & (row < n_rows) & (wire >= -1) & (wire <= n_wires)
    row, wire = row[ok], wire[ok]
    q = pts.q[ok] * plane.gain
    lab, clu = pts.label[ok], pts.cluster[ok]
    a = plane.spread
    # wire response: a fraction `a` of each wire's charge also shows on each neighbour
    wires = np.concatenate([wire, wire - 1, wire + 1])
    rows = np.concatenate([row, row, row])
    qs = np.concatenate([q * (1 - 2 * a), q * a, q * a])
    labs = np.concatenate([lab, lab, lab])
    clus = np.concatenate([clu, clu, clu])
    direct = np.zeros(wires.size, bool)
    direct[: wire.size] = True
    dead = dead_wires(plane.name, dead_fraction) if dead_fraction > 0 else None
    ok = (wires >= 0) & (wires < n_wires)
    if dead is not None:
        ok[ok] = ~dead[wires[ok] + wire0]
    lin = rows[ok] * n_wires + wires[ok]
    npix = n_rows * n_wires
    pix, ch, plab, pclu = accumulate_pixels(lin, qs[ok], labs[ok], clus[ok], npix, direct[ok])
    adc = ch + noise_adc * rng.standard_normal(pix.size) if noise_adc > 0 else ch
    keep = adc >= ADC_MIN
    pix, adc, plab, pclu = pix[keep], adc[keep], plab[keep], pclu[keep]
    if noise_adc > 0:
        # noise-only pixels above threshold: drawn sparsely from the Gaussian tail
        p_tail = 0.5 * erfc(ADC_MIN / (noise_adc * np.sqrt(2.0)))
        n_noise = rng.poisson(npix * p_tail)
        cand = rng.integers(0, npix, n_noise)
        vals = -noise_adc * ndtri(np.maximum(rng.random(n_noise) * p_tail, 1e-300))
        good = np.ones(n_noise, bool)
        if dead is not None:
            good &= ~dead[cand % n_wires + wire0]
        if pix.size:
            at = np.minimum(np.searchsorted(pix, cand), pix.size - 1)
            good &= pix[at] != cand
        cand, vals = cand[good], vals[good]
        cand, first = np.unique(cand, return_index=True)
        vals = vals[first]
        pix = np.concatenate([pix, cand])
        adc = np.concatenate([adc, vals])
        plab = np.concatenate([plab, np.full(cand.size, IGNORE, np.uint8)])
        pclu = np.concatenate([pclu, np.full(cand.size, -1, np.int32)])
        order = np.argsort(pix, kind="stable")
        pix, adc, plab, pclu = pix[order], adc[order], plab[order], pclu[order]
    coords = np.stack([pix // n_wires, pix % n_wires], axis=1).astype(np.int32)
    return Rendered(coords, np.minimum(adc, ADC_MAX).astype(np.float32)[:, None], plab, pclu)


def render_voxels(pts: ChargePoints, n: int = CUBE_VOXELS, voxel: float = VOXEL_CM) -> Rendered:
    """Voxelise charge samples in the n^3 cube of ``voxel`` cm (no noise: 3D truth-like)."""
    ijk = np.floor(pts.pos / voxel).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < n), axis=1)
    ijk = ijk[ok]
    lin = (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]
    pix, ch, lab, clu = accumulate_pixels(lin, pts.q[ok], pts.label[ok], pts.cluster[ok], n**3)
    keep = ch >= ADC_MIN
    pix, ch, lab, clu = pix[keep], ch[keep], lab[keep], clu[keep]
    coords = np.stack([pix // (n * n), (pix // n) % n, pix % n], axis=1).astype(np.int32)
    return Rendered(coords, np.minimum(ch, ADC_MAX).astype(np.float32)[:, None], lab, clu)
