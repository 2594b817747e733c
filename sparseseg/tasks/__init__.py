"""Training tasks: what the one training loop (:func:`sparseseg.train.train`) needs to know
about a model family, beyond the loop itself. One file per task:

- :mod:`.segment`: pixel segmentation with the sparse UResNet (events, weighted CE);
- :mod:`.roi`: DNN-ROI networks (simulated waveform images, BCE on the signal mask);
- :mod:`.cvn`: the CVN event classifier (simulated 3-view interactions, CE on nu_mu CC /
  nu_e CC / NC);
- :mod:`.patch`: the per-hit patch classifier (balanced hit patches, CE + Michel BCE).

A task supplies:

- ``batches(rank, world)``: a Dataset whose item ``s`` is the list of micro-batches of step
  ``s`` on that rank (:class:`StepData`: a pure function of the config and ``s``, so a resumed
  run sees the same data);
- ``prepare(micro_batch, device)``: (inputs, targets, share) -- ``share`` is the micro-batch's
  part of the step's loss normalisation (its total pixel weight for segmentation, 1 for
  equal-size dense micro-batches);
- ``loss(outputs, targets)`` (mean over the micro-batch) and ``correct(outputs, targets)``
  (number right, number counted);
- ``validation()`` (the held-out set) and ``evaluate(model, val, batch_size)``: a dict with at
  least ``loss`` and ``accuracy``; best.pt follows ``accuracy``;
- ``classes``: what the outputs mean (stored in checkpoints; the family table's).

:func:`accumulated_step` is the one forward/backward of every task; :func:`task_for` picks
the task of a config from the family table (:data:`sparseseg.models.FAMILIES`).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable

import torch

TASKS = {"segment": ("segment", "SegmentationTask"), "roi": ("roi", "ROITask"),
         "cvn": ("cvn", "CVNTask"), "patch": ("patch", "PatchTask")}
"""Task name of a model family -> (module of this package, class)."""


def task_class(name: str) -> type:
    module, cls = TASKS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def task_for(cfg: dict):
    """The task of a resolved config, from its model's family."""
    from ..models import family

    return task_class(family(cfg["model"]["name"]).task)(cfg)


def dense_task(cfg: dict):
    """The task of a dense-family config (ROI, CVN, patch), or None for segmentation."""
    from ..models import family

    name = family(cfg["model"]["name"]).task
    return None if name == "segment" else task_class(name)(cfg)


class StepData(torch.utils.data.Dataset):
    """Item s = the ``accumulate`` micro-batches of step s on rank r: ``make(k)`` for the
    micro-batch numbers ``k = (s * world + r) * accumulate + j`` of the stream."""

    def __init__(self, make: Callable[[int], Any], accumulate: int, rank: int = 0, world: int = 1) -> None:
        self.make, self.accumulate, self.rank, self.world = make, int(accumulate), int(rank), int(world)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int):
        first = (step * self.world + self.rank) * self.accumulate
        return [self.make(first + j) for j in range(self.accumulate)]


def accumulated_step(net, micro_batches, task, device, precision: str = "fp32", sync=None) -> tuple[float, float]:
    """Forward and backward over one step's micro-batches so that the summed gradient equals
    that of one batch holding all of them: each micro-batch's mean loss is scaled by its share
    of the step (``task.prepare``). ``sync`` (DDP's ``no_sync``) skips the gradient all-reduce
    on all but the last micro-batch; ``precision`` bf16 runs the forward under autocast.
    Returns (loss of the whole step, accuracy)."""
    parts = [task.prepare(mb, device) for mb in micro_batches]
    total = sum(p[2] for p in parts) or 1.0
    loss_sum, correct, counted = 0.0, 0, 0
    for i, (x, y, share) in enumerate(parts):
        ctx = sync() if sync is not None and i < len(parts) - 1 else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                out = net(x)
            out = out.float()
            loss = task.loss(out, y) * (share / total)
            loss.backward()
        loss_sum += float(loss.detach())
        with torch.no_grad():
            c, m = task.correct(out, y)
            correct += c
            counted += m
    return loss_sum, correct / max(1, counted)


def to_device(x, y, device):
    """Arrays (or a tuple of target arrays) of a dense micro-batch as tensors on ``device``."""
    x = torch.as_tensor(x).to(device)
    y = tuple(torch.as_tensor(v).to(device) for v in y) if isinstance(y, tuple) else torch.as_tensor(y).to(device)
    return x, y


@torch.no_grad()
def forward_all(model, x, batch_size: int, loss=None, y=None, transform=None):
    """Outputs of ``model`` (eval mode) on array ``x`` in batches, concatenated, and the mean
    ``loss(out, y)`` over the samples when given (0.0 otherwise). ``transform`` (tensor ->
    tensor), when given, turns each batch into what the model is fed."""
    was = model.training
    model.eval()
    outs, total = [], 0.0
    for i in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[i : i + batch_size])
        out = model(transform(batch) if transform is not None else batch).float()
        if loss is not None:
            total += float(loss(out, torch.from_numpy(y[i : i + batch_size]))) * len(out)
        outs.append(out)
    model.train(was)
    return (torch.cat(outs) if outs else None), total / max(1, len(x))
