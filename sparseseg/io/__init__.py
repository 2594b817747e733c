"""Event file I/O: the project's HDF5 event format and the public PILArNet-M reader.

``EventDataset`` needs torch; it is imported on first use so that writing or reading files
does not load torch.
"""
from __future__ import annotations

from typing import Any

from .h5 import FORMAT_NAME, FORMAT_VERSION, EventFile, EventWriter, open_event_file, write_events
from .pilarnet import PilarnetFile, read_pilarnet

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "write_events",
    "EventWriter",
    "EventFile",
    "open_event_file",
    "EventDataset",
    "read_pilarnet",
    "PilarnetFile",
]


def __getattr__(name: str) -> Any:
    if name == "EventDataset":
        from . import h5

        return h5.EventDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
