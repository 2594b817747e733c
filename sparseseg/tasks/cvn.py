"""The CVN event classifier (:mod:`sparseseg.models.cvn`): its data -- dense 3-view images of
simulated interactions, optionally class-balanced -- and its task."""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np
import torch

from ..classes import CVN_CLASSES
from ..metrics import classification_table
from ..models.cvn import calibrated, model_input
from . import StepData, forward_all, to_device

TOPOLOGY_CLASS = {"ccmu": 0, "cce": 1, "ncpi0": 2}
"""Simulator topology -> CVN class index."""


def balanced_indices(n: int, seed: int, start: int = 0, preset: str = "crop512", rotate: int = 0) -> list[int]:
    """Stream indices ``>= start`` of ``n`` interactions with (as nearly as ``n`` allows) equal
    numbers of each CVN class: the first of each class in stream order until its quota
    ``n // 3`` (+1 for ``n % 3`` classes, starting at class ``rotate % 3``) is met. Topologies
    come from :func:`sparseseg.simulate.interaction_topology`, so nothing is simulated here."""
    from ..simulate import interaction_topology

    k = len(CVN_CLASSES)
    quota = [n // k + (1 if (c - rotate) % k < n % k else 0) for c in range(k)]
    picked, index = [], int(start)
    while len(picked) < n:
        c = TOPOLOGY_CLASS.get(interaction_topology(preset, seed, index))
        if c is not None and quota[c] > 0:
            quota[c] -= 1
            picked.append(index)
        index += 1
    return picked


def cvn_dataset(n: int, seed: int = 0, size: int = 500, start: int = 0, preset: str = "crop512",
                indices: Sequence[int] | None = None, hadronic: bool = True,
                conditions=None) -> tuple[np.ndarray, np.ndarray]:
    """Dense 3-view images and labels of ``n`` simulated neutrino interactions.

    Interactions ``start, start + 1, ...`` of the simulator stream ``(preset, seed)`` are
    drawn; those whose topology is ccmu (nu_mu CC), cce (nu_e CC) or ncpi0 (NC) are kept
    (particle bombs are skipped) until ``n`` are collected; or, with ``indices``, exactly those
    interactions of the stream (e.g. from :func:`balanced_indices`). Each plane's view (the 512 x 512
    window around the vertex of the ``crop512`` preset, cosmics included) is densified and
    centre-cropped, or zero-padded, to ``size`` x ``size``. ``hadronic``: as in
    :func:`~sparseseg.simulate.simulate_full`; ``conditions`` (a
    :class:`~sparseseg.simulate.detector.Conditions`, None = the preset's nominal detector)
    changes only the detector response, never the interactions.

    Returns
    -------
    images : float32 (n, 3, size, size)
        ADC per pixel, planes U, V, Y; 0 where no pixel passed the 10 ADC threshold.
    labels : int64 (n,)
        0 nu_mu CC, 1 nu_e CC, 2 NC (see :data:`CVN_CLASSES`).
    """
    from ..simulate import simulate_full

    if n < 0 or size < 1:
        raise ValueError(f"cvn_dataset: n must be >= 0 and size >= 1, got n={n}, size={size}")
    images = np.zeros((n, 3, size, size), np.float32)
    labels = np.zeros(n, np.int64)
    if indices is None:  # topologies are known without simulating: particle bombs are never simulated
        indices = neutrino_indices(n, seed, start, preset)
    elif len(indices) != n:
        raise ValueError(f"cvn_dataset: {len(indices)} indices given for n={n}")
    for k, index in enumerate(indices):
        events, truth = simulate_full(preset, seed, int(index), conditions=conditions, hadronic=hadronic)
        if truth.topology not in TOPOLOGY_CLASS:
            raise ValueError(f"cvn_dataset: interaction {index} of ({preset}, {seed}) is a {truth.topology}, "
                             "not a neutrino interaction")
        images[k] = cvn_views(events, size)
        labels[k] = TOPOLOGY_CLASS[truth.topology]
    return images, labels


def crop_origin(shape, size: int) -> tuple[int, int]:
    """(row, column) where the centred ``size`` x ``size`` CVN view starts in an image of ``shape``."""
    return max(0, (shape[0] - size) // 2), max(0, (shape[1] - size) // 2)


def cvn_views(events, size: int = 500) -> np.ndarray:
    """The CVN input (3, size, size) of one interaction's three plane Events: each view
    densified and centre-cropped, or zero-padded, to ``size`` x ``size``."""
    views = np.zeros((len(events), size, size), np.float32)
    for p, ev in enumerate(events):
        img = ev.to_dense()
        r0, c0 = crop_origin(img.shape, size)
        crop = img[r0 : r0 + size, c0 : c0 + size]
        views[p, : crop.shape[0], : crop.shape[1]] = crop
    return views


def neutrino_indices(n: int, seed: int, start: int = 0, preset: str = "crop512") -> list[int]:
    """The stream indices :func:`cvn_dataset` ``(n, seed, start)`` draws: the first ``n``
    interactions from ``start`` whose topology is a CVN class (nothing is simulated)."""
    from ..simulate import interaction_topology

    picked, index = [], int(start)
    while len(picked) < n:
        if interaction_topology(preset, seed, index) in TOPOLOGY_CLASS:
            picked.append(index)
        index += 1
    return picked


class CVNTask:
    """Cross-entropy on nu_mu CC / nu_e CC / NC; with ``data.balance`` the training stream
    holds the three classes equally often."""

    classes = list(CVN_CLASSES)

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.preset = cfg["data"]["simulate"] or "crop512"
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])
        self.hadronic = bool(cfg["data"].get("hadronic", True))
        self.input_norm = cfg["model"].get("input_norm", "none")  # checked by the model's builder

    def batches(self, rank: int, world: int) -> StepData:
        t = self.cfg["train"]
        n = int(t["batch_size"])
        if self.cfg["data"]["balance"]:
            # equal classes: nu_e CC is ~15 % of the stream, so micro-batch k scans from 8nk
            def make(k):
                idx = balanced_indices(n, self.seed, start=k * 8 * n, preset=self.preset, rotate=k)
                return cvn_dataset(n, self.seed, preset=self.preset, indices=idx, hadronic=self.hadronic)
        else:
            # interaction k*2n.. of the stream: particle bombs are skipped, so leave room
            def make(k):
                return cvn_dataset(n, self.seed, start=k * 2 * n, preset=self.preset, hadronic=self.hadronic)
        return StepData(make, t["accumulate"], rank, world)

    def prepare(self, micro_batch, device):
        x, y = micro_batch
        return (*to_device(calibrated(x, self.input_norm), y, device), 1.0)

    @staticmethod
    def loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y)

    @staticmethod
    def correct(logits, y):
        return int((logits.argmax(1) == y).sum()), len(y)

    def validation(self):
        return cvn_dataset(int(self.cfg["data"]["val_images"]), self.val_seed, preset=self.preset,
                           hadronic=self.hadronic)

    def evaluate(self, model, val, batch_size: int = 8) -> dict[str, Any]:
        """Cross-entropy, accuracy, and per-class efficiency and purity."""
        x, y = val
        logits, loss = forward_all(model, x, batch_size, self.loss, y, transform=partial(model_input, model))
        pred = logits.argmax(1).numpy() if logits is not None else np.zeros(0, np.int64)
        table = classification_table(y, pred, len(self.classes), self.classes)
        return {"loss": loss, "accuracy": table["accuracy"],
                "efficiency": dict(zip(self.classes, table["efficiency"])),
                "purity": dict(zip(self.classes, table["purity"])), "confusion": table["confusion"]}


def cvn_probabilities(model, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class probabilities (n, 3) of ``model`` on images ``x`` (n, 3, H, W)."""
    logits, _ = forward_all(model, x, batch_size, transform=partial(model_input, model))
    return torch.softmax(logits, 1).numpy() if logits is not None else np.zeros((0, len(CVN_CLASSES)), np.float32)


def nue_cut(p: np.ndarray, y: np.ndarray, min_purity: float = 0.8) -> float | None:
    """The lowest cut on P(nu_e CC) whose selection of these interactions (probabilities ``p``
    (n, 3), classes ``y``) has purity >= ``min_purity``; None when no cut reaches it."""
    from ..metrics import cut_for_purity

    nue = CVN_CLASSES.index("nu_e CC")
    return cut_for_purity(np.asarray(p)[:, nue], np.asarray(y) == nue, min_purity)


def nue_selection_at(cut: float | None, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """{cut, efficiency, purity} of the selection P(nu_e CC) >= ``cut`` on (p, y); efficiency
    and purity 0 when ``cut`` is None."""
    from ..metrics import binary_scores

    if cut is None:
        return {"cut": None, "efficiency": 0.0, "purity": 0.0}
    nue = CVN_CLASSES.index("nu_e CC")
    s = binary_scores(np.asarray(y) == nue, np.asarray(p)[:, nue] >= cut)
    return {"cut": cut, "efficiency": s["efficiency"], "purity": s["purity"]}


def nue_selection(p_tune: np.ndarray, y_tune: np.ndarray, p: np.ndarray, y: np.ndarray,
                  min_purity: float = 0.8) -> dict[str, Any]:
    """The nu_e CC selection P(nu_e CC) >= cut, the cut chosen on tuning interactions (the
    lowest with purity >= ``min_purity`` there, :func:`nue_cut`) and applied to others: {cut,
    efficiency, purity} on (p, y); cut None (efficiency and purity 0) when no cut reaches the purity."""
    return nue_selection_at(nue_cut(p_tune, y_tune, min_purity), p, y)

