"""Detector geometry: the MicroBooNE-like TPC, its three wire planes, the drift-time axis,
and the 3 mm voxel cube of the 3D preset.

Coordinates are in cm: x = drift (0 at the anode wire planes), y = vertical (up), z = beam.
A pixel index along any axis is ``floor`` of the continuous coordinate returned by
:func:`project_points`; a pixel centre therefore sits at index + 0.5 in that continuous frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# ----------------------------------------------------------------------------- TPC
TPC_LO = np.array([0.0, -116.0, 0.0])
TPC_HI = np.array([256.0, 116.0, 1036.8])

DRIFT_VELOCITY = 0.111  # cm/us (1.11 mm/us at ~273 V/cm)
TICK_US = 0.5
DOWNSAMPLE = 6
ROW_CM = DRIFT_VELOCITY * TICK_US * DOWNSAMPLE  # drift distance per image row (~3.3 mm)
N_ROWS = 1008  # 6048 ticks / 6
X_TRIGGER_OFFSET = 100 * ROW_CM  # a beam-time deposit at the anode (x = 0) lands on row 100
WIRE_PITCH = 0.3

_S60 = float(np.sin(np.deg2rad(60.0)))
_C60 = float(np.cos(np.deg2rad(60.0)))
_UV_OFFSET = -TPC_LO[1] * _S60  # so that U/V wire coordinates start at 0


@dataclass(frozen=True)
class WirePlane:
    """One wire plane: wire coordinate = (cz * z + cy * y + offset) / pitch."""

    name: str
    n_wires: int
    cz: float
    cy: float
    offset: float
    gain: float  # relative ADC gain (induction planes are lower after deconvolution)
    spread: float  # fraction of a wire's charge seen on each neighbouring wire


PLANES: tuple[WirePlane, ...] = (
    WirePlane("U", 2400, _C60, +_S60, _UV_OFFSET, 0.85, 0.12),
    WirePlane("V", 2400, _C60, -_S60, _UV_OFFSET, 0.85, 0.12),
    WirePlane("Y", 3456, 1.0, 0.0, 0.0, 1.0, 0.10),
)
PLANE_BY_NAME = {p.name: p for p in PLANES}


def get_plane(plane: str | WirePlane) -> WirePlane:
    if isinstance(plane, WirePlane):
        return plane
    try:
        return PLANE_BY_NAME[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}; expected one of U, V, Y") from None


def drift_row(x: np.ndarray, time_shift: np.ndarray | float = 0.0) -> np.ndarray:
    """Continuous time-row coordinate of drift position ``x`` (cm).

    ``time_shift`` is the arrival time of the particle relative to the beam trigger, expressed
    as a drift distance (cm): a cosmic arriving ``t`` us late has ``time_shift = v_drift * t``.
    """
    return (np.asarray(x, dtype=np.float64) + time_shift + X_TRIGGER_OFFSET) / ROW_CM


def wire_coordinate(points: np.ndarray, plane: str | WirePlane) -> np.ndarray:
    """Continuous wire coordinate (units of wire pitch) of 3D points (N, 3)."""
    p = get_plane(plane)
    pts = np.asarray(points, dtype=np.float64)
    return (p.cz * pts[:, 2] + p.cy * pts[:, 1] + p.offset) / WIRE_PITCH


def project_points(points: np.ndarray, plane: str | WirePlane, time_shift=0.0) -> np.ndarray:
    """Project 3D points (N, 3) in cm onto a wire plane.

    Returns float64 (N, 2) continuous (row, wire) coordinates: the pixel holding a point is
    ``floor`` of them. The row depends only on x (and the arrival time), never on the plane,
    so one 3D point lands on the same time row in all three views.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.empty((pts.shape[0], 2))
    out[:, 0] = drift_row(pts[:, 0], time_shift)
    out[:, 1] = wire_coordinate(pts, plane)
    return out


@lru_cache(maxsize=None)
def dead_wires(plane: str, fraction: float = 0.03) -> np.ndarray:
    """Fixed mask (n_wires,) of dead wires for a plane: a few %, partly in small groups.

    The same for every event (a detector property), derived from a fixed seed.
    """
    p = get_plane(plane)
    rng = np.random.default_rng([7919, PLANES.index(p)])
    mask = np.zeros(p.n_wires, dtype=bool)
    target = int(round(fraction * p.n_wires))
    while mask.sum() < target:
        start = int(rng.integers(0, p.n_wires))
        width = 1 if rng.random() < 0.6 else int(rng.integers(2, 24))
        mask[start : start + width] = True
    mask.flags.writeable = False
    return mask


# ----------------------------------------------------------------------------- 3D cube
VOXEL_CM = 0.3
CUBE_VOXELS = 768
CUBE_LO = np.zeros(3)
CUBE_HI = np.full(3, CUBE_VOXELS * VOXEL_CM)


# ----------------------------------------------------------------------------- helpers
def clip_lines_to_box(p0: np.ndarray, d: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Parameters ``(t_in, t_out)`` where the lines ``p0 + t d`` (t >= 0) enter and leave the
    axis-aligned box [lo, hi] (any dimension). No intersection gives ``t_in >= t_out``.
    """
    p0 = np.asarray(p0, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (lo - p0) * inv
        t2 = (hi - p0) * inv
    tmin = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2))
    tmax = np.where(np.isnan(t2), np.inf, np.maximum(t1, t2))
    # a zero direction component: inside the slab -> unbounded, outside -> empty
    zero = d == 0
    inside = (p0 >= lo) & (p0 <= hi)
    tmin = np.where(zero, np.where(inside, -np.inf, np.inf), tmin)
    tmax = np.where(zero, np.where(inside, np.inf, -np.inf), tmax)
    t_in = np.maximum(tmin.max(axis=-1), 0.0)
    t_out = tmax.min(axis=-1)
    return t_in, t_out


def inside_box(points: np.ndarray, lo, hi) -> np.ndarray:
    return np.all((points >= lo) & (points <= hi), axis=-1)
