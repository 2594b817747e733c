"""The label convention: which class a deposit's pixels get, where physics alone does not say.

Two conventions, chosen with ``label_rule``:

``visible`` (default, since simulator 0.3)
    A class must be resolvable at the detector's granularity.

    - A knock-on electron (delta ray) whose pixels are fewer than
      :data:`DELTA_MIN_PIXELS` and all touch its parent track (each within one pixel of a
      pixel of the parent, 8-neighbourhood in 2D, 26 in 3D) is part of that track's charge:
      its pixels take the parent's class and particle id. Such an electron (below ~3-4 MeV, a
      CSDA range under ~1.5 cm = 5 pixels of 3 mm) never leaves the track's footprint, so no
      detector and no reconstruction can see it apart from the track's own width and charge
      fluctuations. A stub that reaches out of the footprint, or one of 5 pixels or more, stays
      ``delta``.
    - A knock-on electron above :data:`DELTA_SHOWER_MEV` (the critical energy of argon, where
      radiative losses overtake ionisation) develops an electromagnetic cascade: it is
      labelled ``shower``.

``legacy``
    Every knock-on electron above the production cut (1 MeV) is ``delta``, whatever its size
    and energy (the convention of the shipped weights up to simulator 0.2).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..classes import DELTA, MIP
from .physics import E_CRITICAL

LABEL_RULES = ("visible", "legacy")
DELTA_MIN_PIXELS = 5
"""Delta clusters with fewer pixels than this, all touching the parent track, fold into it."""
DELTA_SHOWER_MEV = E_CRITICAL
"""Knock-on electrons above this kinetic energy (MeV) are labelled shower."""


def check_label_rule(rule: str) -> str:
    if rule not in LABEL_RULES:
        raise ValueError(f"label_rule {rule!r} unknown; expected one of {', '.join(LABEL_RULES)}")
    return rule


def delta_parents(truth) -> dict[int, int]:
    """Delta-ray particle id -> the id of the track that knocked it out."""
    out = {}
    for cid, parent in zip(truth.em_cluster.tolist(), truth.em_parent):
        if isinstance(parent, str) and parent.startswith("delta:"):
            out[int(cid)] = int(parent.split(":", 1)[1])
    return out


def fold_unresolved_deltas(coords: np.ndarray, shape, labels: np.ndarray, clusters: np.ndarray,
                           parent_of: dict[int, int], min_pixels: int = DELTA_MIN_PIXELS):
    """Relabel small delta clusters whose every pixel touches their parent track.

    coords (N, D) int; labels uint8 (N,); clusters int32 (N,). Returns new (labels, clusters);
    folded pixels take class MIP (deltas come off muons and pions) and the parent's id.
    """
    labels = labels.copy()
    clusters = clusters.copy()
    is_delta = labels == DELTA
    if not is_delta.any() or not parent_of:
        return labels, clusters
    ids, counts = np.unique(clusters[is_delta], return_counts=True)
    small = ids[counts < min_pixels]
    cand = np.flatnonzero(is_delta & np.isin(clusters, small))
    if cand.size == 0:
        return labels, clusters
    table_ids = np.array(sorted(parent_of), dtype=np.int64)
    table_par = np.array([parent_of[i] for i in table_ids.tolist()], dtype=np.int64)
    pos = np.clip(np.searchsorted(table_ids, clusters[cand]), 0, table_ids.size - 1)
    known = table_ids[pos] == clusters[cand]
    par = np.where(known, table_par[pos], -2)
    # linear keys with one empty slot per side, so neighbours never wrap across rows
    dims = np.asarray(shape, dtype=np.int64) + 2
    strides = np.ones(dims.size, dtype=np.int64)
    for d in range(dims.size - 2, -1, -1):
        strides[d] = strides[d + 1] * dims[d + 1]
    keys = (coords.astype(np.int64) + 1) @ strides
    order = np.argsort(keys)
    skeys, sclu = keys[order], clusters[order]
    touch = np.zeros(cand.size, bool)
    for off in itertools.product((-1, 0, 1), repeat=coords.shape[1]):
        if not any(off):
            continue
        nk = keys[cand] + int(np.dot(off, strides))
        j = np.clip(np.searchsorted(skeys, nk), 0, skeys.size - 1)
        touch |= (skeys[j] == nk) & (sclu[j] == par)
    loose = np.unique(clusters[cand][~touch])
    fold = cand[~np.isin(clusters[cand], loose)]
    labels[fold] = MIP
    clusters[fold] = par[np.searchsorted(cand, fold)]
    return labels, clusters
