"""Simulated ROI samples: one wire plane's waveforms of a single muon track or electron
shower (signal, truth charge, network inputs) and the training/validation datasets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..config import require_positive

from .threshold import threshold_roi


DEFAULT_ANGLES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 85)
"""theta_xz values (degrees) of the track scan, as in that report."""
DEFAULT_ENERGIES = (100, 500, 1000, 2000, 3000, 5000)
"""Shower energies (MeV) of the shower scan, as in that report."""
@dataclass
class ROIConfig:
    """Imaging, noise, traditional-ROI and metric parameters of the ROI study.

    Sizes are in wires and 0.5 us ticks; charges in ADC (per tick for waveforms, summed for
    channel charges).
    """

    plane: str = "U"
    n_wires: int = 128
    n_ticks: int = 1280
    rebin: int = 10
    vertex_wire: int = 16
    vertex_tick: int = 128
    signal_sigma: float = 3.0
    noise_rms: float = 1.0
    baseline_rms: float = 0.5
    truth_threshold: float = 0.5
    signal_scale: float = 0.05
    lf_window: int = 61
    tight_sigma: float = 4.0
    loose_sigma: float = 2.5
    tight_pad: int = 5
    loose_pad: int = 10
    track_energy: float = 2000.0
    track_length: float = 90.0
    shower_theta_xz: float = 20.0
    min_truth: float = 30.0
    bad_ratio: float = 0.2

    def __post_init__(self) -> None:
        from ..simulate.geometry import get_plane

        get_plane(self.plane)
        require_positive(self, ("n_wires", "n_ticks", "rebin", "lf_window"), "ROIConfig.")
        if not 0 <= self.vertex_wire < self.n_wires or not 0 <= self.vertex_tick < self.n_ticks:
            raise ValueError("ROIConfig: the vertex (vertex_wire, vertex_tick) must lie inside the window")

    @property
    def n_bins(self) -> int:
        """Time bins after rebinning: ceil(n_ticks / rebin)."""
        return -(-self.n_ticks // self.rebin)


@dataclass
class ROISample:
    """One simulated waveform window of one plane (W wires x T ticks, Tb = T / rebin bins).

    Attributes
    ----------
    signal : float32 (W, T)   deconvolved waveform with noise
    truth : float32 (W, T)    noise-free true signal
    mask : bool (W, T)        truth ROI (truth > truth_threshold)
    inputs : float32 (3, W, Tb)  network input: signal, loose ROI map, tight ROI map
    target : float32 (1, W, Tb)  rebinned truth mask
    q_truth : float64 (W,)    true charge per wire
    meta : dict               kind, theta_xz, energy, vertex wire/tick, direction
    """

    signal: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    inputs: np.ndarray
    target: np.ndarray
    q_truth: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def rebin_time(a: np.ndarray, factor: int, how: str = "mean") -> np.ndarray:
    """Rebin the last axis of ``a`` (..., T) by ``factor`` -> (..., ceil(T / factor)).

    ``how`` is "mean", "sum" or "max"; a partial last bin is zero-padded first.
    """
    a = np.asarray(a)
    t = a.shape[-1]
    nb = -(-t // factor)
    pad = nb * factor - t
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    a = a.reshape(a.shape[:-1] + (nb, factor))
    if how == "mean":
        return a.mean(axis=-1)
    if how == "sum":
        return a.sum(axis=-1)
    if how == "max":
        return a.max(axis=-1)
    raise ValueError(f"rebin_time: how must be mean, sum or max, got {how!r}")


def make_inputs(signal: np.ndarray, config: ROIConfig, rois: dict | None = None) -> np.ndarray:
    """DNN-ROI-like network input (3, W, Tb) from waveforms (W, T): rebinned signal x
    ``signal_scale``, loose ROI map, tight ROI map (both rebinned by max)."""
    c = config
    if rois is None:
        rois = threshold_roi(signal, None, c.lf_window, c.tight_sigma, c.loose_sigma, c.tight_pad, c.loose_pad)
    return np.stack([
        rebin_time(signal, c.rebin, "mean") * c.signal_scale,
        rebin_time(rois["loose"].astype(np.float32), c.rebin, "max"),
        rebin_time(rois["tight"].astype(np.float32), c.rebin, "max"),
    ]).astype(np.float32)


def _direction(theta_xz_deg: float) -> np.ndarray:
    """Unit vector in the x-z plane at theta_xz from the z (beam) axis towards x (drift)."""
    th = np.deg2rad(theta_xz_deg)
    return np.array([np.sin(th), 0.0, np.cos(th)])


def simulate_roi_sample(kind: str = "track", theta_xz: float | None = None, energy: float | None = None,
                        seed: int = 0, index: int = 0, config: ROIConfig | None = None) -> ROISample:
    """Simulate one ROI window (see the module docstring).

    Parameters
    ----------
    kind : "track" or "shower"
        A muon (``track_energy``, cut at ``track_length`` cm) or an electron of ``energy``
        MeV (default 1000), starting at the window's vertex (wire ``vertex_wire``, tick
        ``vertex_tick``) and going at ``theta_xz`` degrees (default 0 for tracks,
        ``shower_theta_xz`` for showers) in the x-z plane, i.e. towards larger wires and later ticks.
    seed, index : int
        The sample depends only on (kind, theta_xz, energy, seed, index, config).
    """
    from ..simulate.generator import Primaries, _run_physics
    from ..simulate.geometry import DOWNSAMPLE, TPC_HI, TPC_LO, drift_row, get_plane, project_points, wire_coordinate
    from ..simulate.render import charge_points

    c = config or ROIConfig()
    if kind not in ("track", "shower"):
        raise ValueError(f"simulate_roi_sample: kind must be 'track' or 'shower', got {kind!r}")
    plane = get_plane(c.plane)
    if theta_xz is None:
        theta_xz = c.shower_theta_xz if kind == "shower" else 0.0
    code = 1 if kind == "track" else 2
    rng, rng_det = (np.random.default_rng(s) for s in np.random.SeedSequence(
        [int(seed), int(index), code, int(round(theta_xz * 10)), int(round((energy or 0) * 10))]).spawn(2))
    vertex = np.array([60.0, 0.0, 300.0])
    prim = Primaries()
    if kind == "track":
        prim.add(13, vertex, _direction(theta_xz), c.track_energy, max_len=c.track_length, parent="single")
        e = c.track_energy
    else:
        e = 1000.0 if energy is None else float(energy)
        prim.add(11, vertex, _direction(theta_xz), e, parent="single")
    deps, _ = _run_physics(rng, prim, TPC_LO, TPC_HI, kind, vertex)
    pts = charge_points(rng_det, deps, diffuse=True)
    # continuous (tick, wire) of the vertex and of every charge sample
    v_rw = project_points(vertex[None], plane)[0]
    t0 = np.floor(v_rw[0] * DOWNSAMPLE) - c.vertex_tick
    w0 = np.floor(v_rw[1]) - c.vertex_wire
    tick = np.floor(drift_row(pts.pos[:, 0], pts.shift) * DOWNSAMPLE - t0).astype(np.int64)
    wire = np.floor(wire_coordinate(pts.pos, plane) - w0).astype(np.int64)
    ok = (tick >= 0) & (tick < c.n_ticks) & (wire >= 0) & (wire < c.n_wires)
    q = np.bincount(wire[ok] * c.n_ticks + tick[ok], weights=pts.q[ok] * plane.gain,
                    minlength=c.n_wires * c.n_ticks).reshape(c.n_wires, c.n_ticks)
    truth = ndimage.gaussian_filter1d(q, c.signal_sigma, axis=1, mode="constant") if c.signal_sigma > 0 else q
    # electronics noise through the same filter, scaled to noise_rms per tick
    white = rng_det.standard_normal((c.n_wires, c.n_ticks))
    noise = ndimage.gaussian_filter1d(white, c.signal_sigma, axis=1, mode="wrap") if c.signal_sigma > 0 else white
    noise *= c.noise_rms / max(float(noise.std()), 1e-12)
    t = np.arange(c.n_ticks)
    period = rng_det.uniform(400.0, 4000.0, (c.n_wires, 2, 1))
    phase = rng_det.uniform(0, 2 * np.pi, (c.n_wires, 2, 1))
    wander = c.baseline_rms * np.sin(2 * np.pi * t / period + phase).sum(axis=1)
    signal = (truth + noise + wander).astype(np.float32)
    mask = truth > c.truth_threshold
    inputs = make_inputs(signal, c)
    target = rebin_time(mask.astype(np.float32), c.rebin, "max")[None]
    meta = {"kind": kind, "theta_xz": float(theta_xz), "energy": float(e), "vertex_wire": c.vertex_wire,
            "vertex_tick": c.vertex_tick, "direction": 1, "plane": c.plane}
    return ROISample(signal, truth.astype(np.float32), mask, inputs, target.astype(np.float32), q.sum(axis=1), meta)


def roi_dataset(n: int, seed: int = 0, config: ROIConfig | None = None, shower_fraction: float = 0.5,
                start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training arrays of ``n`` samples: tracks at theta_xz uniform in [0, 89] deg and
    showers of log-uniform energy in [0.1, 5] GeV at theta_xz uniform in [0, 60] deg.

    Returns inputs float32 (n, 3, W, Tb) and targets float32 (n, 1, W, Tb).
    """
    c = config or ROIConfig()
    rng = np.random.default_rng([int(seed), 4242, int(start)])
    xs = np.zeros((n, 3, c.n_wires, c.n_bins), np.float32)
    ys = np.zeros((n, 1, c.n_wires, c.n_bins), np.float32)
    for i in range(n):
        if rng.random() < shower_fraction:
            s = simulate_roi_sample("shower", float(rng.uniform(0, 60)), float(np.exp(rng.uniform(np.log(100), np.log(5000)))),
                                    seed, start + i, c)
        else:
            s = simulate_roi_sample("track", float(rng.uniform(0, 89)), None, seed, start + i, c)
        xs[i], ys[i] = s.inputs, s.target
    return xs, ys
