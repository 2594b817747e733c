"""HDF5 event files, reading: :class:`EventFile` and :func:`open_event_file`.

Meta round trip: ``plane`` (a str) and ``event_id`` (an int) have their own columns; every
other key goes through JSON, so numpy scalars and arrays come back as Python numbers and lists
and tuples come back as lists.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from ..classes import CLASS_NAMES
from ..event import Event
from .format import (
    FORMAT_NAME, FORMAT_VERSION, NO_EVENT_ID, _PIXEL_DATASETS, _as_index, _attr_str,
    _check_structure, _open_h5, _refuse_unfinished,
)


class EventFile:
    """Random access to the events of one file; a context manager.

    ``len(f)``, ``f[i]`` (negative ``i`` allowed) and iteration give :class:`Event` objects.
    The offsets, event ids, planes and shapes are read at open, so per-event metadata is
    free and ``f[i]`` reads one slice per dataset.

    Parameters
    ----------
    path : str or PathLike
    validate : bool
        Run :meth:`Event.validate` on every event read (the default). The writers validate
        each event, so a trusted file can skip this: it is about half the time of ``f[i]``
        (the duplicate-coordinate check).

    Attributes
    ----------
    attrs : dict
        Format attributes (format, format_version, D, class_names) and the writer's attrs.
    D : int
        Dimensionality of the events (0 for a file without events).
    offsets, vertex_offsets : int64 arrays (E+1,)
    event_ids : int64 array (E,)
        ``-2**63`` where an event had no integer event id.
    planes : str array (E,)
        ``""`` where an event had no plane.
    shapes : int64 array (E, D)
    extra_names : tuple of str
    """

    def __init__(self, path: str | os.PathLike, *, validate: bool = True) -> None:
        self.path = os.fspath(path)
        self.validate = validate
        _refuse_unfinished(self.path)
        self._h5 = _open_h5(self.path, "r")
        try:
            s = _check_structure(self._h5, self.path)
            self._len = s["E"]
            self.D: int = s["D"]
            self.offsets: np.ndarray = s["offsets"]
            self.vertex_offsets: np.ndarray = s["vertex_offsets"]
            self.extra_names: tuple[str, ...] = tuple(s["extras"])
            self._extras = s["extras"]
            h5 = self._h5
            self.attrs: dict[str, Any] = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "D": self.D,
                "class_names": tuple(_attr_str(c) for c in h5.attrs.get("class_names", CLASS_NAMES)),
                **s["user_attrs"],
            }
            self.event_ids: np.ndarray = self._read("meta/event_id", slice(None))
            self.planes: np.ndarray = self._read("meta/plane", slice(None)).astype(str)
            self.shapes: np.ndarray = self._read("meta/shape", slice(None))
            if "meta/has_vertices" in h5:
                self._has_vertices = self._read("meta/has_vertices", slice(None)).astype(bool)
            else:
                self._has_vertices = np.diff(self.vertex_offsets) > 0
            self.has_labels = "labels" in h5
            self.has_clusters = "clusters" in h5
            self._ds = {name: h5[name] for name in _PIXEL_DATASETS if name in h5}
            self._ds["vertices"] = h5["vertices"]
            self._ds["meta/json"] = h5["meta/json"]
        except BaseException:
            self._h5.close()
            raise

    def _read(self, name: str, sel: slice) -> np.ndarray:
        try:
            return self._h5[name][sel]
        except (OSError, RuntimeError, KeyError) as exc:
            raise ValueError(f"file {self.path}: dataset '/{name}' could not be read ({exc})") from None

    def _read_ds(self, name: str, a: int, b: int) -> np.ndarray:
        try:
            return self._ds[name][a:b]
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"file {self.path}: dataset '/{name}' rows {a}:{b} could not be read ({exc})") from None

    def __len__(self) -> int:
        return self._len

    def _index(self, i: Any) -> int:
        i = _as_index(i)
        j = i + self._len if i < 0 else i
        if not 0 <= j < self._len:
            raise IndexError(f"event index {i} out of range for file {self.path} with {self._len} events")
        return j

    def num_pixels(self, i: int) -> int:
        j = self._index(i)
        return int(self.offsets[j + 1] - self.offsets[j])

    def meta(self, i: int) -> dict[str, Any]:
        """The meta dict of event ``i`` without reading its pixels."""
        j = self._index(i)
        meta: dict[str, Any] = {}
        if self.planes[j]:
            meta["plane"] = str(self.planes[j])
        if self.event_ids[j] != NO_EVENT_ID:
            meta["event_id"] = int(self.event_ids[j])
        text = self._read_ds("meta/json", j, j + 1)[0]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if text:
            try:
                meta.update(json.loads(text))
            except ValueError as exc:
                raise ValueError(f"file {self.path}: dataset '/meta/json' row {j} is not valid JSON ({exc})") from None
        return meta

    def __getitem__(self, i: int) -> Event:
        j = self._index(i)
        a, b = int(self.offsets[j]), int(self.offsets[j + 1])
        coords = self._read_ds("coords", a, b).astype(np.int32, copy=False)
        feats = self._read_ds("features", a, b)
        labels = self._read_ds("labels", a, b) if self.has_labels else None
        clusters = self._read_ds("clusters", a, b) if self.has_clusters else None
        vertices = None
        if self._has_vertices[j]:
            va, vb = int(self.vertex_offsets[j]), int(self.vertex_offsets[j + 1])
            vertices = self._read_ds("vertices", va, vb)
        fields = dict(
            coords=coords,
            features=feats,
            shape=tuple(int(s) for s in self.shapes[j]),
            labels=labels,
            clusters=clusters,
            vertices=vertices,
            meta=self.meta(j),
        )
        if not self.validate:
            return Event.trusted(**fields)
        try:
            return Event(**fields)
        except ValueError as exc:
            raise ValueError(f"file {self.path}: event {j} is invalid: {exc}") from None

    def read_extra(self, i: int, name: str) -> np.ndarray:
        """Extra per-pixel array ``name`` of event ``i``: shape (N,) + trailing shape."""
        if name not in self._extras:
            raise KeyError(f"file {self.path}: no extra {name!r} (dataset '/extra/{name}'); has {list(self.extra_names)}")
        j = self._index(i)
        a, b = int(self.offsets[j]), int(self.offsets[j + 1])
        key = f"extra/{name}"
        if key not in self._ds:
            self._ds[key] = self._h5[key]
        return self._read_ds(key, a, b)

    def __iter__(self) -> Iterator[Event]:
        for j in range(self._len):
            yield self[j]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "EventFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventFile({self.path!r}, events={self._len}, D={self.D})"


# ---------------------------------------------------------------------------- torch dataset
def open_event_file(path: str | os.PathLike, *, validate: bool = True):
    """Open an event file of either kind: a sparseseg file (:class:`EventFile`) or a public
    PILArNet-M file (:class:`~sparseseg.io.pilarnet.PilarnetFile`, recognised by its
    ``/point`` dataset and no sparseseg format attribute). Both give ``len`` and ``[i]`` -> Event."""
    path = os.fspath(path)
    _refuse_unfinished(path)
    if os.path.exists(path):
        try:
            with h5py.File(path, "r") as h:
                pilarnet = "point" in h and "format" not in h.attrs
        except OSError:
            pilarnet = False  # EventFile reports the damage
        if pilarnet:
            from .pilarnet import PilarnetFile

            return PilarnetFile(path)
    return EventFile(path, validate=validate)
