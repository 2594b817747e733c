"""What the training loop needs to know about a model family, beyond the loop itself.

:func:`sparseseg.train.train` is one loop (schedule, accumulation, DDP, checkpoints, resume,
logs) for every model; a task supplies the model-specific parts:

- ``batches(rank, world)``: a Dataset whose item ``s`` is the list of micro-batches of step
  ``s`` on that rank (a pure function of the config and ``s``, so resume is exact);
- ``step(net, micro_batches, device, precision, sync)``: forward and backward, returning
  (loss, accuracy) of the step;
- ``validation()`` (the held-out set) and ``evaluate(model, val)``: a dict with at least
  ``loss`` and ``accuracy``; best.pt follows ``accuracy``;
- ``classes``: what the outputs mean (stored in checkpoints).

Tasks here: ``roi`` (DNN-ROI networks: simulated waveform images, BCE on the signal mask) and
``cvn`` (event classifier: simulated 3-view interactions, cross-entropy on nu_mu CC / nu_e CC /
NC). The sparse segmentation task lives in :mod:`sparseseg.train`.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from .classes import CVN_CLASSES, PATCH_CLASSES, ROI_CLASSES
from .metrics import binary_scores, classification_table


class _StepData(torch.utils.data.Dataset):
    """Item s = ``accumulate`` micro-batches (x, y) made by ``make(n, index)``; micro-batch j of
    step s on rank r is number ``(s * world + r) * accumulate + j`` of the stream."""

    def __init__(self, make, batch_size: int, accumulate: int, rank: int, world: int) -> None:
        self.make, self.batch_size, self.accumulate, self.rank, self.world = make, batch_size, accumulate, rank, world

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int):
        out = []
        for j in range(self.accumulate):
            k = (step * self.world + self.rank) * self.accumulate + j
            out.append(self.make(self.batch_size, k))
        return out


def _dense_step(net, micro_batches, device, precision, sync, loss_fn, correct_fn):
    """Forward/backward over micro-batches of equal size: each loss is divided by their number,
    so the gradient equals that of the mean over one large batch."""
    n = len(micro_batches)
    loss_sum, correct, counted = 0.0, 0, 0
    for i, (x, y) in enumerate(micro_batches):
        x = torch.as_tensor(x).to(device)
        y = tuple(torch.as_tensor(v).to(device) for v in y) if isinstance(y, tuple) else torch.as_tensor(y).to(device)
        ctx = sync() if sync is not None and i < n - 1 else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                out = net(x)
            loss = loss_fn(out.float(), y) / n
            loss.backward()
        loss_sum += float(loss.detach())
        with torch.no_grad():
            c, m = correct_fn(out.float(), y)
            correct += c
            counted += m
    return loss_sum, correct / max(1, counted)


class ROITask:
    """DNN-ROI networks on simulated single-plane waveform images (see :mod:`sparseseg.roi`)."""

    classes = list(ROI_CLASSES)

    def __init__(self, cfg: dict) -> None:
        from .roi import ROIConfig

        self.cfg = cfg
        self.roi = ROIConfig()
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])

    def batches(self, rank: int, world: int) -> torch.utils.data.Dataset:
        from .roi import roi_dataset

        t = self.cfg["train"]
        return _StepData(lambda n, k: roi_dataset(n, self.seed, self.roi, start=k * n), t["batch_size"],
                         t["accumulate"], rank, world)

    @staticmethod
    def _loss(prob, y):
        return torch.nn.functional.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), y)

    @staticmethod
    def _correct(prob, y):
        return int(((prob > 0.5) == (y > 0.5)).sum()), y.numel()

    def step(self, net, micro_batches, device, precision="fp32", sync=None):
        return _dense_step(net, micro_batches, device, precision, sync, self._loss, self._correct)

    def validation(self):
        from .roi import roi_dataset

        return roi_dataset(int(self.cfg["data"]["val_images"]), self.val_seed, self.roi)

    @torch.no_grad()
    def evaluate(self, model, val, batch_size: int = 8) -> dict[str, Any]:
        """BCE, pixel accuracy, and the signal mask's IoU, efficiency and purity at 0.5."""
        was = model.training
        model.eval()
        x, y = val
        loss, sel = 0.0, []
        for i in range(0, len(x), batch_size):
            xb, yb = torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size])
            prob = model(xb)
            loss += float(self._loss(prob, yb)) * len(xb)
            sel.append((prob > 0.5).numpy())
        model.train(was)
        scores = binary_scores(y > 0.5, np.concatenate(sel) if sel else np.zeros(y.shape, bool))
        return {"loss": loss / max(1, len(x)), **{k: scores[k] for k in ("accuracy", "iou", "efficiency", "purity")}}


class CVNTask:
    """The CVN event classifier on simulated 3-view interactions (see :mod:`sparseseg.models.cvn`)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.classes = list(CVN_CLASSES)
        self.preset = cfg["data"]["simulate"] or "crop512"
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])

    def batches(self, rank: int, world: int) -> torch.utils.data.Dataset:
        from .models.cvn import balanced_indices, cvn_dataset

        t = self.cfg["train"]
        if self.cfg["data"]["balance"]:
            # equal classes: nu_e CC is ~15 % of the stream, so micro-batch k scans from 8nk
            def make(n, k):
                idx = balanced_indices(n, self.seed, start=k * 8 * n, preset=self.preset, rotate=k)
                return cvn_dataset(n, self.seed, preset=self.preset, indices=idx)
        else:
            # interaction k*2n.. of the stream: particle bombs are skipped, so leave room
            def make(n, k):
                return cvn_dataset(n, self.seed, start=k * 2 * n, preset=self.preset)
        return _StepData(make, t["batch_size"], t["accumulate"], rank, world)

    @staticmethod
    def _loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y)

    @staticmethod
    def _correct(logits, y):
        return int((logits.argmax(1) == y).sum()), len(y)

    def step(self, net, micro_batches, device, precision="fp32", sync=None):
        return _dense_step(net, micro_batches, device, precision, sync, self._loss, self._correct)

    def validation(self):
        from .models.cvn import cvn_dataset

        return cvn_dataset(int(self.cfg["data"]["val_images"]), self.val_seed, preset=self.preset)

    @torch.no_grad()
    def evaluate(self, model, val, batch_size: int = 8) -> dict[str, Any]:
        """Cross-entropy, accuracy, and per-class efficiency and purity."""

        was = model.training
        model.eval()
        x, y = val
        loss, preds = 0.0, []
        for i in range(0, len(x), batch_size):
            xb, yb = torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size])
            logits = model(xb)
            loss += float(self._loss(logits, yb)) * len(xb)
            preds.append(logits.argmax(1).numpy())
        model.train(was)
        table = classification_table(y, np.concatenate(preds) if preds else np.zeros(0, np.int64), len(self.classes), self.classes)
        return {"loss": loss / max(1, len(x)), "accuracy": table["accuracy"],
                "efficiency": dict(zip(self.classes, table["efficiency"])),
                "purity": dict(zip(self.classes, table["purity"])), "confusion": table["confusion"]}


class PatchTask:
    """The per-hit patch classifier: patches around hits of simulated planes, sampled so that
    track, EM, Michel and none hits are equally frequent; loss = 0.1 x CE(EM/track/none) +
    1.0 x BCE(Michel), as the published network."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.classes = list(PATCH_CLASSES)
        self.preset = cfg["data"]["simulate"] or "crop512"
        self.seed, self.val_seed = int(cfg["data"]["seed"]), int(cfg["data"]["val_seed"])
        self.size = int(cfg["model"].get("patch", 48))

    def _make(self, seed: int, n: int, k: int):
        from .patches import extract_patches, patch_targets, sample_hits
        from .simulate import simulate_interaction

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

    def batches(self, rank: int, world: int) -> torch.utils.data.Dataset:
        t = self.cfg["train"]
        return _StepData(lambda n, k: self._make(self.seed, n, k), t["batch_size"], t["accumulate"], rank, world)

    @staticmethod
    def _loss(raw, y):
        cls, mich = y
        return 0.1 * torch.nn.functional.cross_entropy(raw[:, :3], cls) + \
            torch.nn.functional.binary_cross_entropy_with_logits(raw[:, 3], mich)

    @staticmethod
    def _correct(raw, y):
        return int((raw[:, :3].argmax(1) == y[0]).sum()), len(y[0])

    def step(self, net, micro_batches, device, precision="fp32", sync=None):
        return _dense_step(net, micro_batches, device, precision, sync, self._loss, self._correct)

    def validation(self):
        n = int(self.cfg["data"]["val_images"])
        parts = [self._make(self.val_seed, 256, k) for k in range(n)]
        return (np.concatenate([p[0] for p in parts]),
                (np.concatenate([p[1][0] for p in parts]), np.concatenate([p[1][1] for p in parts])))

    @torch.no_grad()
    def evaluate(self, model, val, batch_size: int = 512) -> dict[str, Any]:
        """Loss, EM/track/none accuracy, Michel efficiency and purity at 0.5, Michel ROC AUC
        (on balanced validation patches)."""
        from sklearn.metrics import roc_auc_score

        was = model.training
        model.eval()
        x, (cls, mich) = val
        raws = [model(torch.from_numpy(x[i : i + 512])) for i in range(0, len(x), 512)]
        raw = torch.cat(raws) if raws else torch.zeros(0, 4)
        y = (torch.from_numpy(cls), torch.from_numpy(mich))
        loss = float(self._loss(raw, y)) if len(x) else 0.0
        model.train(was)
        p = torch.sigmoid(raw[:, 3]).numpy()
        true = mich > 0.5
        scores = binary_scores(true, p > 0.5)
        return {"loss": loss, "accuracy": self._correct(raw, y)[0] / max(1, len(x)),
                "michel_efficiency": scores["efficiency"], "michel_purity": scores["purity"],
                "michel_auc": float(roc_auc_score(true, p)) if 0 < true.sum() < len(true) else None}


TASKS = {"roi": ROITask, "cvn": CVNTask, "patch": PatchTask}
"""Task name of a model family (:data:`sparseseg.models.FAMILIES`) -> its dense task class."""


def dense_task(cfg: dict):
    """The task of a dense model config, or None for the segmentation models."""
    from .models import family

    task = TASKS.get(family(cfg["model"]["name"]).task)
    return task(cfg) if task is not None else None
