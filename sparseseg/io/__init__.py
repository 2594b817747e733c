"""Event file I/O: the project's HDF5 event format and the public PILArNet-M reader.

Split by job: :mod:`.format` (layout, constants, the reserved attribute names, structure
checks), :mod:`.writer` (:func:`write_events`, the crash-safe streaming :class:`EventWriter`),
:mod:`.reader` (:class:`EventFile`, :func:`open_event_file`), :mod:`.dataset`
(``EventDataset``, a torch Dataset: imported on first use so that writing or reading files does
not load torch) and :mod:`.pilarnet` (PILArNet-M files).
"""
from __future__ import annotations

from typing import Any

from .format import FORMAT_NAME, FORMAT_VERSION, RESERVED_ATTRS
from .pilarnet import PilarnetFile, read_pilarnet
from .reader import EventFile, open_event_file
from .writer import EventWriter, WriteError, partial_events, when_safe, write_events

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RESERVED_ATTRS",
    "write_events",
    "EventWriter",
    "WriteError",
    "partial_events",
    "when_safe",
    "EventFile",
    "open_event_file",
    "EventDataset",
    "read_pilarnet",
    "PilarnetFile",
]


def __getattr__(name: str) -> Any:
    if name == "EventDataset":
        from .dataset import EventDataset

        return EventDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
