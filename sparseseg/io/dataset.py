"""Event files as a torch Dataset (this module imports torch; the rest of :mod:`sparseseg.io`
does not)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch.utils.data

from ..event import Event
from .format import _as_index
from .reader import EventFile, open_event_file


class EventDataset(torch.utils.data.Dataset):
    """Events of one or more files as a map-style torch Dataset (items are :class:`Event`).

    Files may be sparseseg event files or public PILArNet-M files (see
    :func:`open_event_file`); only the per-file event counts are read up front, events are
    read when indexed, so a file set of any size is served without loading it.

    The files are opened lazily and per process (the opener's pid is remembered), so each
    DataLoader worker opens its own handles after the fork. Batch with a ``collate_fn`` that
    keeps the events (e.g. ``lambda batch: batch``) or builds a sparse batch.
    """

    def __init__(
        self, paths: str | os.PathLike | Iterable[str | os.PathLike], *, validate: bool = True
    ) -> None:
        self.validate = validate
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("EventDataset: no files given")
        lengths = []
        for p in self.paths:
            with open_event_file(p, validate=validate) as f:
                lengths.append(len(f))
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.cumulative = np.cumsum(self.lengths)
        self._files: dict[int, EventFile] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.cumulative[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """(file number, event number in that file) of global index ``idx``."""
        n = len(self)
        idx = _as_index(idx)
        j = idx + n if idx < 0 else idx
        if not 0 <= j < n:
            raise IndexError(f"index {idx} out of range for EventDataset with {n} events")
        k = int(np.searchsorted(self.cumulative, j, side="right"))
        return k, j - int(self.cumulative[k - 1] if k else 0)

    def _file(self, k: int) -> EventFile:
        pid = os.getpid()
        if self._pid != pid:
            # handles inherited through fork are not safe to use: drop them without closing
            self._files = {}
            self._pid = pid
        f = self._files.get(k)
        if f is None:
            f = self._files[k] = open_event_file(self.paths[k], validate=self.validate)
        return f

    def __getitem__(self, idx: int) -> Event:
        k, j = self.locate(idx)
        return self._file(k)[j]

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
