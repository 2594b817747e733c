"""DNN-ROI data, the traditional threshold ROI finder, and ROI charge metrics, after the
ProtoDUNE-HD DNN-ROI comparison (H. Nam, "Status report on DNN SigProc in PD-HD").

Data
----
:func:`simulate_roi_sample` shoots one particle -- a muon track at angle ``theta_xz`` or an
electron shower of energy E -- with the simulator's 3D physics (multiple scattering, delta
rays, EM cascade, recombination, diffusion) and images one wire plane (default U) as a
wire x tick waveform window at the full 0.5 us tick resolution:

* ``truth`` (W, T): the true charge of each (wire, tick) -- the diffused charge samples of
  the simulator binned at tick resolution (not upsampled rows), smeared in time by a
  Gaussian of ``signal_sigma`` ticks (electronics shaping + software filter); ADC units,
  so a MIP crossing one U wire gives ~100-150 ADC in all.
* ``signal`` (W, T): the deconvolved waveform = ``truth`` + electronics noise (white noise
  through the same Gaussian, ``noise_rms`` per tick) + a slow baseline wander per wire
  (``baseline_rms``: the low-frequency noise that deconvolution leaves on induction planes).
* ``mask`` (W, T): the truth ROI, ticks where ``truth`` > ``truth_threshold``.
* network ``inputs`` (3, W, T/rebin), modelled on DNN-ROI's: the rebinned (mean) signal
  (scaled by ``signal_scale``), and the loose and tight ROI maps of the traditional finder
  (rebinned by max); ``target`` (1, W, T/rebin) is the truth mask rebinned by max. The time
  rebin factor is ``rebin`` (default 10, as in the DNN-ROI training).

Traditional ROI
---------------
:func:`threshold_roi`: subtract a running mean of ``lf_window`` ticks from each waveform (a
low-frequency filter, as the tight/loose LF filters do), mark ticks above ``tight_sigma`` and
``loose_sigma`` times the wire's robust noise RMS, pad them, and keep the loose regions that
hold a tight tick. Long, slow signals -- tracks at large theta_xz, which spread their charge
over hundreds of ticks of few wires -- are largely removed by the LF filter: this is where
the traditional method loses charge.

Metrics (as in that report)
------------------
Per channel (wire) the reconstructed charge is the sum of the signal inside the ROI, after a
linear baseline through each ROI's end ticks; the truth is the summed true charge. Over the
valid truth channels (Q_truth >= ``min_truth``) with r = Q_reco / Q_truth:

* inefficiency = 100 x (bad channels) / (valid truth channels), a bad channel having
  r < ``bad_ratio`` (its charge was essentially not found);
* bias = 100 (|mean r| - 1) and resolution = 100 RMS(r) / |mean r|, over the valid channels
  that are not bad (RMS = standard deviation about the mean, as ROOT's histogram RMS);
* shower charge profile R = sum Q_reco / sum Q_truth over the 42 wires from the vertex wire
  along the shower direction (about 1-2 radiation lengths).

:func:`roi_evaluate` compares the traditional ROI with any ROI networks on the same events,
vs theta_xz (tracks) and shower energy, and writes tables, JSON and plots.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from .models import require_positive

__all__ = [
    "ROIConfig",
    "ROISample",
    "simulate_roi_sample",
    "roi_dataset",
    "make_inputs",
    "rebin_time",
    "threshold_roi",
    "roi_charge",
    "prob_to_mask",
    "charge_metrics",
    "charge_profile",
    "predict_mask",
    "roi_evaluate",
    "format_roi_tables",
    "plot_roi_metrics",
    "roi_summary",
    "format_roi_summary",
    "roi_cost",
    "load_roi_models",
    "shipped_roi_weights",
    "DEFAULT_ANGLES",
    "DEFAULT_ENERGIES",
]

DEFAULT_ANGLES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 85)
"""theta_xz values (degrees) of the track scan, as in that report."""
DEFAULT_ENERGIES = (100, 500, 1000, 2000, 3000, 5000)
"""Shower energies (MeV) of the shower scan, as in that report."""
PROFILE_WIRES = 42


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
        from .simulate.geometry import get_plane

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


# --------------------------------------------------------------------------- helpers
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


def _dilate_time(mask: np.ndarray, pad: int) -> np.ndarray:
    if pad <= 0:
        return mask.astype(bool)
    return ndimage.maximum_filter1d(mask.astype(np.uint8), size=2 * pad + 1, axis=-1, mode="constant") > 0


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True along the last axis of a 2D mask: (row, start, stop) arrays."""
    m = np.asarray(mask, bool)
    padded = np.zeros((m.shape[0], m.shape[1] + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    rs, s = np.nonzero(d == 1)
    re_, e = np.nonzero(d == -1)
    return rs, s, e  # row-major order pairs starts with stops


def threshold_roi(
    signal: np.ndarray,
    noise_rms: np.ndarray | float | None = None,
    lf_window: int = 61,
    tight_sigma: float = 4.0,
    loose_sigma: float = 2.5,
    tight_pad: int = 5,
    loose_pad: int = 10,
) -> dict[str, np.ndarray]:
    """Traditional threshold ROI finder on waveforms (W, T).

    Parameters
    ----------
    signal : float (W, T)
        Deconvolved waveforms, one row per wire.
    noise_rms : float or (W,), optional
        Noise RMS per wire of the LF-filtered waveform; default: a robust estimate
        (1.4826 x median absolute deviation) per wire.
    lf_window : int
        Length (ticks) of the running mean subtracted from each waveform (LF filter); 1 or
        less disables it.
    tight_sigma, loose_sigma : float
        Thresholds in units of ``noise_rms``.
    tight_pad, loose_pad : int
        Ticks added on each side of the tight / loose regions.

    Returns
    -------
    dict of bool (W, T) arrays: ``tight`` and ``loose`` (padded threshold maps) and ``roi``
    = loose regions holding at least one tight tick, united with the tight ones.
    """
    s = np.asarray(signal, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"threshold_roi: signal must be (wires, ticks), got shape {s.shape}")
    hp = s - ndimage.uniform_filter1d(s, size=int(lf_window), axis=1, mode="nearest") if lf_window > 1 else s
    if noise_rms is None:
        med = np.median(hp, axis=1, keepdims=True)
        rms = 1.4826 * np.median(np.abs(hp - med), axis=1)
    else:
        rms = np.broadcast_to(np.asarray(noise_rms, dtype=np.float64), (s.shape[0],))
    rms = np.maximum(rms, 1e-12)[:, None]
    tight = _dilate_time(hp > tight_sigma * rms, tight_pad)
    loose = _dilate_time(hp > loose_sigma * rms, loose_pad)
    structure = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    lab, n = ndimage.label(loose, structure=structure)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[tight & loose])] = True
    keep[0] = False
    roi = keep[lab] | tight
    return {"roi": roi, "loose": loose, "tight": tight}


def roi_charge(signal: np.ndarray, mask: np.ndarray, baseline: bool = True) -> np.ndarray:
    """Reconstructed charge per wire: the signal summed over the ROI ticks.

    Parameters
    ----------
    signal : float (W, T)
    mask : bool (W, T)
        ROI ticks.
    baseline : bool
        Subtract, for each ROI (a run of consecutive ticks on a wire), the straight line
        through its first and last ticks (a local baseline, as ROI-based signal processing
        does); the charge of a run of n ticks is then sum(signal) - n (s_first + s_last) / 2.

    Returns
    -------
    float64 (W,)
    """
    s = np.asarray(signal, dtype=np.float64)
    m = np.asarray(mask, bool)
    if s.shape != m.shape or s.ndim != 2:
        raise ValueError(f"roi_charge: signal {s.shape} and mask {m.shape} must be the same (W, T) shape")
    rows, start, stop = _runs(m)
    cs = np.concatenate([np.zeros((s.shape[0], 1)), np.cumsum(s, axis=1)], axis=1)
    q = cs[rows, stop] - cs[rows, start]
    if baseline and rows.size:
        q = q - (stop - start) * 0.5 * (s[rows, start] + s[rows, stop - 1])
    return np.bincount(rows, weights=q, minlength=s.shape[0])


def prob_to_mask(prob: np.ndarray, rebin: int, n_ticks: int, threshold: float = 0.5) -> np.ndarray:
    """Network output (W, Tb) probabilities -> tick-level bool ROI mask (W, n_ticks)."""
    p = np.asarray(prob)
    return np.repeat(p >= threshold, rebin, axis=-1)[..., :n_ticks]


# --------------------------------------------------------------------------- metrics
def charge_metrics(q_reco: np.ndarray, q_truth: np.ndarray, min_truth: float = 30.0, bad_ratio: float = 0.2) -> dict[str, float]:
    """Bias, resolution and inefficiency (in %) of per-channel charges, as in that report.

    Parameters
    ----------
    q_reco, q_truth : float (N,)
        Reconstructed and true charge of N channels (any number of events concatenated).
    min_truth : float
        A channel is a valid truth channel when q_truth >= min_truth.
    bad_ratio : float
        A valid channel is bad when q_reco / q_truth < bad_ratio.

    Returns
    -------
    dict: ``bias`` = 100 (|mean r| - 1) and ``resolution`` = 100 std(r) / |mean r| over the
    good valid channels (r = q_reco / q_truth); ``inefficiency`` = 100 n_bad / n_valid;
    ``mean_ratio``, ``n_valid``, ``n_bad``. NaN where undefined (no channels).
    """
    qr = np.asarray(q_reco, dtype=np.float64).ravel()
    qt = np.asarray(q_truth, dtype=np.float64).ravel()
    if qr.shape != qt.shape:
        raise ValueError(f"charge_metrics: q_reco {qr.shape} and q_truth {qt.shape} differ in length")
    valid = qt >= min_truth
    r = qr[valid] / qt[valid]
    bad = r < bad_ratio
    good = r[~bad]
    n_valid, n_bad = int(valid.sum()), int(bad.sum())
    nan = float("nan")
    mean = float(good.mean()) if good.size else nan
    return {
        "bias": 100.0 * (abs(mean) - 1.0) if good.size else nan,
        "resolution": 100.0 * float(good.std()) / abs(mean) if good.size and mean != 0 else nan,
        "inefficiency": 100.0 * n_bad / n_valid if n_valid else nan,
        "mean_ratio": mean,
        "n_valid": n_valid,
        "n_bad": n_bad,
    }


def charge_profile(q_reco: np.ndarray, q_truth: np.ndarray, vertex_wire: int, direction: int = 1,
                   n_wires: int = PROFILE_WIRES) -> float:
    """Shower charge-profile ratio: sum Q_reco / sum Q_truth over ``n_wires`` wires starting at
    ``vertex_wire`` and going along ``direction`` (+1 or -1), clipped to the window.

    q_reco, q_truth : float (W,) per-wire charges of one event.
    """
    qr = np.asarray(q_reco, dtype=np.float64)
    qt = np.asarray(q_truth, dtype=np.float64)
    step = 1 if direction >= 0 else -1
    idx = vertex_wire + step * np.arange(n_wires)
    idx = idx[(idx >= 0) & (idx < qt.size)]
    den = qt[idx].sum()
    return float(qr[idx].sum() / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------- data
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
    from .simulate.generator import Primaries, _run_physics
    from .simulate.geometry import DOWNSAMPLE, TPC_HI, TPC_LO, drift_row, get_plane, project_points, wire_coordinate
    from .simulate.render import charge_points

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


# --------------------------------------------------------------------------- networks
def predict_mask(model, sample: ROISample, config: ROIConfig, threshold: float = 0.5) -> np.ndarray:
    """Tick-level bool ROI mask (W, T) predicted by an ROI network on one sample."""
    import torch

    with torch.no_grad():
        prob = model(torch.from_numpy(sample.inputs[None]))[0, 0].cpu().numpy()
    return prob_to_mask(prob, config.rebin, config.n_ticks, threshold)


# --------------------------------------------------------------------------- evaluation
def _methods_for(sample: ROISample, c: ROIConfig, models: dict, threshold: float) -> dict[str, np.ndarray]:
    rois = threshold_roi(sample.signal, None, c.lf_window, c.tight_sigma, c.loose_sigma, c.tight_pad, c.loose_pad)
    out = {"traditional": rois["roi"]}
    for label, model in models.items():
        out[label] = predict_mask(model, sample, c, threshold)
    return out


def roi_evaluate(models: dict[str, Any] | None = None, angles: Sequence[float] = DEFAULT_ANGLES,
                 energies: Sequence[float] = DEFAULT_ENERGIES, n_events: int = 4, seed: int = 0,
                 config: ROIConfig | None = None, threshold: float = 0.5, out_dir: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Compare the traditional ROI with ROI networks on single tracks and single showers.

    Parameters
    ----------
    models : dict label -> ROI network (taking (1, 3, W, Tb), returning (1, 1, W, Tb)), optional
    angles : theta_xz values (deg) of the muon-track scan
    energies : electron-shower energies (MeV), at theta_xz = ``config.shower_theta_xz``
    n_events : events per point (the same events for every method)
    out_dir : when given, writes ``roi_metrics.json``, ``roi_tables.txt``, ``roi_tracks.png``
        and ``roi_showers.png`` there.

    Returns
    -------
    dict: ``tracks`` [method][angle] and ``showers`` [method][energy] -> metric dicts
    (bias, resolution, inefficiency, n_valid, n_bad; showers also ``profile`` = mean
    charge-profile ratio and ``profile_std``), ``methods``, ``config``, ``n_events``.
    """
    c = config or ROIConfig()
    models = dict(models or {})
    for m in models.values():
        m.eval()
    methods = ["traditional"] + list(models)
    res: dict[str, Any] = {"methods": methods, "config": asdict(c), "n_events": int(n_events),
                           "tracks": {m: {} for m in methods}, "showers": {m: {} for m in methods}}
    total = len(angles) * n_events + len(energies) * n_events
    done = 0
    for kind, values in (("track", angles), ("shower", energies)):
        for v in values:
            qr = {m: [] for m in methods}
            qt, prof = [], {m: [] for m in methods}
            for i in range(n_events):
                if kind == "track":
                    s = simulate_roi_sample("track", float(v), None, seed, i, c)
                else:
                    s = simulate_roi_sample("shower", c.shower_theta_xz, float(v), seed, i, c)
                qt.append(s.q_truth)
                for m, mask in _methods_for(s, c, models, threshold).items():
                    q = roi_charge(s.signal, mask)
                    qr[m].append(q)
                    if kind == "shower":
                        prof[m].append(charge_profile(q, s.q_truth, c.vertex_wire, 1))
                done += 1
                if progress:
                    print(f"\rroi-eval: {done}/{total} events", end="", flush=True)
            key = f"{v:g}"
            for m in methods:
                met = charge_metrics(np.concatenate(qr[m]), np.concatenate(qt), c.min_truth, c.bad_ratio)
                if kind == "shower":
                    p = np.asarray(prof[m], float)
                    met["profile"] = float(np.nanmean(p)) if np.isfinite(p).any() else float("nan")
                    met["profile_std"] = float(np.nanstd(p)) if np.isfinite(p).any() else float("nan")
                res["tracks" if kind == "track" else "showers"][m][key] = met
    if progress:
        print()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from .atomic import write_text

        write_text(out / "roi_metrics.json", json.dumps(res, indent=2, default=float))
        write_text(out / "roi_tables.txt", format_roi_tables(res) + "\n")
        plot_roi_metrics(res, out)
        res["files"] = [str(out / f) for f in ("roi_metrics.json", "roi_tables.txt", "roi_tracks.png", "roi_showers.png")]
    return res


def format_roi_tables(res: dict[str, Any]) -> str:
    """Text tables of :func:`roi_evaluate` results: one block per metric, rows = scan
    points, columns = methods."""
    methods = res["methods"]
    lines = []
    blocks = [("tracks", "theta_xz (deg)", ("bias", "resolution", "inefficiency")),
              ("showers", "E (MeV)", ("bias", "resolution", "inefficiency", "profile"))]
    w = max(14, max(len(m) for m in methods) + 2)
    for part, xname, metrics in blocks:
        keys = list(res[part][methods[0]].keys()) if methods else []
        if not keys:
            continue
        for met in metrics:
            unit = "(ratio)" if met == "profile" else "(%)"
            lines.append(f"{part}: {met} {unit}")
            lines.append(xname.ljust(16) + "".join(m.rjust(w) for m in methods))
            for k in keys:
                vals = [res[part][m][k].get(met, float("nan")) for m in methods]
                fmt = "{:.3f}" if met == "profile" else "{:.1f}"
                lines.append(k.ljust(16) + "".join(fmt.format(v).rjust(w) for v in vals))
            lines.append("")
    return "\n".join(lines).rstrip()


def plot_roi_metrics(res: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Plots of :func:`roi_evaluate` results: ``roi_tracks.png`` (bias, resolution,
    inefficiency vs theta_xz) and ``roi_showers.png`` (the same and the charge profile vs E)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    files = []
    for part, xlabel, metrics, fname in (
        ("tracks", r"$\theta_{xz}$ (deg)", ("bias", "resolution", "inefficiency"), "roi_tracks.png"),
        ("showers", "shower energy (GeV)", ("bias", "resolution", "inefficiency", "profile"), "roi_showers.png"),
    ):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
        for ax, met in zip(np.atleast_1d(axes), metrics):
            for m in res["methods"]:
                d = res[part][m]
                xs = np.array([float(k) for k in d])
                if part == "showers":
                    xs = xs / 1000.0
                ys = np.array([d[k].get(met, np.nan) for k in d])
                ax.plot(xs, ys, "o-", label=m, lw=1.2, ms=4)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("charge profile ratio" if met == "profile" else f"{met} (%)")
            if part == "showers":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.suptitle(f"ROI {part}: {res['n_events']} events per point, plane {res['config']['plane']}")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        files.append(str(out / fname))
    return files


def shipped_roi_weights() -> dict[str, Path]:
    """Table label -> file of every shipped ROI network, in family-table order."""
    from . import registry
    from .models import FAMILIES, names

    files = {s.config.removesuffix(".yaml").replace("_", "-"): s.path for s in registry.SHIPPED.values()
             if s.config.startswith("roi_")}
    return {FAMILIES[n].label: files[n] for n in names("roi") if n in files}


def load_roi_models(specs: Iterable[str]) -> dict[str, Any]:
    """ROI networks from command-line specs: a checkpoint path (label: file stem) or a model
    name (random weights -- only to check the pipeline). No specs: every shipped ROI network,
    labelled by family (the families' table labels)."""
    from .export import load_dense_checkpoint
    from .models import FAMILIES, names

    specs = list(specs)
    if not specs:
        return {label: load_dense_checkpoint(path)[0] for label, path in shipped_roi_weights().items()}
    out = {}
    for spec in specs:
        if spec in FAMILIES:
            if FAMILIES[spec].task != "roi":
                raise ValueError(f"{spec!r} is not an ROI model ({', '.join(names('roi'))})")
            out[f"{spec} (untrained)"] = FAMILIES[spec].build().eval()
        else:
            model, ckpt = load_dense_checkpoint(spec)
            name = ckpt["config"]["model"]["name"]
            if FAMILIES[name].task != "roi":
                raise ValueError(f"weights file {spec}: holds {name!r}, not an ROI model")
            out[Path(spec).stem] = model
    return out


SUMMARY_ANGLES = (0, 40, 60, 80, 85)
"""theta_xz values (deg) of the summary table (those of the DNN-ROI comparison)."""


def roi_summary(res: dict[str, Any], cost: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """One row per method of a :func:`roi_evaluate` result: the track charge bias at each of
    :data:`SUMMARY_ANGLES` that was scanned, the mean |bias| and mean resolution over all
    scanned angles, the inefficiency at the largest angle, the showers' mean bias, mean
    resolution and mean charge-profile ratio over the energies, and -- when ``cost`` maps a
    method to a ``sparseseg bench`` row -- the time and peak memory on a full plane."""
    rows = []
    for m in res["methods"]:
        tr, sh = res["tracks"][m], res["showers"][m]
        row: dict[str, Any] = {"method": m}
        for a in SUMMARY_ANGLES:
            if f"{a:g}" in tr:
                row[f"bias_{a:g}"] = tr[f"{a:g}"]["bias"]
        if tr:
            row["mean_abs_bias"] = float(np.nanmean([abs(v["bias"]) for v in tr.values()]))
            row["mean_resolution"] = float(np.nanmean([v["resolution"] for v in tr.values()]))
            last = max(tr, key=float)
            row[f"inefficiency_{last}"] = tr[last]["inefficiency"]
        if sh:
            row["shower_bias"] = float(np.nanmean([v["bias"] for v in sh.values()]))
            row["shower_resolution"] = float(np.nanmean([v["resolution"] for v in sh.values()]))
            row["shower_profile"] = float(np.nanmean([v.get("profile", np.nan) for v in sh.values()]))
        c = (cost or {}).get(m)
        if c and "error" not in c:
            row["time_s"] = c["time_s_median"]
            row["peak_mem_mb"] = c["peak_mem_mb"]
        rows.append(row)
    return rows


_SUMMARY_HEADS = {"method": "method", "mean_abs_bias": "mean abs. bias %", "mean_resolution": "mean res. %",
                  "shower_bias": "shower bias %", "shower_resolution": "shower res. %",
                  "shower_profile": "shower profile", "time_s": "time s", "peak_mem_mb": "peak MB"}


def _summary_head(key: str) -> str:
    if key.startswith("bias_"):
        return f"bias {key[5:]} deg %"
    if key.startswith("inefficiency_"):
        return f"ineff. {key[13:]} deg %"
    return _SUMMARY_HEADS[key]


def format_roi_summary(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """:func:`roi_summary` rows as a text (or Markdown) table, one column per figure."""
    keys = [k for k in rows[0]] if rows else []
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    heads = [_summary_head(k) for k in keys]

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        return f"{v:.3f}" if k in ("shower_profile", "time_s") else (f"{v:.0f}" if k == "peak_mem_mb" else f"{v:.1f}")

    body = [[cell(r, k) for k in keys] for r in rows]
    if markdown:
        out = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|"]
        return "\n".join(out + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(heads)] + [fmt(b) for b in body])


def roi_cost(models: dict[str, Any], threads: int = 0, reps: int = 3) -> dict[str, dict]:
    """``sparseseg bench`` rows (time and peak memory on a full U plane, 3 x 2400 x 600) for
    each network of ``models``, each measured in its own process (the architecture's default
    configuration, which every shipped ROI network uses)."""
    from .bench import run_worker
    from .models.unet import ROI_MODELS

    out = {}
    for label, model in models.items():
        name = next(n for n, cls in ROI_MODELS.items() if type(model) is cls)
        out[label] = run_worker({"model": name, "threads": threads, "reps": reps})
    return out
