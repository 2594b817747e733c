"""The per-hit patch classifier (see :mod:`sparseseg.models.patch_cnn`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..classes import PATCH_CLASSES
from ..metrics import binary_scores
from . import StepData, forward_all, to_device


class PatchTask:
    """Patches around hits of simulated planes, sampled so that track, EM, Michel and none
    hits are equally frequent; loss = 0.1 x CE(EM/track/none) + 1.0 x BCE(Michel), as the
    published network."""

    classes = list(PATCH_CLASSES)

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.preset = cfg["data"]["simulate"] or "crop512"
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])
        self.size = int(cfg["model"].get("patch", 48))

    def _make(self, seed: int, n: int, k: int):
        from ..patches import extract_patches, patch_targets, sample_hits
        from ..simulate import simulate_interaction

        planes = [e for e in simulate_interaction(self.preset, seed, k) if len(e)]
        rng = np.random.default_rng([seed, k, 77])
        xs, cls, mich = [], [], []
        for i, ev in enumerate(planes):
            m = n // len(planes) + (1 if i < n % len(planes) else 0)
            rows = sample_hits(ev.labels, m, rng)
            xs.append(extract_patches(ev, rows, self.size))
            c, mi = patch_targets(ev.labels[rows])
            cls.append(c)
            mich.append(mi)
        return np.concatenate(xs), (np.concatenate(cls), np.concatenate(mich))

    def batches(self, rank: int, world: int) -> StepData:
        t = self.cfg["train"]
        n = int(t["batch_size"])
        return StepData(lambda k: self._make(self.seed, n, k), t["accumulate"], rank, world)

    def prepare(self, micro_batch, device):
        return (*to_device(*micro_batch, device), 1.0)

    @staticmethod
    def loss(raw, y):
        cls, mich = y
        return 0.1 * torch.nn.functional.cross_entropy(raw[:, :3], cls) + \
            torch.nn.functional.binary_cross_entropy_with_logits(raw[:, 3], mich)

    @staticmethod
    def correct(raw, y):
        return int((raw[:, :3].argmax(1) == y[0]).sum()), len(y[0])

    def validation(self):
        n = int(self.cfg["data"]["val_images"])
        parts = [self._make(self.val_seed, 256, k) for k in range(n)]
        return (np.concatenate([p[0] for p in parts]),
                (np.concatenate([p[1][0] for p in parts]), np.concatenate([p[1][1] for p in parts])))

    def evaluate(self, model, val, batch_size: int = 512) -> dict[str, Any]:
        """Loss, EM/track/none accuracy, Michel efficiency and purity at 0.5, Michel ROC AUC
        (on balanced validation patches)."""
        from sklearn.metrics import roc_auc_score

        x, (cls, mich) = val
        raw, _ = forward_all(model, x, 512)
        raw = raw if raw is not None else torch.zeros(0, 4)
        y = (torch.from_numpy(cls), torch.from_numpy(mich))
        loss = float(self.loss(raw, y)) if len(x) else 0.0
        p = torch.sigmoid(raw[:, 3]).numpy()
        true = mich > 0.5
        scores = binary_scores(true, p > 0.5)
        return {"loss": loss, "accuracy": self.correct(raw, y)[0] / max(1, len(x)),
                "michel_efficiency": scores["efficiency"], "michel_purity": scores["purity"],
                # on the logits: the same ranking as the probabilities, without float32 sigmoid ties
                "michel_auc": float(roc_auc_score(true, raw[:, 3].numpy())) if 0 < true.sum() < len(true) else None}
