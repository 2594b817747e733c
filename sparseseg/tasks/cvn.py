"""The CVN event classifier on simulated 3-view interactions (see :mod:`sparseseg.models.cvn`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..classes import CVN_CLASSES
from ..metrics import classification_table
from . import StepData, forward_all, to_device


class CVNTask:
    """Cross-entropy on nu_mu CC / nu_e CC / NC; with ``data.balance`` the training stream
    holds the three classes equally often."""

    classes = list(CVN_CLASSES)

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.preset = cfg["data"]["simulate"] or "crop512"
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])

    def batches(self, rank: int, world: int) -> StepData:
        from ..models.cvn import balanced_indices, cvn_dataset

        t = self.cfg["train"]
        n = int(t["batch_size"])
        if self.cfg["data"]["balance"]:
            # equal classes: nu_e CC is ~15 % of the stream, so micro-batch k scans from 8nk
            def make(k):
                idx = balanced_indices(n, self.seed, start=k * 8 * n, preset=self.preset, rotate=k)
                return cvn_dataset(n, self.seed, preset=self.preset, indices=idx)
        else:
            # interaction k*2n.. of the stream: particle bombs are skipped, so leave room
            def make(k):
                return cvn_dataset(n, self.seed, start=k * 2 * n, preset=self.preset)
        return StepData(make, t["accumulate"], rank, world)

    def prepare(self, micro_batch, device):
        return (*to_device(*micro_batch, device), 1.0)

    @staticmethod
    def loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y)

    @staticmethod
    def correct(logits, y):
        return int((logits.argmax(1) == y).sum()), len(y)

    def validation(self):
        from ..models.cvn import cvn_dataset

        return cvn_dataset(int(self.cfg["data"]["val_images"]), self.val_seed, preset=self.preset)

    def evaluate(self, model, val, batch_size: int = 8) -> dict[str, Any]:
        """Cross-entropy, accuracy, and per-class efficiency and purity."""
        x, y = val
        logits, loss = forward_all(model, x, batch_size, self.loss, y)
        pred = logits.argmax(1).numpy() if logits is not None else np.zeros(0, np.int64)
        table = classification_table(y, pred, len(self.classes), self.classes)
        return {"loss": loss, "accuracy": table["accuracy"],
                "efficiency": dict(zip(self.classes, table["efficiency"])),
                "purity": dict(zip(self.classes, table["purity"])), "confusion": table["confusion"]}
