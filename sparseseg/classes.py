"""Semantic classes (SparseSSNet order) and their track/shower grouping.

Overlapping deposits take the lowest code: HIP > MIP > shower > delta > Michel.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("HIP", "MIP", "shower", "delta", "Michel")
NUM_CLASSES = len(CLASS_NAMES)
HIP, MIP, SHOWER, DELTA, MICHEL = range(NUM_CLASSES)
IGNORE = 255
"""Label of a kept pixel without truth (noise above threshold): excluded from loss and metrics."""

TRACK_CLASSES = (HIP, MIP)
SHOWER_CLASSES = (SHOWER, DELTA, MICHEL)
TRACK, SHOWER_GROUP = 0, 1
TRACK_SHOWER_NAMES = ("track", "shower")

PLANES = ("U", "V", "Y")

# Outputs of the other model families (one place for every class list; see sparseseg.models)
ROI_CLASSES: tuple[str, ...] = ("signal",)
"""DNN-ROI networks: one probability per (wire, time bin) that it holds true signal."""
CVN_CLASSES: tuple[str, ...] = ("nu_mu CC", "nu_e CC", "NC")
"""CVN event classifier, in logit order."""
PATCH_CLASSES: tuple[str, ...] = ("EM", "track", "none", "Michel")
"""Per-hit patch classifier: the three softmax classes, then the Michel sigmoid."""

# Colours for event displays, one per class, from the colour-blind friendly Okabe-Ito palette
# and chosen to stay apart from each other and visible on the displays' black panels:
# HIP vermillion, MIP sky blue, shower bluish green, delta reddish purple, Michel yellow.
CLASS_COLORS = ("#D55E00", "#56B4E9", "#009E73", "#CC79A7", "#F0E442")


def class_index(name: str) -> int:
    """Code of a class given its name (case-insensitive)."""
    lowered = [c.lower() for c in CLASS_NAMES]
    try:
        return lowered.index(name.lower())
    except ValueError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None


def to_track_shower(labels: np.ndarray) -> np.ndarray:
    """Collapse 5-class codes to 0 = track (HIP, MIP), 1 = shower (shower, delta, Michel).

    255 (ignore) stays 255.
    """
    labels = np.asarray(labels)
    out = np.where(labels <= MIP, TRACK, SHOWER_GROUP).astype(np.uint8)
    out[labels == IGNORE] = IGNORE
    return out
