"""HDF5 event files, writing.

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
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import h5py
import numpy as np

from ..classes import CLASS_NAMES
from ..event import Event
from .format import (
    CHUNK_EVENTS, CHUNK_ROWS, FORMAT_NAME, FORMAT_VERSION, INFO_ATTRS, INT16_LIMIT, LOCK_NAME,
    MANIFEST_NAME, PARTIAL_FORMAT, PARTIAL_SUFFIX, PLANE_BYTES, _PIXEL_DATASETS, _append_rows,
    _check_event_arrays, _check_structure, _coords_dtype, _create, _extras_to_json,
    _normalise_attrs, _normalise_extras, _open_h5, _read_block, _split_meta, _temp_path, _to_json,
)


BUFFER_ROWS = 1 << 20
"""Pixel rows a writer buffers in memory before it writes them."""


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
