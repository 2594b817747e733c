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

Writing: :func:`write_events` builds the whole file under a temporary name and renames it into
place. :class:`EventWriter` (used by ``predict`` and ``simulate``) streams: it never extends an
HDF5 file in place (a crash in the middle of that can tear the file's metadata). Each batch of
:data:`BUFFER_EVENTS` events becomes a complete small event file written under a temporary name,
fsync'ed and renamed into ``<output>.partial/`` as ``seg-NNNNNN.h5``, followed by
``seg-NNNNNN.json`` (size, event count, sha256). ``manifest.json`` holds the extras, attributes
and the caller's identity record (input, weights, settings), compared on resume; ``lock`` is held
with ``flock`` by the one writer. Resume keeps the leading segments whose record and checksum
match and drops the rest; closing assembles the segments into a temporary file, fsyncs and
re-reads it, renames it onto the output and removes the folder. Readers refuse a ``.partial``
path, a segment inside one, and folders.

Meta round trip: ``plane`` (a str) and ``event_id`` (an int) have their own columns; every
other key goes through JSON, so numpy scalars and arrays come back as Python numbers and lists
and tuples come back as lists.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import itertools
import json
import operator
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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
    "WriteError",
    "partial_events",
    "when_safe",
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


INFO_ATTRS = frozenset({"command"})
"""Root attributes that describe a run but do not decide whether a partial output can be
resumed: a resumed file keeps the first run's values."""


def _env_buffer_events(default: int = 256) -> int:
    text = os.environ.get("SPARSESEG_BUFFER_EVENTS", "")
    try:
        value = int(text) if text.strip() else default
    except ValueError:
        value = default
    return value if value >= 1 else default


BUFFER_EVENTS = _env_buffer_events()
"""Writers buffer events in memory and write them in batches of at most this many (a streaming
writer's segment size); 256 unless the environment variable ``SPARSESEG_BUFFER_EVENTS`` says
otherwise (small values make many segments, for crash tests)."""

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


class _Buffer:
    """Checks events against the ones before them and holds them until they are written.

    ``base`` is the number of events already in the file (for the messages); ``D``, ``F``,
    ``has_labels`` and ``has_clusters`` are fixed by the first event (or by the file).
    """

    def __init__(
        self,
        label: str,
        extras: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
        base: int = 0,
        layout: Mapping[str, Any] | None = None,
    ) -> None:
        self.label = label
        self.extras = dict(extras)
        self.base = base
        layout = dict(layout or {})
        self.D: int | None = layout.get("D")
        self.F: int | None = layout.get("F")
        self.has_labels: bool | None = layout.get("labels")
        self.has_clusters: bool | None = layout.get("clusters")
        self.items: list[tuple[Event, dict[str, np.ndarray], tuple[bytes, int, str]]] = []
        self.rows = 0

    def __len__(self) -> int:
        return len(self.items)

    def layout(self) -> dict[str, Any]:
        return {"D": self.D, "F": self.F, "labels": self.has_labels, "clusters": self.has_clusters}

    def full(self) -> bool:
        return len(self.items) >= BUFFER_EVENTS or self.rows >= BUFFER_ROWS

    def add(self, event: Event, extras: Mapping[str, Any] | None = None) -> None:
        where = f"file {self.label}"
        idx = self.base + len(self.items)
        if not isinstance(event, Event):
            raise TypeError(f"{where}: event {idx} is a {type(event).__name__}, expected sparseseg.Event")
        _check_event_arrays(event, f"{where}: event {idx}")
        D, F = event.ndim, event.features.shape[1]
        if F == 0:
            raise ValueError(f"{where}: event {idx} has no feature columns (features shape {event.features.shape})")
        first = self.D is None
        if D != (D if first else self.D):
            raise ValueError(
                f"{where}: event {idx} has D = {D} but the file holds D = {self.D} events (dataset '/coords'); "
                "all events in a file must have the same D"
            )
        if not first and F != self.F:
            raise ValueError(
                f"{where}: event {idx} has F = {F} feature columns but the file holds F = {self.F} (dataset '/features')"
            )
        if not first:
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
        if first:
            self.D, self.F = D, F
            self.has_labels = event.labels is not None
            self.has_clusters = event.clusters is not None
        self.items.append((event, arrays, meta))
        self.rows += n

    def take(self) -> dict[str, Any] | None:
        """The buffered events as one block of concatenated arrays (None when empty)."""
        if not self.items:
            return None
        events = [b[0] for b in self.items]
        cat = np.concatenate
        empty_v = np.zeros((0, self.D), np.float32)
        verts = [empty_v if ev.vertices is None else ev.vertices for ev in events]
        metas = [b[2] for b in self.items]
        block = {
            "E": len(events),
            "max_dim": int(max(max(ev.shape) for ev in events)),
            "coords": cat([ev.coords for ev in events]),
            "features": cat([ev.features for ev in events]),
            "labels": cat([ev.labels for ev in events]) if self.has_labels else None,
            "clusters": cat([ev.clusters for ev in events]) if self.has_clusters else None,
            "extras": {name: cat([b[1][name] for b in self.items]) for name in self.extras},
            "vertices": cat(verts),
            "pixel_counts": np.array([len(ev) for ev in events], dtype=np.int64),
            "vertex_counts": np.array([len(v) for v in verts], dtype=np.int64),
            "plane": np.array([m[0] for m in metas], dtype=f"S{PLANE_BYTES}"),
            "event_id": np.array([m[1] for m in metas], dtype=np.int64),
            "json": np.array([m[2] for m in metas], dtype=object),
            "shape": np.array([ev.shape for ev in events], dtype=np.int64),
            "has_vertices": np.array([ev.vertices is not None for ev in events], dtype=np.uint8),
            "D": self.D,
            "F": self.F,
        }
        self.base += len(events)
        self.items = []
        self.rows = 0
        return block


def _read_block(h5: h5py.File, label: str) -> dict[str, Any] | None:
    """All events of a finished file as one block (the inverse of writing a block); None if empty."""
    s = _check_structure(h5, label)
    if s["E"] == 0:
        return None

    def get(name: str) -> np.ndarray:
        try:
            return h5[name][()]
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"file {label}: dataset '/{name}' could not be read ({exc})") from None

    E = s["E"]
    block = {
        "E": E,
        "coords": get("coords"),
        "features": get("features"),
        "labels": get("labels") if "labels" in h5 else None,
        "clusters": get("clusters") if "clusters" in h5 else None,
        "extras": {name: get(f"extra/{name}") for name in s["extras"]},
        "vertices": get("vertices"),
        "pixel_counts": np.diff(s["offsets"]).astype(np.int64),
        "vertex_counts": np.diff(s["vertex_offsets"]).astype(np.int64),
        "plane": get("meta/plane"),
        "event_id": get("meta/event_id"),
        "json": np.array(h5["meta/json"].asstr()[()], dtype=object).reshape(E),
        "shape": get("meta/shape"),
        "has_vertices": get("meta/has_vertices") if "meta/has_vertices" in h5
        else (np.diff(s["vertex_offsets"]) > 0).astype(np.uint8),
        "D": s["D"],
    }
    block["max_dim"] = int(block["shape"].max())
    block["F"] = int(block["features"].shape[1])
    return block


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
            layout: dict[str, Any] = {}
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
                layout = {}
            else:
                layout = {"D": int(summary["D"]), "F": int(h5["features"].shape[1]),
                          "labels": "labels" in h5, "clusters": "clusters" in h5}
        self._buf = _Buffer(label, self.extras, self.E, layout)

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
        self._buf.add(event, extras)
        if self._buf.full():
            self.flush()

    def _ensure_datasets(self, block: Mapping[str, Any], max_dim: int) -> None:
        h5, D, F = self.h5, block["D"], block["F"]
        if "coords" not in h5:
            _create(h5, "coords", (0, D), _coords_dtype(max_dim), CHUNK_ROWS)
            _create(h5, "features", (0, F), np.float32, CHUNK_ROWS)
            if block["labels"] is not None:
                _create(h5, "labels", (0,), np.uint8, CHUNK_ROWS)
            if block["clusters"] is not None:
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

    def append_block(self, block: Mapping[str, Any], max_dim: int | None = None) -> None:
        """Write a block of events; the offsets go last."""
        h5 = self.h5
        self._ensure_datasets(block, block["max_dim"] if max_dim is None else max_dim)
        _append_rows(h5["coords"], block["coords"].astype(h5["coords"].dtype, copy=False))
        _append_rows(h5["features"], block["features"])
        if block["labels"] is not None:
            _append_rows(h5["labels"], block["labels"])
        if block["clusters"] is not None:
            _append_rows(h5["clusters"], block["clusters"])
        for name in self.extras:
            _append_rows(h5[f"extra/{name}"], block["extras"][name])
        _append_rows(h5["vertices"], block["vertices"])
        _append_rows(h5["meta/plane"], block["plane"])
        _append_rows(h5["meta/event_id"], block["event_id"])
        _append_rows(h5["meta/json"], block["json"])
        _append_rows(h5["meta/shape"], block["shape"])
        _append_rows(h5["meta/has_vertices"], block["has_vertices"])
        vo = h5["vertex_offsets"]
        _append_rows(vo, int(vo[-1]) + np.cumsum(block["vertex_counts"], dtype=np.int64))
        off = h5["offsets"]
        _append_rows(off, int(off[-1]) + np.cumsum(block["pixel_counts"], dtype=np.int64))
        self.E += int(block["E"])

    def flush(self) -> None:
        """Write the buffered events."""
        block = self._buf.take()
        if block is not None:
            self.append_block(block)

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
    with _removed_on_failure(tmp):
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
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))

    return count


# ---------------------------------------------------------------------------- crash-safe streaming
PARTIAL_SUFFIX = ".partial"
"""A streaming writer keeps its work in the folder ``<output>.partial`` until it finishes."""
PARTIAL_FORMAT = "sparseseg-partial"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
FAULT_ENV = "SPARSESEG_FAULT"
"""Testing hook: ``SPARSESEG_FAULT=POINT:K[:SIGNAL]`` makes a streaming writer send SIGNAL
(default SIGKILL) to its own process the K-th time it reaches POINT, one of
``segment-write`` (half of a segment's bytes written), ``segment-renamed`` (segment in place,
its checksum record not yet), ``segment-done``, ``assemble`` (final file half assembled) and
``final-renamed`` (final file in place, the partial folder not yet removed)."""

_fault_counts: dict[str, int] = {}
_critical_depth = 0
_pending: list[Callable[[], None]] = []
_image_names = itertools.count()


def _fault(point: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != point:
        return
    count = _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if count == (int(parts[1]) if len(parts) > 1 and parts[1] else 1):
        sig = getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL
        os.kill(os.getpid(), sig)


@contextmanager
def _critical() -> Iterator[None]:
    """A section that a signal handler using :func:`when_safe` does not interrupt."""
    global _critical_depth
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if _critical_depth == 0 and _pending:
            callback = _pending[0]
            _pending.clear()
            callback()


def when_safe(callback: Callable[[], None]) -> None:
    """Run ``callback`` now, or right after the segment or rename being written, if any.

    For signal handlers: a handler that raises through ``when_safe`` never cuts a streaming
    writer's segment or final rename in half (a kill -9 does, and is handled on resume)."""
    if _critical_depth:
        if not _pending:
            _pending.append(callback)
    else:
        callback()


class WriteError(OSError):
    """Writing an output failed (disk full, I/O error, read-only or forbidden folder)."""

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno, "") if self.errno else ""
        cause = f"{self.strerror} ({code})" if code else str(self.strerror)
        return f"cannot write {self.filename}: {cause}"


def _write_error(exc: BaseException, path: str) -> WriteError:
    """One WriteError naming ``path`` and the cause (errno when known, also from HDF5's text)."""
    if isinstance(exc, WriteError):
        return exc
    code = getattr(exc, "errno", None)
    text = " ".join(str(exc).split())
    if code is None:
        m = re.search(r"errno = (\d+)", text)
        code = int(m.group(1)) if m else None
    if code is not None:
        return WriteError(code, os.strerror(code), path)
    return WriteError(errno.EIO, text or "I/O error", path)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@contextlib.contextmanager
def _removed_on_failure(tmp: str):
    """Delete the temp file ``tmp`` if the block fails (whatever the exception), then re-raise."""
    try:
        yield
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise



def _write_durable(directory: str, name: str, data: bytes, fault: str | None = None) -> None:
    """Write ``data`` to ``directory/name`` so that the name only ever holds all of it:
    a temp file, written, fsync'ed, renamed, then the folder fsync'ed."""
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with _removed_on_failure(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            half = len(data) // 2
            _write_bytes(fd, memoryview(data)[:half])
            if fault:
                _fault(fault)
            _write_bytes(fd, memoryview(data)[half:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    _fsync_dir(directory)


def _segment_names(k: int) -> tuple[str, str]:
    return f"seg-{k:06d}.h5", f"seg-{k:06d}.json"


def _segment_image(block: Mapping[str, Any], extras: dict, attrs: dict, label: str) -> bytes:
    """A complete event file holding ``block``, built in memory."""
    h5 = h5py.File(f"segment-{os.getpid()}-{next(_image_names)}", "w", driver="core", backing_store=False)
    try:
        store = _Store(h5, label, new=True, extras=extras, attrs=attrs)
        store.append_block(block)
        store.finalize()
        return h5.id.get_file_image()
    finally:
        h5.close()


def _read_segment_info(directory: str, k: int) -> dict[str, Any] | None:
    h5name, jname = _segment_names(k)
    try:
        with open(os.path.join(directory, jname), "rb") as fh:
            info = json.loads(fh.read())
        size = os.path.getsize(os.path.join(directory, h5name))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("bytes") != size or not isinstance(info.get("events"), int):
        return None
    return info


def _load_segment(directory: str, k: int, info: Mapping[str, Any]) -> bytes | None:
    """The segment's bytes when they match its checksum record, else None."""
    try:
        with open(os.path.join(directory, _segment_names(k)[0]), "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if len(data) != info.get("bytes") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
        return None
    return data


def _valid_segments(directory: str, *, verify: bool) -> list[dict[str, Any]]:
    """Checksum records of the complete segments seg-000000, seg-000001, ... (stops at the first gap)."""
    out: list[dict[str, Any]] = []
    while True:
        info = _read_segment_info(directory, len(out))
        if info is None or (verify and _load_segment(directory, len(out), info) is None):
            return out
        out.append(info)


def partial_events(path: str | os.PathLike) -> int:
    """Events saved so far in the partial folder of output ``path`` (0 when there is none)."""
    directory = os.fspath(path) + PARTIAL_SUFFIX
    if not os.path.isdir(directory):
        return 0
    return sum(int(info["events"]) for info in _valid_segments(directory, verify=False))


def _refuse_unfinished(path: str) -> None:
    """Readers never take a writer's partial output (or a folder) for an event file."""
    parent = os.path.dirname(os.path.abspath(path))
    inside = parent.endswith(PARTIAL_SUFFIX) and os.path.exists(os.path.join(parent, MANIFEST_NAME))
    partial = inside or path.endswith(PARTIAL_SUFFIX) or (
        os.path.isdir(path) and os.path.exists(os.path.join(path, MANIFEST_NAME)))
    if partial:
        final = parent if inside else path
        final = final[: -len(PARTIAL_SUFFIX)] if final.endswith(PARTIAL_SUFFIX) else final
        raise ValueError(
            f"file {path}: is the unfinished output of an interrupted writer, not an event file; "
            f"rerun the command that wrote {final} to finish it, or delete it"
        )
    if os.path.isdir(path):
        raise ValueError(f"file {path}: is a directory, not an event file")


def _lock_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536) or b"{}")
        who = f"pid {int(info['pid'])}"
        if info.get("host") and info["host"] != socket.gethostname():
            who += f" on {info['host']}"
        if info.get("command"):
            who += f": {info['command']}"
        return f" ({who})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _take_lock(directory: str, output: str) -> int:
    """An exclusive flock on ``directory/lock`` (released by the OS when this process dies)."""
    lock_path = os.path.join(directory, LOCK_NAME)
    for _ in range(20):
        os.makedirs(directory, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed by a writer finishing just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _lock_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(
                    f"file {output}: another process{holder} is writing this output (lock {lock_path}); "
                    "wait for it to finish or stop it"
                ) from None
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # locked a lock file that a finishing writer had just removed
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return fd
    raise ValueError(f"file {output}: could not take the lock {lock_path} (it keeps being removed)")


class EventWriter:
    """Streaming writer that survives crashes; a context manager.

    Events are buffered and written in segments: every :data:`BUFFER_EVENTS` events (or
    :data:`BUFFER_ROWS` pixel rows) one complete, small event file is built in memory, written
    under a temporary name, fsync'ed and renamed to ``<path>.partial/seg-NNNNNN.h5``, followed by
    a record of its size, event count and sha256. :meth:`close` assembles the segments into a
    temporary file next to ``path``, fsyncs and re-reads it, renames it onto ``path`` and removes
    the partial folder. So a kill at any instant (also mid-segment) leaves ``path`` untouched and
    every complete segment intact, and a ``resume=True`` rerun continues after the last valid
    segment and gives the same file as an uninterrupted run. A block that raises still writes
    the buffered events as a last segment. An exclusive lock (``<path>.partial/lock``) keeps a
    second writer away from the same output; a write failure raises :class:`WriteError`
    naming the file and the cause, and leaves no final file.

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
        Continue the partial folder of an earlier run written with the same extras, attrs and
        identity: :attr:`n_done` is set to its number of saved events, which the caller skips.
        Segments that are incomplete or fail their checksum are dropped (with the ones after
        them). An unreadable partial is replaced with a warning; one written with other
        settings raises ``ValueError`` naming what differs. Without ``resume`` an existing
        partial is discarded.
    identity : dict, optional
        JSON-serialisable description of what produces the events (input file, weights,
        settings); recorded in the partial folder and compared on resume, but not written
        into the output.

    Attributes
    ----------
    n_done : int
        Events already saved when the writer was opened (0 for a fresh start).
    n_written : int
        Events saved or buffered now (``n_done`` plus those appended).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        extras: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
        *,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.partial_path = self.path + PARTIAL_SUFFIX
        self._spec = _normalise_extras(extras)
        self._attrs = _normalise_attrs(attrs)
        if identity is not None and not isinstance(identity, Mapping):
            raise ValueError(f"identity must be a dict, got {type(identity).__name__}")
        self._identity = json.loads(_to_json(dict(identity or {}), "identity"))
        if os.path.isdir(self.path):
            raise ValueError(f"file {self.path}: is a directory; give the output file's name")
        self.n_done = 0
        self._closed = False
        self._segments: list[dict[str, Any]] = []
        self._lock_fd: int | None = None
        try:
            if os.path.lexists(self.partial_path) and not os.path.isdir(self.partial_path):
                if resume:
                    warnings.warn(f"{self.partial_path}: cannot resume (not a partial folder of this sparseseg); "
                                  "starting afresh", RuntimeWarning, stacklevel=2)
                os.unlink(self.partial_path)
            self._lock_fd = _take_lock(self.partial_path, self.path)
            if not (resume and self._resume()):
                self._start_fresh()
        except BaseException as exc:
            self._release()
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise _write_error(exc, getattr(exc, "filename", None) or self.partial_path) from None
            raise
        layout = None
        if self._segments:
            first = self._segments[0]
            layout = {"D": first["D"], "F": first["F"], "labels": first["labels"], "clusters": first["clusters"]}
        self._buf = _Buffer(self.path, self._spec, self.n_done, layout)

    # -- opening
    def _manifest(self) -> dict[str, Any]:
        return {"format": PARTIAL_FORMAT, "version": 1, "output": os.path.basename(self.path),
                "extras": _extras_to_json(self._spec), "attrs": self._attrs, "identity": self._identity}

    def _start_fresh(self) -> None:
        d = self.partial_path
        for name in os.listdir(d):
            if name != LOCK_NAME:
                _remove(os.path.join(d, name))
        _write_durable(d, MANIFEST_NAME, json.dumps(self._manifest(), indent=1).encode())
        self._segments = []
        self.n_done = 0

    def _resume(self) -> bool:
        """Take over the saved segments; False when there is nothing usable to resume."""
        d = self.partial_path
        label = d
        try:
            with open(os.path.join(d, MANIFEST_NAME), "rb") as fh:
                old = json.loads(fh.read())
            if not isinstance(old, dict) or old.get("format") != PARTIAL_FORMAT:
                raise ValueError("not a sparseseg partial folder")
        except FileNotFoundError:
            return False  # stopped before it saved anything
        except (OSError, ValueError) as exc:
            warnings.warn(f"{label}: cannot resume ({exc}); starting afresh", RuntimeWarning, stacklevel=3)
            return False
        restart = f"rerun with --restart (or delete {d}) to start over"
        old_id = old.get("identity") or {}
        diff = [k for k in sorted(set(old_id) | set(self._identity)) if old_id.get(k) != self._identity.get(k)]
        if diff:
            raise ValueError(
                f"file {label}: cannot resume: it was written with "
                f"{json.dumps({k: old_id.get(k) for k in diff})}, this run has "
                f"{json.dumps({k: self._identity.get(k) for k in diff})}; {restart}"
            )
        old_extras = old.get("extras")
        old_attrs = old.get("attrs")
        if isinstance(old_attrs, dict) and INFO_ATTRS & (set(old_attrs) | set(self._attrs)):
            # informational attributes (the command line) do not decide a resume: the first run's are kept
            for key in INFO_ATTRS:
                if key in old_attrs:
                    self._attrs[key] = old_attrs[key]
                else:
                    self._attrs.pop(key, None)
        if old_extras != _extras_to_json(self._spec) or old_attrs != self._attrs:
            raise ValueError(
                f"file {label}: cannot resume: it was written with extras {old_extras} "
                f"and attrs {json.dumps(old_attrs)}, this writer has extras {_extras_to_json(self._spec)} "
                f"and attrs {json.dumps(self._attrs)}; {restart}"
            )
        self._segments = _valid_segments(d, verify=True)
        keep = {MANIFEST_NAME, LOCK_NAME}
        for k in range(len(self._segments)):
            keep.update(_segment_names(k))
        for name in os.listdir(d):
            if name not in keep:  # torn or unconfirmed segments, temp files
                _remove(os.path.join(d, name))
        _fsync_dir(d)
        self.n_done = sum(int(info["events"]) for info in self._segments)
        return True

    def _release(self) -> None:
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            finally:
                self._lock_fd = None

    # -- writing
    @property
    def n_written(self) -> int:
        return sum(int(info["events"]) for info in self._segments) + len(self._buf)

    def append(self, event: Event, extras: Mapping[str, Any] | None = None) -> None:
        """Add one event (and its extra per-pixel arrays)."""
        if self._closed:
            raise ValueError(f"file {self.path}: writer is closed")
        self._buf.add(event, extras)
        if self._buf.full():
            self._write_segment()

    def _write_segment(self) -> None:
        block = self._buf.take()
        if block is None:
            return
        k = len(self._segments)
        h5name, jname = _segment_names(k)
        with _critical():
            try:
                image = _segment_image(block, self._spec, self._attrs, self.path)
                _write_durable(self.partial_path, h5name, image, fault="segment-write")
                _fault("segment-renamed")
                info = {"events": int(block["E"]), "rows": int(len(block["coords"])), "bytes": len(image),
                        "sha256": hashlib.sha256(image).hexdigest(), "D": int(block["D"]), "F": int(block["F"]),
                        "labels": block["labels"] is not None, "clusters": block["clusters"] is not None,
                        "max_dim": int(block["max_dim"])}
                _write_durable(self.partial_path, jname, json.dumps(info).encode())
            except OSError as exc:
                self._closed = True  # the writer cannot go on; the saved segments stay for a resume
                self._release()
                raise _write_error(exc, os.path.join(self.partial_path, h5name)) from None
            self._segments.append(info)
            _fault("segment-done")

    def _assemble(self) -> str:
        """Build the final file from the segments in a temp file next to ``path``; return its name."""
        tmp = _temp_path(self.path)
        try:
            with h5py.File(tmp, "w") as h5:
                store = _Store(h5, self.path, new=True, extras=self._spec, attrs=self._attrs)
                max_dim = max([int(info["max_dim"]) for info in self._segments] or [0])
                for k, info in enumerate(self._segments):
                    data = _load_segment(self.partial_path, k, info)
                    if data is None:
                        raise ValueError(
                            f"file {os.path.join(self.partial_path, _segment_names(k)[0])}: saved segment is "
                            f"damaged (size or sha256 differ from its record); rerun to resume from the segments before it"
                        )
                    with h5py.File(io.BytesIO(data), "r") as seg:
                        block = _read_block(seg, os.path.join(self.partial_path, _segment_names(k)[0]))
                    if block is not None:
                        store.append_block(block, max_dim=max_dim)
                    if k == len(self._segments) // 2:
                        _fault("assemble")
                store.finalize()
            _fsync_file(tmp)
            expected = sum(int(info["events"]) for info in self._segments)
            _verify_file(tmp, self.path, expected)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _write_error(exc, self.path) from None
            raise
        return tmp

    def close(self) -> None:
        """Finish: save the buffered events, assemble the output, make it durable and put it in place."""
        if self._closed:
            return
        self._closed = True
        try:
            self._write_segment()
            tmp = self._assemble()
            with _critical():
                try:
                    os.replace(tmp, self.path)
                except OSError as exc:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                    raise _write_error(exc, self.path) from None
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
                _fault("final-renamed")
                self._remove_partial()
        finally:
            self._release()

    def _remove_partial(self) -> None:
        d = self.partial_path
        try:
            for name in os.listdir(d):
                if name != LOCK_NAME:
                    _remove(os.path.join(d, name))
            os.unlink(os.path.join(d, LOCK_NAME))
            os.rmdir(d)
        except OSError:
            pass  # another writer took the name over just now; the output is in place

    def abort(self) -> None:
        """Save the buffered events as a segment and stop, leaving the partial folder for a resume."""
        if self._closed:
            return
        self._closed = True
        try:
            self._write_segment()
        finally:
            self._release()

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

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _verify_file(tmp: str, label: str, expected: int) -> None:
    """Re-read a written file in full, so that a write the OS lost shows up before it is used."""
    with _open_h5(tmp, "r", label) as h5:
        s = _check_structure(h5, label)
        if s["E"] != expected:
            raise ValueError(f"file {label}: assembled {s['E']} events, expected {expected}")
        names: list[str] = []
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            ds = h5[name]
            step = max(1, CHUNK_ROWS * 8)
            try:
                if ds.ndim == 0 or ds.shape[0] == 0:
                    continue
                for a in range(0, ds.shape[0], step):
                    ds[a : a + step]
            except (OSError, RuntimeError) as exc:
                raise WriteError(errno.EIO, f"dataset '/{name}' does not read back ({' '.join(str(exc).split())})",
                                 label) from None


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
