"""Pixel segmentation: training images (simulated on the fly under drawn detector
conditions, or read from HDF5), their pixel weights, and validation by confusion matrix."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classes import CLASS_NAMES, IGNORE, NUM_CLASSES
from ..losses import weighted_cross_entropy
from ..metrics import confusion_matrix, summarize
from ..weighting import WeightConfig, pixel_weights
from . import StepData


def draw_conditions(augment: dict | None, preset: str, seed: int, k: int):
    """Detector conditions for simulated training interaction ``k`` under ``data.augment``
    (None: the preset's nominal detector). A pure function of (augment, seed, k), so a resumed
    run sees the same images. Gains are drawn log-uniformly (overall) times a log-normal
    per-plane spread; noise, coherent noise, dead-wire bands and the threshold uniformly
    (the threshold stays at 10 ADC in half of the augmented interactions)."""
    if not augment:
        return None
    import dataclasses

    from ..simulate.detector import default_conditions

    rng = np.random.default_rng([int(seed), int(k), 0xA06])
    if rng.random() >= float(augment["probability"]):
        return None
    base = default_conditions(preset)
    lo, hi = augment["gain"]
    gain = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if preset == "pilarnet":  # 3D volumes: only the overall scale applies
        return dataclasses.replace(base, gain=gain)
    plane = tuple(float(x) for x in np.exp(rng.normal(0.0, float(augment["plane_gain_spread"]), 3)))
    thr_lo, thr_hi = augment["threshold"]
    threshold = float(rng.uniform(thr_lo, thr_hi)) if rng.random() < 0.5 else float(thr_lo)
    return dataclasses.replace(
        base, gain=gain, plane_gain=plane, noise_adc=float(rng.uniform(*augment["noise"])),
        coherent_noise_adc=float(rng.uniform(*augment["coherent"])),
        extra_dead_bands=int(rng.integers(augment["dead_bands"][0], augment["dead_bands"][1] + 1)),
        threshold=threshold)


class ImageSource:
    """Images by global index j: simulated on the fly, or read from HDF5 file(s)."""

    def __init__(self, data_cfg: dict, seed: int | None = None, files=None) -> None:
        self.preset = data_cfg["simulate"] if files is None else None
        self.seed = int(data_cfg["seed"] if seed is None else seed)
        self.planes = data_cfg.get("planes")
        self.augment = data_cfg.get("augment")
        self.label_rule = data_cfg.get("label_rule", "visible")
        self.hadronic = bool(data_cfg.get("hadronic", True))
        self.files = files if files is not None else data_cfg["train"]
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._dataset = None
        self._perm: dict[int, np.ndarray] = {}
        if self.preset is not None:
            from ..simulate import PRESETS

            if self.preset not in PRESETS:
                raise ValueError(f"config: data.simulate {self.preset!r} unknown; presets: {', '.join(PRESETS)}")
            self.views = 1 if self.preset == "pilarnet" else (len(self.planes) if self.planes else 3)

    def _interaction(self, k: int) -> list:
        if k not in self._cache:
            from ..simulate import simulate_interaction

            cond = draw_conditions(self.augment, self.preset, self.seed, k)
            evs = simulate_interaction(self.preset, self.seed, k, conditions=cond, label_rule=self.label_rule,
                                       hadronic=self.hadronic)
            if self.planes:
                evs = [e for e in evs if e.plane in self.planes]
            self._cache[k] = evs
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return self._cache[k]

    def _files(self):
        if self._dataset is None:
            from ..io import EventDataset

            files = [self.files] if isinstance(self.files, (str, Path)) else list(self.files)
            self._dataset = EventDataset([str(f) for f in files])
            if len(self._dataset) == 0:
                raise ValueError(f"training files {files} hold no events")
        return self._dataset

    def __len__(self) -> int:
        return len(self._files()) if self.preset is None else 2**62

    def get(self, j: int):
        if self.preset is not None:
            return self._interaction(j // self.views)[j % self.views]
        ds = self._files()
        n = len(ds)
        epoch, pos = divmod(j, n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
        return ds[int(self._perm[epoch][pos])]


def labels_of(events) -> torch.Tensor:
    """The pixel labels of a list of events, concatenated, as int64."""
    return torch.from_numpy(np.concatenate([e.labels for e in events]).astype(np.int64))


@torch.no_grad()
def evaluate_events(model, events, batch_size: int = 8) -> dict[str, Any]:
    """Loss (unweighted CE), accuracy and per-class efficiency of ``model`` on ``events``."""
    was_training = model.training
    model.eval()
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    loss_sum, n_sum = 0.0, 0
    for i in range(0, len(events), batch_size):
        chunk = events[i : i + batch_size]
        logits = model(chunk)
        labels = labels_of(chunk)
        valid = labels != IGNORE
        n = int(valid.sum())
        if n:
            loss_sum += float(weighted_cross_entropy(logits, labels)) * n
            n_sum += n
            cm += confusion_matrix(labels[valid].numpy(), logits.argmax(1)[valid].numpy())
    model.train(was_training)
    s = summarize(cm)
    return {
        "loss": loss_sum / max(1, n_sum),
        "accuracy": s["accuracy"] or 0.0,
        "track_shower_accuracy": s["track_shower_accuracy"] or 0.0,
        "efficiency": s["efficiency"],
    }


class SegmentationTask:
    """Pixel segmentation with the sparse models: events with pixel weights (cluster, vertex,
    class, plane; :mod:`sparseseg.weighting`), weighted cross-entropy; validation on nominal
    simulated images (or ``data.val`` files)."""

    classes = list(CLASS_NAMES)

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    def batches(self, rank: int, world: int) -> StepData:
        t = self.cfg["train"]
        wcfg = WeightConfig(**{k: v for k, v in self.cfg["weights"].items()})
        source, n = ImageSource(self.cfg["data"]), int(t["batch_size"])

        def make(k):
            events = [source.get(k * n + b) for b in range(n)]
            return events, pixel_weights(events, wcfg)

        return StepData(make, t["accumulate"], rank, world)

    @staticmethod
    def prepare(micro_batch, device):
        """(events, (labels, weights), total weight of the labelled pixels)."""
        events, weights = micro_batch
        labels = labels_of(events).to(device)
        w = torch.from_numpy(weights).to(device)
        return events, (labels, w), float((w * (labels != IGNORE)).sum())

    @staticmethod
    def loss(logits, y):
        return weighted_cross_entropy(logits, y[0], y[1])

    @staticmethod
    def correct(logits, y):
        valid = y[0] != IGNORE
        return int((logits.argmax(1)[valid] == y[0][valid]).sum()), int(valid.sum())

    def validation(self) -> list:
        d = self.cfg["data"]
        if d["val"]:
            vsrc = ImageSource(d, files=d["val"])
            return [vsrc._files()[i] for i in range(min(len(vsrc), d["val_images"]))]
        vsrc = ImageSource(dict(d, augment=None), seed=d["val_seed"])  # nominal detector
        return [vsrc.get(j) for j in range(d["val_images"])]

    def evaluate(self, model, events, batch_size: int = 8) -> dict[str, Any]:
        return evaluate_events(model, events, batch_size)
