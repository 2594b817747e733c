"""The sparse event: one 2D wire-plane image or one 3D volume as coordinate/feature lists."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .classes import IGNORE, NUM_CLASSES

ADC_MIN = 10.0
"""Default masking threshold: a pixel enters the coordinate list when ADC >= ADC_MIN."""
ADC_MAX = 300.0
"""Default saturation: ADC values above ADC_MAX are clipped to it (never dropped)."""


def plane_name(plane: Any, ndim: int) -> str:
    """The plane name of an image: ``plane`` (its ``meta["plane"]``) when it has one, else
    "2D" or "3D" by its dimension ``ndim``: an image whose plane was not recorded is booked
    under an explicit name, never a placeholder, and is not guessed to be U, V or Y."""
    if plane is None or (isinstance(plane, str) and not plane):
        return f"{int(ndim)}D"
    return str(plane)


def _fail(field_name: str, message: str) -> None:
    raise ValueError(f"Event.{field_name}: {message}")


@dataclass
class Event:
    """One image (a 2D wire plane or a 3D voxel volume) as sparse lists.

    Parameters
    ----------
    coords : int32 array (N, D)
        Pixel coordinates, D = 2 (row = drift time, col = wire) or 3 (x, y, z). Unique, and
        within ``shape``. Their order is free; every per-pixel output follows it.
    features : float32 array (N, F)
        Per-pixel features; F = 1 (ADC) by default.
    shape : tuple of D ints
        Size of the full image.
    labels : uint8 array (N,), optional
        Class codes 0..4 (see :mod:`sparseseg.classes`) or 255 for "no truth".
    clusters : int32 array (N,), optional
        Particle instance id per pixel, -1 for none.
    vertices : float32 array (V, D), optional
        Interaction/decay vertices in pixel coordinates.
    meta : dict
        Free metadata: ``plane`` ("U", "V", "Y" or "3D"), ``event_id``, ``preset``, ...
    """

    coords: np.ndarray
    features: np.ndarray
    shape: tuple[int, ...]
    labels: np.ndarray | None = None
    clusters: np.ndarray | None = None
    vertices: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.validate()

    @classmethod
    def trusted(cls, **fields: Any) -> "Event":
        """An Event from fields already known to be valid (read back from a file its writer
        validated), without re-running :meth:`validate` -- about half the time of a read."""
        event = cls.__new__(cls)
        event.__dict__.update(fields)
        event.shape = tuple(int(s) for s in event.shape)
        event.meta = event.__dict__.get("meta") or {}
        for name in ("labels", "clusters", "vertices"):
            event.__dict__.setdefault(name, None)
        return event

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check dtypes, shapes, ranges and uniqueness; raise ``ValueError`` naming the field."""
        c, f = self.coords, self.features
        if not isinstance(c, np.ndarray) or c.dtype != np.int32:
            _fail("coords", f"expected an int32 numpy array, got {getattr(c, 'dtype', type(c).__name__)}")
        if c.ndim != 2 or c.shape[1] not in (2, 3):
            _fail("coords", f"expected shape (N, 2) or (N, 3), got {c.shape}")
        d = c.shape[1]
        if len(self.shape) != d:
            _fail("shape", f"has {len(self.shape)} dimensions but coords have D = {d}")
        if any(s <= 0 for s in self.shape):
            _fail("shape", f"sizes must be positive, got {self.shape}")
        n = c.shape[0]
        if not isinstance(f, np.ndarray) or f.dtype != np.float32:
            _fail("features", f"expected a float32 numpy array, got {getattr(f, 'dtype', type(f).__name__)}")
        if f.ndim != 2:
            _fail("features", f"expected shape (N, F), got {f.shape}")
        if f.shape[0] != n:
            _fail("features", f"length {f.shape[0]} does not match coords length {n}")
        if n:
            if not np.isfinite(f).all():
                bad = int((~np.isfinite(f)).any(axis=1).sum())
                _fail("features", f"{bad} row(s) hold NaN or inf")
            lo = c.min(axis=0)
            hi = c.max(axis=0)
            if (lo < 0).any() or (hi >= np.asarray(self.shape)).any():
                _fail(
                    "coords",
                    f"outside shape {self.shape}: per-axis min {lo.tolist()}, max {hi.tolist()}",
                )
            if np.unique(self._linear_index()).size != n:
                _fail("coords", "hold duplicate coordinates; each pixel may appear once")
        if self.labels is not None:
            lab = self.labels
            if not isinstance(lab, np.ndarray) or lab.dtype != np.uint8:
                _fail("labels", f"expected a uint8 numpy array, got {getattr(lab, 'dtype', type(lab).__name__)}")
            if lab.shape != (n,):
                _fail("labels", f"expected shape ({n},), got {lab.shape}")
            bad = (lab >= NUM_CLASSES) & (lab != IGNORE)
            if bad.any():
                _fail("labels", f"values must be 0..{NUM_CLASSES - 1} or {IGNORE}, found {sorted(set(lab[bad].tolist()))[:5]}")
        if self.clusters is not None:
            cl = self.clusters
            if not isinstance(cl, np.ndarray) or cl.dtype != np.int32:
                _fail("clusters", f"expected an int32 numpy array, got {getattr(cl, 'dtype', type(cl).__name__)}")
            if cl.shape != (n,):
                _fail("clusters", f"expected shape ({n},), got {cl.shape}")
        if self.vertices is not None:
            v = self.vertices
            if not isinstance(v, np.ndarray) or v.dtype != np.float32:
                _fail("vertices", f"expected a float32 numpy array, got {getattr(v, 'dtype', type(v).__name__)}")
            if v.ndim != 2 or v.shape[1] != d:
                _fail("vertices", f"expected shape (V, {d}), got {v.shape}")
            if not np.isfinite(v).all():
                _fail("vertices", "hold NaN or inf")

    def _linear_index(self) -> np.ndarray:
        return np.ravel_multi_index(tuple(self.coords.T.astype(np.int64)), self.shape)

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        """D: 2 for a wire plane, 3 for a voxel volume."""
        return self.coords.shape[1]

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def plane(self) -> str:
        """``meta["plane"]`` ("U", "V", "Y", ...); an image without one is named by its
        dimension, "2D" or "3D" (see :func:`plane_name`)."""
        return plane_name(self.meta.get("plane"), self.ndim)

    @property
    def occupancy(self) -> float:
        """Fraction of the image's pixels that are in the list."""
        return len(self) / float(np.prod(self.shape))

    def __repr__(self) -> str:  # short: arrays can be millions of rows
        parts = [f"N={len(self)}", f"shape={self.shape}", f"plane={self.plane}"]
        if "event_id" in self.meta:
            parts.append(f"event_id={self.meta['event_id']}")
        return f"Event({', '.join(parts)})"

    # ------------------------------------------------------------------ dense conversion
    @classmethod
    def from_dense(
        cls,
        image: np.ndarray,
        labels: np.ndarray | None = None,
        adc_min: float = ADC_MIN,
        adc_max: float = ADC_MAX,
        clusters: np.ndarray | None = None,
        **kwargs: Any,
    ) -> "Event":
        """Mask a dense image into an Event.

        A pixel is kept when ``image >= adc_min``; kept values above ``adc_max`` are clipped to
        ``adc_max`` (saturation), never dropped. ``labels``/``clusters``, when given, are dense
        arrays of the same shape, sampled at the kept pixels.
        """
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"Event.from_dense: image must be 2D or 3D, got {image.ndim}D shape {image.shape}")
        if not np.issubdtype(image.dtype, np.number):
            raise ValueError(f"Event.from_dense: image must be numeric, got dtype {image.dtype}")
        if np.isnan(image).any():
            raise ValueError("Event.from_dense: image holds NaN")
        if adc_max < adc_min:
            raise ValueError(f"Event.from_dense: adc_max ({adc_max}) is below adc_min ({adc_min})")
        for name, arr in (("labels", labels), ("clusters", clusters)):
            if arr is not None and np.shape(arr) != image.shape:
                raise ValueError(f"Event.from_dense: {name} shape {np.shape(arr)} differs from image shape {image.shape}")
        mask = image >= adc_min
        idx = np.nonzero(mask)
        coords = np.stack(idx, axis=1).astype(np.int32)
        feats = np.minimum(image[idx].astype(np.float32), np.float32(adc_max))[:, None]
        lab = None if labels is None else np.asarray(labels)[idx].astype(np.uint8)
        clu = None if clusters is None else np.asarray(clusters)[idx].astype(np.int32)
        return cls(coords=coords, features=feats, shape=image.shape, labels=lab, clusters=clu, **kwargs)

    def to_dense(self, fill: float = 0.0, channel: int = 0) -> np.ndarray:
        """Dense float32 image of one feature channel; pixels not in the list hold ``fill``."""
        out = np.full(self.shape, fill, dtype=np.float32)
        if len(self):
            out[tuple(self.coords.T)] = self.features[:, channel]
        return out

    def dense_labels(self, fill: int = IGNORE) -> np.ndarray:
        """Dense uint8 label image; pixels not in the list hold ``fill``."""
        if self.labels is None:
            raise ValueError("Event.labels: this event has no truth labels")
        out = np.full(self.shape, fill, dtype=np.uint8)
        if len(self):
            out[tuple(self.coords.T)] = self.labels
        return out

    def subset(self, index: np.ndarray) -> "Event":
        """A new Event holding the rows selected by ``index`` (bool mask or integer rows)."""
        return Event(
            coords=self.coords[index],
            features=self.features[index],
            shape=self.shape,
            labels=None if self.labels is None else self.labels[index],
            clusters=None if self.clusters is None else self.clusters[index],
            vertices=self.vertices,
            meta=dict(self.meta),
        )
