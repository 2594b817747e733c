"""DNN-ROI networks on simulated single-plane waveform images (see :mod:`sparseseg.roi`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..classes import ROI_CLASSES
from ..metrics import binary_scores
from . import StepData, forward_all, to_device


class ROITask:
    """BCE on the signal mask; validation: pixel accuracy and the mask's IoU, efficiency and
    purity at 0.5."""

    classes = list(ROI_CLASSES)

    def __init__(self, cfg: dict) -> None:
        from ..roi import ROIConfig

        self.cfg = cfg
        self.roi = ROIConfig()
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])

    def batches(self, rank: int, world: int) -> StepData:
        from ..roi import roi_dataset

        t = self.cfg["train"]
        n = int(t["batch_size"])
        return StepData(lambda k: roi_dataset(n, self.seed, self.roi, start=k * n), t["accumulate"], rank, world)

    def prepare(self, micro_batch, device):
        return (*to_device(*micro_batch, device), 1.0)

    @staticmethod
    def loss(prob, y):
        return torch.nn.functional.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), y)

    @staticmethod
    def correct(prob, y):
        return int(((prob > 0.5) == (y > 0.5)).sum()), y.numel()

    def validation(self):
        from ..roi import roi_dataset

        return roi_dataset(int(self.cfg["data"]["val_images"]), self.val_seed, self.roi)

    def evaluate(self, model, val, batch_size: int = 8) -> dict[str, Any]:
        x, y = val
        prob, loss = forward_all(model, x, batch_size, self.loss, y)
        sel = (prob > 0.5).numpy() if prob is not None else np.zeros(y.shape, bool)
        scores = binary_scores(y > 0.5, sel)
        return {"loss": loss, **{k: scores[k] for k in ("accuracy", "iou", "efficiency", "purity")}}
