"""HDF5 event files, the format: many sparse events in one file as ragged (CSR) arrays.


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

Here: the format's constants, attribute names, structure checks and the helpers writer
(:mod:`.writer`) and reader (:mod:`.reader`) share.
"""
from __future__ import annotations

import errno
import json
import operator
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from ..event import Event


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


INFO_ATTRS = frozenset({"command"})
"""Root attributes that describe a run but do not decide whether a partial output can be
resumed: a resumed file keeps the first run's values."""


PLANE_BYTES = 16
NO_EVENT_ID = np.iinfo(np.int64).min
INT16_LIMIT = 32768

RESERVED_ATTRS = ("format", "format_version", "D", "class_names", "attrs_json", "extras_json")
"""Root attributes the format itself writes: a caller's attributes may not use these names."""
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
        if key in RESERVED_ATTRS:
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


def _temp_path(path: str) -> str:
    """An empty temporary file next to ``path``, with the permissions a new file would get."""
    from ..atomic import temp_file

    fd, tmp = temp_file(os.path.abspath(path))
    os.close(fd)
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
PARTIAL_SUFFIX = ".partial"
"""A streaming writer keeps its work in the folder ``<output>.partial`` until it finishes."""
PARTIAL_FORMAT = "sparseseg-partial"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
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
