"""HDF5 event files: many sparse events in one file as ragged (CSR) arrays.

Layout (format ``"sparseseg-events"``, version 1)::

    /coords          (Ntot, D)  int16 when every image dimension < 32768, else int32
    /features        (Ntot, F)  float32
    /labels          (Ntot,)    uint8      optional (all events of a file have them, or none)
    /clusters        (Ntot,)    int32      optional (idem)
    /offsets         (E+1,)     int64      event i = pixel rows offsets[i]:offsets[i+1]
    /vertices        (Vtot, D)  float32
    /vertex_offsets  (E+1,)     int64      event i = vertex rows vertex_offsets[i]:vertex_offsets[i+1]
    /meta/plane      (E,)       S16        "" when the event had no plane in its meta
    /meta/event_id   (E,)       int64      -2**63 when the event had no integer event id
    /meta/shape      (E, D)     int64      image size
    /meta/has_vertices (E,)     uint8      1 when the event carried a vertex array (maybe empty)
    /meta/json       (E,)       str        JSON object with the remaining meta keys
    /extra/<name>    (Ntot, ...)           optional per-pixel arrays (predictions, scores, ...)

Root attributes: ``format``, ``format_version``, ``D`` (0 for a file without events),
``class_names``, ``attrs_json`` (the caller's attributes as JSON; scalar ones are mirrored as
plain attributes for ``h5ls``/``h5dump``) and ``extras_json`` (name -> [dtype, trailing shape]).

Every dataset is resizable, chunked (16384 pixel rows, 1024 events), byte-shuffled and
compressed with gzip level 1. ``scripts/bench_io.py`` (10,000 events of 5-20k pixels, D = 2):
gzip-1 writes ~540 events/s into a file 1/3 of the raw size, random access ~3.5 ms per event
(~1.4 ms without re-validation); lzf writes ~1.7x faster, is ~13 % larger and reads no faster;
gzip-4 is slower to write for ~4 % smaller files. gzip is kept because every HDF5 build (C++,
h5dump, ROOT) reads it, while lzf needs h5py's plugin. A reader caches the offsets at open,
so event *i* is one slice per dataset.

Meta round trip: ``plane`` (a str) and ``event_id`` (an int) have their own columns; every
other key goes through JSON, so numpy scalars and arrays come back as Python numbers and lists
and tuples come back as lists.
"""
from __future__ import annotations

import errno
import json
import operator
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from ..classes import CLASS_NAMES
from ..event import Event

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "write_events",
    "EventWriter",
    "EventFile",
    "EventDataset",
]

FORMAT_NAME = "sparseseg-events"
FORMAT_VERSION = 1

COMPRESSION = "gzip"
"""h5py filter for every dataset ("gzip" or "lzf"); see the module docstring."""
COMPRESSION_OPTS: int | None = 1
"""gzip level (ignored for lzf)."""
SHUFFLE = True
CHUNK_ROWS = 16384
"""Chunk length of the per-pixel datasets (rows)."""
CHUNK_EVENTS = 1024
"""Chunk length of the per-event datasets."""
BUFFER_ROWS = 1 << 20
BUFFER_EVENTS = 256
"""Writers buffer events in memory and write them in batches of at most this many."""

PLANE_BYTES = 16
NO_EVENT_ID = np.iinfo(np.int64).min
INT16_LIMIT = 32768

_RESERVED_ATTRS = ("format", "format_version", "D", "class_names", "attrs_json", "extras_json")
_PIXEL_DATASETS = ("coords", "features", "labels", "clusters")
_REQUIRED = (
    "coords",
    "features",
    "offsets",
    "vertices",
    "vertex_offsets",
    "meta/plane",
    "meta/event_id",
    "meta/shape",
    "meta/json",
)


# ---------------------------------------------------------------------------- helpers
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON serialisable: {exc}") from None


def _normalise_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ValueError(f"attrs must be a dict, got {type(attrs).__name__}")
    for key in attrs:
        if not isinstance(key, str):
            raise ValueError(f"attrs keys must be strings, got {key!r}")
        if key in _RESERVED_ATTRS:
            raise ValueError(f"attrs key {key!r} is reserved for the file format")
    return json.loads(_to_json(dict(attrs), "attrs"))


def _normalise_extras(extras: Mapping[str, Any] | None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    if extras is None:
        return {}
    if not isinstance(extras, Mapping):
        raise ValueError(f"extras must be a dict name -> (dtype, trailing shape), got {type(extras).__name__}")
    out: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    for name, spec in extras.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"extras: invalid name {name!r} (a non-empty string without '/')")
        try:
            dtype, trailing = spec
            dtype = np.dtype(dtype)
            trailing = tuple(int(s) for s in trailing)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extras[{name!r}]: expected (dtype, trailing shape), got {spec!r} ({exc})") from None
        if dtype.kind not in "biuf":
            raise ValueError(f"extras[{name!r}]: dtype must be boolean, integer or float, got {dtype}")
        if any(s <= 0 for s in trailing):
            raise ValueError(f"extras[{name!r}]: trailing shape must be positive, got {trailing}")
        out[name] = (dtype, trailing)
    return out


def _extras_to_json(spec: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> str:
    return json.dumps({k: [v[0].str, list(v[1])] for k, v in spec.items()})


def _extras_from_json(text: str) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {k: (np.dtype(v[0]), tuple(int(s) for s in v[1])) for k, v in json.loads(text).items()}


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _split_meta(meta: Mapping[str, Any]) -> tuple[bytes, int, str]:
    """(plane bytes, event id, JSON of the rest) for one event's meta."""
    rest = dict(meta)
    plane = b""
    if isinstance(rest.get("plane"), str):
        encoded = rest["plane"].encode("utf-8")
        if rest["plane"].isascii() and 0 < len(encoded) <= PLANE_BYTES and b"\x00" not in encoded:
            plane = encoded
            del rest["plane"]
    event_id = NO_EVENT_ID
    eid = rest.get("event_id")
    if isinstance(eid, (int, np.integer)) and not isinstance(eid, (bool, np.bool_)):
        if NO_EVENT_ID < int(eid) <= np.iinfo(np.int64).max:
            event_id = int(eid)
            del rest["event_id"]
    text = _to_json(rest, "Event.meta") if rest else ""
    return plane, event_id, text


def _coords_dtype(max_dim: int) -> np.dtype:
    return np.dtype(np.int16) if max_dim < INT16_LIMIT else np.dtype(np.int32)


def _create(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any, chunk_len: int) -> h5py.Dataset:
    chunks = (chunk_len,) + tuple(max(1, s) for s in shape[1:])
    return group.create_dataset(
        name,
        shape=shape,
        maxshape=(None,) + tuple(shape[1:]),
        dtype=dtype,
        chunks=chunks,
        compression=COMPRESSION,
        compression_opts=COMPRESSION_OPTS if COMPRESSION == "gzip" else None,
        shuffle=SHUFFLE,
    )


def _append_rows(ds: h5py.Dataset, data: np.ndarray) -> None:
    n0 = ds.shape[0]
    if len(data) == 0:
        return
    ds.resize(n0 + len(data), axis=0)
    ds[n0:] = data


# ---------------------------------------------------------------------------- structure check
def _check_structure(h5: h5py.File, label: str, *, partial: bool = False) -> dict[str, Any]:
    """Validate the format attributes and dataset shapes; return a summary.

    ``partial=True`` accepts a writer's partial file: rows beyond the last complete event
    (the offsets are written last) are allowed and reported as the summary's row counts.
    """
    where = f"file {label}"
    fmt = h5.attrs.get("format")
    if fmt is None:
        raise ValueError(f"{where}: attribute 'format' is missing (not a {FORMAT_NAME} file)")
    if _attr_str(fmt) != FORMAT_NAME:
        raise ValueError(f"{where}: attribute 'format' is {_attr_str(fmt)!r}, expected {FORMAT_NAME!r}")
    version = h5.attrs.get("format_version")
    if version is None:
        raise ValueError(f"{where}: attribute 'format_version' is missing")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: attribute 'format_version' is {version!r}, expected an integer") from None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: format version {version} is not supported (this sparseseg reads version {FORMAT_VERSION})"
        )
    if "D" not in h5.attrs:
        raise ValueError(f"{where}: attribute 'D' is missing")
    D = int(h5.attrs["D"])
    # a writer's partial file gets its pixel datasets with its first batch of events
    lazy = partial and "coords" not in h5
    for name in _REQUIRED:
        if lazy and name in ("coords", "features", "vertices", "meta/shape"):
            continue
        obj = h5.get(name)
        if obj is None:
            raise ValueError(f"{where}: required dataset '/{name}' is missing")
        if not isinstance(obj, h5py.Dataset):
            raise ValueError(f"{where}: '/{name}' is not a dataset")
    try:
        offsets = h5["offsets"][:]
        vertex_offsets = h5["vertex_offsets"][:]
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{where}: dataset '/offsets' or '/vertex_offsets' could not be read ({exc})") from None
    for name, off in (("offsets", offsets), ("vertex_offsets", vertex_offsets)):
        if off.ndim != 1 or off.shape[0] < 1:
            raise ValueError(f"{where}: dataset '/{name}' must be 1D with E+1 >= 1 entries, got shape {off.shape}")
    E = offsets.shape[0] - 1
    if partial and vertex_offsets.shape[0] > E + 1:
        vertex_offsets = vertex_offsets[: E + 1]  # written before the offsets: may run ahead
    if vertex_offsets.shape[0] != E + 1:
        raise ValueError(
            f"{where}: dataset '/vertex_offsets' has {vertex_offsets.shape[0]} entries, expected E+1 = {E + 1}"
        )
    for name, off in (("offsets", offsets), ("vertex_offsets", vertex_offsets)):
        if off[0] != 0:
            raise ValueError(f"{where}: dataset '/{name}' must start at 0, starts at {off[0]}")
        steps = np.diff(off)
        if (steps < 0).any():
            k = int(np.argmax(steps < 0)) + 1
            raise ValueError(
                f"{where}: dataset '/{name}' is not monotone: entry {k} ({off[k]}) < entry {k - 1} ({off[k - 1]})"
            )
    ntot, vtot = int(offsets[-1]), int(vertex_offsets[-1])
    extras: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    if "extras_json" in h5.attrs:
        try:
            extras = _extras_from_json(_attr_str(h5.attrs["extras_json"]))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(f"{where}: attribute 'extras_json' is malformed ({exc})") from None
    user_attrs: dict[str, Any] = {}
    if "attrs_json" in h5.attrs:
        try:
            user_attrs = json.loads(_attr_str(h5.attrs["attrs_json"]))
        except ValueError as exc:
            raise ValueError(f"{where}: attribute 'attrs_json' is malformed ({exc})") from None
    summary = dict(E=E, D=D, offsets=offsets, vertex_offsets=vertex_offsets, extras=extras, user_attrs=user_attrs)
    if lazy:
        if E != 0:
            raise ValueError(f"{where}: required dataset '/coords' is missing")
        return summary

    def rows_ok(name: str, expected: int, what: str) -> None:
        n = h5[name].shape[0] if h5[name].ndim else -1
        if (n < expected) if partial else (n != expected):
            raise ValueError(
                f"{where}: dataset '/{name}' has {n} rows but {what} says {expected}"
            )

    coords = h5["coords"]
    if coords.ndim != 2:
        raise ValueError(f"{where}: dataset '/coords' must be 2D (Ntot, D), got shape {coords.shape}")
    if coords.shape[1] != D:
        raise ValueError(f"{where}: dataset '/coords' has D = {coords.shape[1]} but attribute 'D' is {D}")
    if E > 0 and D not in (2, 3):
        raise ValueError(f"{where}: attribute 'D' is {D}, expected 2 or 3")
    if coords.dtype not in (np.int16, np.int32):
        raise ValueError(f"{where}: dataset '/coords' has dtype {coords.dtype}, expected int16 or int32")
    rows_ok("coords", ntot, "'/offsets'")
    feats = h5["features"]
    if feats.ndim != 2:
        raise ValueError(f"{where}: dataset '/features' must be 2D (Ntot, F), got shape {feats.shape}")
    rows_ok("features", ntot, "'/offsets'")
    for name, dtype in (("labels", np.uint8), ("clusters", np.int32)):
        if name in h5:
            if h5[name].ndim != 1:
                raise ValueError(f"{where}: dataset '/{name}' must be 1D, got shape {h5[name].shape}")
            if h5[name].dtype != dtype:
                raise ValueError(f"{where}: dataset '/{name}' has dtype {h5[name].dtype}, expected {np.dtype(dtype)}")
            rows_ok(name, ntot, "'/offsets'")
    verts = h5["vertices"]
    if verts.ndim != 2 or verts.shape[1] != D:
        raise ValueError(f"{where}: dataset '/vertices' must have shape (Vtot, {D}), got {verts.shape}")
    rows_ok("vertices", vtot, "'/vertex_offsets'")
    for name in ("meta/plane", "meta/event_id", "meta/json") + (("meta/has_vertices",) if "meta/has_vertices" in h5 else ()):
        rows_ok(name, E, "'/offsets' (E)")
    shp = h5["meta/shape"]
    if shp.ndim != 2 or shp.shape[1] != D:
        raise ValueError(f"{where}: dataset '/meta/shape' must have shape (E, {D}), got {shp.shape}")
    rows_ok("meta/shape", E, "'/offsets' (E)")
    for name, (dtype, trailing) in extras.items():
        key = f"extra/{name}"
        if key not in h5:
            raise ValueError(f"{where}: dataset '/{key}' is missing (listed in attribute 'extras_json')")
        ds = h5[key]
        if ds.shape[1:] != trailing or ds.dtype != dtype:
            raise ValueError(
                f"{where}: dataset '/{key}' has shape {ds.shape} and dtype {ds.dtype}, "
                f"expected (Ntot,) + {trailing} of {dtype}"
            )
        rows_ok(key, ntot, "'/offsets'")
    return summary


# ---------------------------------------------------------------------------- writer core
def _check_event_arrays(event: Event, where: str) -> None:
    """Cheap structural check of an Event before writing (dtypes and lengths).

    ``Event`` validates itself fully when built; this catches arrays swapped afterwards
    without paying for the duplicate-coordinate check again.
    """
    c, f = event.coords, event.features
    if not isinstance(c, np.ndarray) or c.dtype != np.int32 or c.ndim != 2 or c.shape[1] not in (2, 3):
        raise ValueError(f"{where}: coords must be an int32 array (N, 2|3), got {getattr(c, 'dtype', type(c))} {np.shape(c)}")
    n, d = c.shape
    if len(event.shape) != d:
        raise ValueError(f"{where}: shape {event.shape} has {len(event.shape)} dimensions, coords have D = {d}")
    if not isinstance(f, np.ndarray) or f.dtype != np.float32 or f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"{where}: features must be a float32 array ({n}, F), got {getattr(f, 'dtype', type(f))} {np.shape(f)}")
    for name, dtype in (("labels", np.uint8), ("clusters", np.int32)):
        a = getattr(event, name)
        if a is not None and (not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != (n,)):
            raise ValueError(f"{where}: {name} must be a {np.dtype(dtype)} array ({n},), got {getattr(a, 'dtype', type(a))} {np.shape(a)}")
    v = event.vertices
    if v is not None and (not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 2 or v.shape[1] != d):
        raise ValueError(f"{where}: vertices must be a float32 array (V, {d}), got {getattr(v, 'dtype', type(v))} {np.shape(v)}")


class _Store:
    """Appends events to an open, writable h5py.File (new or existing)."""

    def __init__(
        self,
        h5: h5py.File,
        label: str,
        *,
        new: bool,
        extras: Mapping[str, tuple[np.dtype, tuple[int, ...]]] | None = None,
        attrs: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.h5 = h5
        self.label = label
        self._buf: list[tuple[Event, dict[str, np.ndarray], tuple[bytes, int, str]]] = []
        self._buf_rows = 0
        if new:
            self.extras = dict(extras or {})
            self.user_attrs = dict(attrs or {})
            h5.attrs["format"] = FORMAT_NAME
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["D"] = 0
            h5.attrs["class_names"] = np.array(CLASS_NAMES, dtype=h5py.string_dtype())
            h5.attrs["extras_json"] = _extras_to_json(self.extras)
            self._write_user_attrs()
            h5.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(CHUNK_EVENTS,))
            h5.create_dataset("vertex_offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(CHUNK_EVENTS,))
            meta = h5.create_group("meta")
            _create(meta, "plane", (0,), f"S{PLANE_BYTES}", CHUNK_EVENTS)
            _create(meta, "event_id", (0,), np.int64, CHUNK_EVENTS)
            _create(meta, "has_vertices", (0,), np.uint8, CHUNK_EVENTS)
            _create(meta, "json", (0,), h5py.string_dtype(), CHUNK_EVENTS)
            extra = h5.create_group("extra")
            for name, (dtype, trailing) in self.extras.items():
                _create(extra, name, (0,) + trailing, dtype, CHUNK_ROWS)
            self.E = 0
            self.D: int | None = None
            self.F: int | None = None
            self.has_labels: bool | None = None
            self.has_clusters: bool | None = None
        else:
            assert summary is not None
            self.extras = dict(summary["extras"])
            self.user_attrs = dict(summary["user_attrs"])
            self.E = int(summary["E"])
            if "meta/has_vertices" not in h5:
                _create(h5["meta"], "has_vertices", (0,), np.uint8, CHUNK_EVENTS)
                _append_rows(h5["meta/has_vertices"], (np.diff(summary["vertex_offsets"]) > 0).astype(np.uint8))
            if self.E == 0:
                # placeholders of an empty file: the first event decides D, F, labels, ...
                for name in _PIXEL_DATASETS + ("vertices", "meta/shape"):
                    if name in h5:
                        del h5[name]
                h5.attrs["D"] = 0
                self.D = self.F = self.has_labels = self.has_clusters = None
            else:
                self.D = int(summary["D"])
                self.F = int(h5["features"].shape[1])
                self.has_labels = "labels" in h5
                self.has_clusters = "clusters" in h5

    # -- attributes
    def _write_user_attrs(self) -> None:
        self.h5.attrs["attrs_json"] = json.dumps(self.user_attrs)
        for key, value in self.user_attrs.items():
            if isinstance(value, (str, bool, int, float)):
                self.h5.attrs[key] = value

    def merge_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            if key in self.user_attrs and self.user_attrs[key] != value:
                raise ValueError(
                    f"file {self.label}: attribute {key!r} is {self.user_attrs[key]!r} in the file, "
                    f"cannot append events written with {value!r}"
                )
        self.user_attrs.update(attrs)
        self._write_user_attrs()

    # -- appending
    def append(self, event: Event, extras: Mapping[str, Any] | None = None) -> None:
        where = f"file {self.label}"
        idx = self.E + len(self._buf)
        if not isinstance(event, Event):
            raise TypeError(f"{where}: event {idx} is a {type(event).__name__}, expected sparseseg.Event")
        _check_event_arrays(event, f"{where}: event {idx}")
        D, F = event.ndim, event.features.shape[1]
        if F == 0:
            raise ValueError(f"{where}: event {idx} has no feature columns (features shape {event.features.shape})")
        if self.D is None:
            self.D, self.F = D, F
            self.has_labels = event.labels is not None
            self.has_clusters = event.clusters is not None
        if D != self.D:
            raise ValueError(
                f"{where}: event {idx} has D = {D} but the file holds D = {self.D} events (dataset '/coords'); "
                "all events in a file must have the same D"
            )
        if F != self.F:
            raise ValueError(
                f"{where}: event {idx} has F = {F} feature columns but the file holds F = {self.F} (dataset '/features')"
            )
        for name, has in (("labels", self.has_labels), ("clusters", self.has_clusters)):
            ev_has = getattr(event, name) is not None
            if ev_has != has:
                raise ValueError(
                    f"{where}: event {idx} {'has' if ev_has else 'has no'} {name} but the file's other events "
                    f"{'do not' if ev_has else 'do'} (dataset '/{name}'); all events in a file must either have {name} or not"
                )
        extras = dict(extras or {})
        if set(extras) != set(self.extras):
            missing = sorted(set(self.extras) - set(extras))
            unknown = sorted(set(extras) - set(self.extras))
            raise ValueError(
                f"{where}: event {idx} extras do not match the file's (group '/extra'): "
                f"missing {missing}, unknown {unknown}"
            )
        n = len(event)
        arrays: dict[str, np.ndarray] = {}
        for name, (dtype, trailing) in self.extras.items():
            arr = np.asarray(extras[name])
            if arr.shape != (n,) + trailing:
                raise ValueError(
                    f"{where}: event {idx} extra {name!r} has shape {arr.shape}, expected {(n,) + trailing} "
                    f"(dataset '/extra/{name}')"
                )
            arrays[name] = arr.astype(dtype, copy=False)
        meta = _split_meta(event.meta)  # fails early on non-JSON meta
        self._buf.append((event, arrays, meta))
        self._buf_rows += n
        if len(self._buf) >= BUFFER_EVENTS or self._buf_rows >= BUFFER_ROWS:
            self.flush()

    def _ensure_datasets(self, max_dim: int) -> None:
        h5, D, F = self.h5, self.D, self.F
        if "coords" not in h5:
            _create(h5, "coords", (0, D), _coords_dtype(max_dim), CHUNK_ROWS)
            _create(h5, "features", (0, F), np.float32, CHUNK_ROWS)
            if self.has_labels:
                _create(h5, "labels", (0,), np.uint8, CHUNK_ROWS)
            if self.has_clusters:
                _create(h5, "clusters", (0,), np.int32, CHUNK_ROWS)
            _create(h5, "vertices", (0, D), np.float32, CHUNK_EVENTS)
            _create(h5["meta"], "shape", (0, D), np.int64, CHUNK_EVENTS)
            h5.attrs["D"] = D
        elif h5["coords"].dtype == np.int16 and max_dim >= INT16_LIMIT:
            self._upgrade_coords()

    def _upgrade_coords(self) -> None:
        old = self.h5["coords"]
        new = _create(self.h5, "coords_int32", (old.shape[0], old.shape[1]), np.int32, CHUNK_ROWS)
        step = CHUNK_ROWS * 64
        for a in range(0, old.shape[0], step):
            new[a : a + step] = old[a : a + step].astype(np.int32)
        del self.h5["coords"]
        self.h5.move("coords_int32", "coords")

    def flush(self) -> None:
        """Write the buffered events; the offsets go last so a cut-off batch is ignored on resume."""
        if not self._buf:
            return
        h5 = self.h5
        events = [b[0] for b in self._buf]
        max_dim = max(max(ev.shape) for ev in events)
        self._ensure_datasets(max_dim)
        cat = np.concatenate
        _append_rows(h5["coords"], cat([ev.coords for ev in events]).astype(h5["coords"].dtype, copy=False))
        _append_rows(h5["features"], cat([ev.features for ev in events]))
        if self.has_labels:
            _append_rows(h5["labels"], cat([ev.labels for ev in events]))
        if self.has_clusters:
            _append_rows(h5["clusters"], cat([ev.clusters for ev in events]))
        for name in self.extras:
            _append_rows(h5[f"extra/{name}"], cat([b[1][name] for b in self._buf]))
        empty_v = np.zeros((0, self.D), np.float32)
        verts = [empty_v if ev.vertices is None else ev.vertices for ev in events]
        _append_rows(h5["vertices"], cat(verts))
        metas = [b[2] for b in self._buf]
        _append_rows(h5["meta/plane"], np.array([m[0] for m in metas], dtype=f"S{PLANE_BYTES}"))
        _append_rows(h5["meta/event_id"], np.array([m[1] for m in metas], dtype=np.int64))
        _append_rows(h5["meta/json"], np.array([m[2] for m in metas], dtype=object))
        _append_rows(h5["meta/shape"], np.array([ev.shape for ev in events], dtype=np.int64))
        _append_rows(h5["meta/has_vertices"], np.array([ev.vertices is not None for ev in events], dtype=np.uint8))
        vo = h5["vertex_offsets"]
        _append_rows(vo, int(vo[-1]) + np.cumsum([len(v) for v in verts], dtype=np.int64))
        off = h5["offsets"]
        _append_rows(off, int(off[-1]) + np.cumsum([len(ev) for ev in events], dtype=np.int64))
        self.E += len(events)
        self._buf.clear()
        self._buf_rows = 0

    def finalize(self) -> None:
        """Flush; give a file without events placeholder datasets so it reads as valid and empty."""
        self.flush()
        h5 = self.h5
        if "coords" not in h5:
            h5.create_dataset("coords", shape=(0, 0), dtype=np.int16)
            h5.create_dataset("features", shape=(0, 0), dtype=np.float32)
            h5.create_dataset("vertices", shape=(0, 0), dtype=np.float32)
            h5["meta"].create_dataset("shape", shape=(0, 0), dtype=np.int64)
            h5.attrs["D"] = 0
        h5.flush()


def _temp_path(path: str) -> str:
    """An empty temporary file next to ``path``, with the permissions a new file would get."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def _as_index(i: Any) -> int:
    if isinstance(i, (bool, np.bool_)):
        raise TypeError("event index must be an integer, got bool")
    try:
        return operator.index(i)
    except TypeError:
        raise TypeError(f"event index must be an integer, got {type(i).__name__}") from None


def _open_h5(path: str, mode: str, label: str | None = None) -> h5py.File:
    label = label or path
    if mode in ("r", "r+") and not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such event file", path)
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such event file", path) from None
    except OSError as exc:
        raise ValueError(f"file {label}: not a readable HDF5 file (corrupt or truncated?): {exc}") from None


# ---------------------------------------------------------------------------- public writers
def write_events(
    path: str | os.PathLike,
    events: Iterable[Event],
    *,
    append: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> int:
    """Write events to an HDF5 event file, atomically.

    The data go to a temporary file in the same directory that is renamed onto ``path`` only
    when every event is written, so ``path`` never holds a half-written file and a file already
    there stays untouched when writing fails.

    Parameters
    ----------
    path : str or PathLike
        Output file.
    events : iterable of Event
        All with the same D and number of features, and all with or all without labels
        (and clusters).
    append : bool
        Add the events to an existing file (copied to the temporary file first). A missing
        file is created.
    attrs : dict, optional
        JSON-serialisable root attributes (detector preset, thresholds, ...). When appending,
        keys already in the file must hold the same values.

    Returns
    -------
    int
        The number of events written by this call.
    """
    path = os.fspath(path)
    user_attrs = _normalise_attrs(attrs)
    tmp = _temp_path(path)
    count = 0
    try:
        if append and os.path.exists(path):
            with _open_h5(path, "r") as src:
                summary = _check_structure(src, path)
            shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)
            h5 = _open_h5(tmp, "r+", path)
            try:
                summary = _check_structure(h5, path)
                store = _Store(h5, path, new=False, summary=summary)
                store.merge_attrs(user_attrs)
                for ev in events:
                    store.append(ev)
                    count += 1
                store.finalize()
            finally:
                h5.close()
        else:
            with h5py.File(tmp, "w") as h5:
                store = _Store(h5, path, new=True, attrs=user_attrs)
                for ev in events:
                    store.append(ev)
                    count += 1
                store.finalize()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return count


class EventWriter:
    """Streaming writer; a context manager.

    Events go to ``path + ".partial"``; a clean exit renames it onto ``path``. When the block
    raises, the events appended so far are flushed and the partial file stays for a later
    ``resume=True`` run, while ``path`` is neither created nor overwritten.

    Parameters
    ----------
    path : str or PathLike
        Final output file.
    extras : dict, optional
        name -> (dtype, trailing shape) of extra per-pixel arrays, e.g.
        ``{"pred": ("uint8", ()), "scores": ("float16", (5,))}``; each :meth:`append` then
        passes ``extras={"pred": (N,) array, "scores": (N, 5) array}``.
    attrs : dict, optional
        JSON-serialisable root attributes.
    resume : bool
        Reopen an existing partial file written with the same extras and attrs, drop rows past
        its last complete event, and set :attr:`n_done` to its number of events so that the
        caller skips them. A partial file that cannot be read is replaced (with a warning); one
        written with other extras or attrs raises ``ValueError``. Without ``resume`` an existing
        partial file is replaced.

    Attributes
    ----------
    n_done : int
        Events already in the partial file when it was opened (0 for a fresh file).
    n_written : int
        Events in the file now (``n_done`` plus those appended).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        extras: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.partial_path = self.path + ".partial"
        spec = _normalise_extras(extras)
        user_attrs = _normalise_attrs(attrs)
        self.n_done = 0
        self._closed = False
        store = None
        if resume and os.path.exists(self.partial_path):
            store = self._reopen(spec, user_attrs)
        if store is None:
            if os.path.exists(self.partial_path):
                os.unlink(self.partial_path)
            self._h5 = h5py.File(self.partial_path, "w")
            store = _Store(self._h5, self.partial_path, new=True, extras=spec, attrs=user_attrs)
            self._h5.flush()
        self._store = store

    def _reopen(self, spec: dict, user_attrs: dict) -> _Store | None:
        label = self.partial_path
        try:
            h5 = _open_h5(self.partial_path, "r+", label)
        except ValueError as exc:
            warnings.warn(f"{label}: cannot resume ({exc}); starting a fresh file", RuntimeWarning, stacklevel=3)
            return None
        try:
            summary = _check_structure(h5, label, partial=True)
        except (ValueError, OSError, KeyError) as exc:
            h5.close()
            warnings.warn(f"{label}: cannot resume ({exc}); starting a fresh file", RuntimeWarning, stacklevel=3)
            return None
        if summary["extras"] != spec or summary["user_attrs"] != user_attrs:
            h5.close()
            raise ValueError(
                f"file {label}: cannot resume: it was written with extras {_extras_to_json(summary['extras'])} "
                f"and attrs {json.dumps(summary['user_attrs'])}, this writer has extras {_extras_to_json(spec)} "
                f"and attrs {json.dumps(user_attrs)}; delete it or pass resume=False"
            )
        try:
            self._truncate(h5, summary)
            store = _Store(h5, label, new=False, summary=summary)
            h5.flush()
        except (OSError, ValueError, KeyError) as exc:
            h5.close()
            warnings.warn(f"{label}: cannot resume ({exc}); starting a fresh file", RuntimeWarning, stacklevel=3)
            return None
        self._h5 = h5
        self.n_done = store.E
        return store

    @staticmethod
    def _truncate(h5: h5py.File, summary: dict[str, Any]) -> None:
        E = summary["E"]
        ntot = int(summary["offsets"][-1])
        vtot = int(summary["vertex_offsets"][-1])
        sizes = {"offsets": E + 1, "vertex_offsets": E + 1, "vertices": vtot}
        for name in _PIXEL_DATASETS:
            sizes[name] = ntot
        for name in summary["extras"]:
            sizes[f"extra/{name}"] = ntot
        for name in ("plane", "event_id", "json", "shape", "has_vertices"):
            sizes[f"meta/{name}"] = E
        for name, n in sizes.items():
            if name in h5 and h5[name].shape[0] > n:
                h5[name].resize(n, axis=0)

    @property
    def n_written(self) -> int:
        return self._store.E + len(self._store._buf)

    def append(self, event: Event, extras: Mapping[str, Any] | None = None) -> None:
        """Add one event (and its extra per-pixel arrays)."""
        if self._closed:
            raise ValueError(f"file {self.partial_path}: writer is closed")
        before = self._store.E
        self._store.append(event, extras)
        if self._store.E != before:
            self._h5.flush()

    def close(self) -> None:
        """Finish: flush, close and rename the partial file onto ``path``."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store.finalize()
        finally:
            self._h5.close()
        os.replace(self.partial_path, self.path)

    def abort(self) -> None:
        """Flush the complete events and close, leaving the partial file for a resume."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store.flush()
            self._h5.flush()
        finally:
            self._h5.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.abort()
            except Exception:  # keep the original exception
                pass


# ---------------------------------------------------------------------------- reader
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
            event = Event.__new__(Event)
            for key, value in fields.items():
                object.__setattr__(event, key, value)
            return event
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


_dataset_class: type | None = None


def _make_dataset_class() -> type:
    """Build EventDataset on first use, so that importing this module does not import torch."""
    global _dataset_class
    if _dataset_class is not None:
        return _dataset_class
    import torch.utils.data

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

    EventDataset.__module__ = __name__
    EventDataset.__qualname__ = "EventDataset"
    _dataset_class = EventDataset
    return EventDataset


def __getattr__(name: str) -> Any:
    if name == "EventDataset":
        return _make_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
