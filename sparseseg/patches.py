"""Patches around hits for the per-hit classifier (``patch-cnn``): cutting, targets,
balanced sampling for training, and scoring every hit of an event.

Targets follow the ProtoDUNE EmTrackMichel scheme mapped onto our classes: track = HIP + MIP,
EM = shower + delta + Michel, none = no truth (label 255, noise above threshold); the Michel
target is class Michel.
"""
from __future__ import annotations

import numpy as np
import torch

from .classes import IGNORE, MICHEL, MIP, NUM_CLASSES, SHOWER

HEAD_EM, HEAD_TRACK, HEAD_NONE = 0, 1, 2
"""Indices of the patch classifier's softmax head (order EM, track, none, as the published
network); not the 5-class codes of :mod:`sparseseg.classes`."""


def extract_patches(event, rows: np.ndarray | None = None, size: int = 48) -> np.ndarray:
    """Patches (n, 1, size, size) float32 of the event's ADC, centred on the hits ``rows``
    (all hits by default): the hit sits at (size // 2, size // 2); outside the image is 0."""
    if event.ndim != 2:
        raise ValueError("patches: the patch classifier works on 2D wire-plane images")
    rows = np.arange(len(event)) if rows is None else np.asarray(rows)
    half = size // 2
    dense = np.pad(event.to_dense(), half)
    offs = np.arange(size) - half
    r = event.coords[rows, 0][:, None, None] + half + offs[None, :, None]
    c = event.coords[rows, 1][:, None, None] + half + offs[None, None, :]
    return dense[r, c][:, None].astype(np.float32)


def patch_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class in EM/track/none as int64, Michel as float32) per hit from our 5-class labels."""
    labels = np.asarray(labels)
    cls = np.full(labels.shape, HEAD_EM, np.int64)
    cls[labels <= MIP] = HEAD_TRACK  # HIP and MIP
    cls[labels == IGNORE] = HEAD_NONE
    return cls, (labels == MICHEL).astype(np.float32)


def sample_hits(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` hit rows drawn with replacement so that track, EM (not Michel), Michel and none
    hits are equally likely (categories absent from the image are skipped)."""
    labels = np.asarray(labels)
    cat = np.where(labels <= MIP, 0, np.where(labels == MICHEL, 2, np.where(labels == IGNORE, 3, 1)))
    counts = np.bincount(cat, minlength=4).astype(float)
    p = np.where(counts[cat] > 0, 1.0 / np.maximum(counts[cat], 1), 0.0)
    return rng.choice(len(labels), size=n, replace=True, p=p / p.sum())


@torch.no_grad()
def score_event(model, event, batch: int = 2048, device: str = "cpu") -> np.ndarray:
    """Probabilities (N, 4) = EM, track, none, Michel for every hit of ``event``."""
    out = np.zeros((len(event), 4), np.float32)
    size = model.config.patch
    for i in range(0, len(event), batch):
        rows = np.arange(i, min(i + batch, len(event)))
        x = torch.from_numpy(extract_patches(event, rows, size)).to(device)
        out[rows] = model.probabilities(model(x)).cpu().numpy()
    return out


def to_class_scores(probs: np.ndarray) -> np.ndarray:
    """Patch-classifier probabilities (N, 4) -> the 5-class score layout of ``predict``:
    HIP 0, MIP = track, shower = EM x (1 - Michel), delta 0, Michel = EM x Michel. The five sum
    to 1 - P(none); the predicted class is their argmax, so track/shower and Michel are scored
    the same way as for the segmentation models."""
    em, trk, mich = probs[:, HEAD_EM], probs[:, HEAD_TRACK], probs[:, 3]
    out = np.zeros((len(probs), NUM_CLASSES), np.float32)
    out[:, MIP] = trk
    out[:, SHOWER] = em * (1 - mich)
    out[:, MICHEL] = em * mich
    return out
