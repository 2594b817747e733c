"""Reader for the public PILArNet-M 3D dataset (DeepLearnPhysics), mapped onto this project's classes.

Layout of a PILArNet-M HDF5 file, as documented and read by the DeepLearnPhysics loaders:
``DATASET.md`` and ``polarmae/datasets/PILArNet.py`` in github.com/DeepLearnPhysics/PoLAr-MAE
(the original "v1" release) and ``pimm/datasets/pilarnet.py`` of particle-imaging-models
(pimm; the reprocessed "v2"/"v3" releases with PID, used by Panda):

* ``/point``: one variable-length entry per event, a flattened float array that reshapes to
  (N, 8): x, y, z, voxel value, energy deposit, absolute time, number of electrons, dx.
* ``/cluster``: one variable-length entry per event, flattened (M, 5) in the original release
  ("v1": number of points, fragment id, group id, interaction id, semantic type) or (M, 6) in
  the reprocessed one ("v2"/"v3": the same plus a PID column).
* ``/cluster_extra``: (v2/v3 only) flattened (M, 5) or (M, 6) per-cluster floats (momentum,
  particle vertex, ...); not used here.
* The points of an event are ordered by cluster: the first ``cluster[0, 0]`` points belong to
  cluster 0, and so on (sizes sum to N). The first cluster holds the low-energy scatters.

Semantic types (larcv convention): 0 shower, 1 track, 2 Michel, 3 delta, 4 low-energy deposit.
PID (v2/v3): 0 photon, 1 electron, 2 muon, 3 pion, 4 proton, 5 kaon (SPINE's numbering),
-1 none (low-energy deposits).

Mapping (assumptions):

* shower -> shower (2), Michel -> Michel (4), delta -> delta (3);
* track -> MIP (1), except PID proton (4) or kaon (5) -> HIP (0); muon, pion, an unknown PID or
  a file without PID stay MIP (so v1 files have no HIP at all);
* low-energy deposits (4) and any other code -> 255 (ignore); their points stay in the event.
* cluster id = the cluster's group id (particle instance), -1 for low-energy deposits and for
  negative group ids.
* coordinates = x, y, z rounded to int32 voxel indices, in a 768^3 volume unless a root
  attribute ``shape`` or the ``shape`` argument says otherwise; a point outside it is an error.
* features = the voxel value (column 3); ``feature_columns`` picks others (e.g. (3, 4) adds the
  energy deposit).
* a voxel listed by several clusters is kept once, with the label, cluster and features of the
  row of highest priority (HIP > MIP > shower > delta > Michel > ignore; the first such row).
* vertices are not filled (the file's vertex columns are per particle and their units are not
  documented); meta = plane "3D", event_id = entry number, source, file name and revision.
"""
from __future__ import annotations

import errno
import operator
import os
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from ..classes import DELTA, HIP, IGNORE, MICHEL, MIP, SHOWER
from ..event import Event

__all__ = ["PilarnetFile", "read_pilarnet", "PILARNET_SHAPE", "map_labels"]

PILARNET_SHAPE = (768, 768, 768)
POINT_COLUMNS = 8
COLUMN_NAMES = ("x", "y", "z", "voxel_value", "energy_deposit", "time", "num_electrons", "dx")
"""Names of the 8 columns of a ``/point`` row."""
FEATURE_UNITS = "MeV"
"""Units of the voxel value (and energy deposit) columns: energy deposited in the voxel, in MeV,
as documented with the PILArNet-M release; a minimum-ionising track deposits ~2.1 MeV/cm, so
~0.6-1 MeV per 3 mm voxel. (The simulator's ``pilarnet`` preset writes ADC-like charge instead;
see the 3D model card.)"""

# larcv semantic types
SEM_SHOWER, SEM_TRACK, SEM_MICHEL, SEM_DELTA, SEM_LOWE = 0, 1, 2, 3, 4
# PID codes of the reprocessed release
PID_PHOTON, PID_ELECTRON, PID_MUON, PID_PION, PID_PROTON, PID_KAON = range(6)
HIP_PIDS = (PID_PROTON, PID_KAON)


def map_labels(semantic: np.ndarray, pid: np.ndarray | None = None) -> np.ndarray:
    """Map larcv semantic types (and PID, when given) to this project's class codes.

    Parameters
    ----------
    semantic : int array (M,)
        0 shower, 1 track, 2 Michel, 3 delta, 4 low-energy deposit.
    pid : int array (M,), optional
        0 photon, 1 electron, 2 muon, 3 pion, 4 proton, 5 kaon, -1 none.

    Returns
    -------
    uint8 array (M,)
        HIP 0, MIP 1, shower 2, delta 3, Michel 4 or 255 (ignore).
    """
    semantic = np.asarray(semantic).astype(np.int64)
    out = np.full(semantic.shape, IGNORE, dtype=np.uint8)
    out[semantic == SEM_SHOWER] = SHOWER
    out[semantic == SEM_MICHEL] = MICHEL
    out[semantic == SEM_DELTA] = DELTA
    track = semantic == SEM_TRACK
    out[track] = MIP
    if pid is not None:
        out[track & np.isin(np.asarray(pid).astype(np.int64), HIP_PIDS)] = HIP
    return out


def _priority(labels: np.ndarray) -> np.ndarray:
    # class codes are already in priority order (lower wins); ignore comes last
    return np.where(labels == IGNORE, 1000, labels.astype(np.int64))


class PilarnetFile:
    """Random access to the events of one PILArNet-M HDF5 file, as :class:`Event` objects.

    Parameters
    ----------
    path : str or PathLike
    shape : sequence of 3 ints, optional
        Volume size; default: root attribute ``shape`` if present, else 768^3.
    feature_columns : sequence of int
        Columns of the (N, 8) point rows used as features (default: voxel value).
    use_pid : bool
        Split tracks into HIP/MIP with the PID column when the file has one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shape: Sequence[int] | None = None,
        feature_columns: Sequence[int] = (3,),
        use_pid: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(errno.ENOENT, "no such PILArNet-M file", self.path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"file {self.path}: not a readable HDF5 file (corrupt or truncated?): {exc}") from None
        try:
            self._setup(shape, feature_columns, use_pid)
        except BaseException:
            self._h5.close()
            raise

    def _setup(self, shape: Sequence[int] | None, feature_columns: Sequence[int], use_pid: bool) -> None:
        h5, where = self._h5, f"file {self.path}"
        for name in ("point", "cluster"):
            if name not in h5 or not isinstance(h5[name], h5py.Dataset):
                raise ValueError(f"{where}: dataset '/{name}' is missing (not a PILArNet-M file)")
            if h5[name].ndim != 1:
                raise ValueError(
                    f"{where}: dataset '/{name}' must hold one variable-length entry per event (1D), got shape {h5[name].shape}"
                )
        self._point, self._cluster = h5["point"], h5["cluster"]
        if self._cluster.shape[0] != self._point.shape[0]:
            raise ValueError(
                f"{where}: dataset '/cluster' has {self._cluster.shape[0]} entries but '/point' has {self._point.shape[0]}"
            )
        self.has_extra = "cluster_extra" in h5
        self.revision = "v2" if self.has_extra else "v1"
        self._widths = (6, 5) if self.has_extra else (5, 6)
        if shape is None:
            shape = h5.attrs.get("shape", PILARNET_SHAPE)
        self.shape = tuple(int(s) for s in np.asarray(shape).ravel())
        if len(self.shape) != 3 or any(s <= 0 for s in self.shape):
            raise ValueError(f"{where}: volume shape must be 3 positive ints, got {self.shape}")
        cols = tuple(int(c) for c in feature_columns)
        if not cols or any(not 0 <= c < POINT_COLUMNS for c in cols):
            raise ValueError(f"feature_columns must be column numbers 0..{POINT_COLUMNS - 1}, got {feature_columns}")
        self.feature_columns = cols
        self.use_pid = use_pid
        # the read-only interface of EventFile, so every command reads either kind of file
        n = len(self)
        self.D = 3
        self.event_ids = np.arange(n, dtype=np.int64)
        self.planes = np.full(n, "3D", dtype=object)
        self.shapes = np.tile(np.asarray(self.shape, np.int64), (n, 1))
        self.extra_names: tuple[str, ...] = ()
        self.attrs: dict[str, Any] = {
            "format": "pilarnet-m",
            "revision": self.revision,
            "D": 3,
            "feature_columns": ",".join(COLUMN_NAMES[c] for c in cols),
            "feature_units": FEATURE_UNITS,
        }

    def __len__(self) -> int:
        return int(self._point.shape[0])

    def _read(self, ds: h5py.Dataset, i: int) -> np.ndarray:
        try:
            return np.asarray(ds[i])
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"file {self.path}: dataset '{ds.name}' entry {i} could not be read ({exc})") from None

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Entry ``i`` as stored: points (N, 8) float and clusters (M, 5 or 6)."""
        j = self._index(i)
        where = f"file {self.path}: event {j}"
        pts = self._read(self._point, j)
        if pts.size % POINT_COLUMNS:
            raise ValueError(f"{where}: dataset '/point' entry has {pts.size} values, not a multiple of {POINT_COLUMNS}")
        pts = pts.reshape(-1, POINT_COLUMNS)
        flat = self._read(self._cluster, j).ravel()
        for width in self._widths:
            if flat.size % width == 0:
                cl = flat.reshape(-1, width)
                if int(cl[:, 0].astype(np.int64).sum()) == len(pts) and (cl[:, 0] >= 0).all():
                    return pts, cl
        raise ValueError(
            f"{where}: dataset '/cluster' entry ({flat.size} values) does not reshape to (M, 5) or (M, 6) "
            f"rows whose sizes (column 0) sum to the {len(pts)} points of '/point'"
        )

    def _index(self, i: Any) -> int:
        if isinstance(i, (bool, np.bool_)):
            raise TypeError("event index must be an integer, got bool")
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"event index must be an integer, got {type(i).__name__}") from None
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"event index {i} out of range for file {self.path} with {n} events")
        return j

    def __getitem__(self, i: int) -> Event:
        j = self._index(i)
        where = f"file {self.path}: event {j}"
        pts, cl = self.raw(j)
        width = cl.shape[1]
        sizes = cl[:, 0].astype(np.int64)
        semantic = cl[:, 4].astype(np.int64)  # column 4 in both layouts
        pid = cl[:, 5].astype(np.int64) if (width == 6 and self.use_pid) else None
        cluster_labels = map_labels(semantic, pid)
        group = cl[:, 2].astype(np.int64)
        cluster_ids = np.where((semantic == SEM_LOWE) | (group < 0), -1, group).astype(np.int32)
        labels = np.repeat(cluster_labels, sizes)
        clusters = np.repeat(cluster_ids, sizes)

        if not np.isfinite(pts[:, :3]).all():
            raise ValueError(f"{where}: dataset '/point' holds NaN or inf coordinates")
        coords = np.rint(pts[:, :3]).astype(np.int32)
        if len(coords):
            lo, hi = coords.min(axis=0), coords.max(axis=0)
            if (lo < 0).any() or (hi >= np.asarray(self.shape)).any():
                raise ValueError(
                    f"{where}: dataset '/point' coordinates outside the volume {self.shape}: "
                    f"per-axis min {lo.tolist()}, max {hi.tolist()} (pass shape=... for another volume)"
                )
        feats = np.ascontiguousarray(pts[:, list(self.feature_columns)], dtype=np.float32)

        # one row per voxel: keep the row of highest priority (stable: the first among equals)
        if len(coords):
            lin = np.ravel_multi_index(tuple(coords.T.astype(np.int64)), self.shape)
            order = np.lexsort((np.arange(len(lin)), _priority(labels), lin))
            first = np.ones(len(order), dtype=bool)
            first[1:] = lin[order[1:]] != lin[order[:-1]]
            if not first.all():
                keep = np.sort(order[first])
                coords, feats, labels, clusters = coords[keep], feats[keep], labels[keep], clusters[keep]

        meta = {
            "plane": "3D",
            "event_id": j,
            "source": "PILArNet-M",
            "file": os.path.basename(self.path),
            "revision": "v2" if width == 6 else "v1",
        }
        return Event(coords=coords, features=feats, shape=self.shape, labels=labels, clusters=clusters, meta=meta)

    def __iter__(self) -> Iterator[Event]:
        for j in range(len(self)):
            yield self[j]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "PilarnetFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PilarnetFile({self.path!r}, events={len(self)}, revision={self.revision})"


def read_pilarnet(path: str | os.PathLike, **kwargs: Any) -> Iterator[Event]:
    """Iterate over the events of a PILArNet-M file (keyword arguments as :class:`PilarnetFile`).

    The file is opened (and checked) at the call, so a missing or invalid file raises here,
    not at the first ``next``.
    """
    f = PilarnetFile(path, **kwargs)

    def events() -> Iterator[Event]:
        with f:
            yield from f

    return events()
