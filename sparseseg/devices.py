"""Checking a device name (``--device``, ``train.device``) before any work starts."""
from __future__ import annotations


def check_device(name, what: str = "--device", fix: str = "--device cpu", need_cuda: bool = True):
    """``torch.device(name)`` for a CPU or CUDA device, or ``ValueError`` saying what is wrong.

    ``what`` names the option in the message and ``fix`` is the suggested replacement. With
    ``need_cuda`` a CUDA device must also exist here (``torch.cuda.is_available()``).
    """
    import torch

    if not isinstance(name, (str, torch.device)):
        raise ValueError(f"{what} {name!r}: expected a device name such as cpu, cuda or cuda:1")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what} {name}: unknown device; expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} {name}: device type {device.type!r} is not supported; expected cpu, cuda or cuda:N")
    if device.type == "cuda" and need_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {name}: this torch has no usable CUDA (torch.cuda.is_available() is False); "
                             f"use {fix}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{what} {name}: there is no GPU {device.index} (this machine has {count}); "
                             f"use cuda:0 .. cuda:{count - 1} or {fix}")
    return device
