"""The traditional threshold ROI finder (tight and loose thresholds over a low-frequency
filtered signal, padded in time), the baseline the networks are compared with."""
from __future__ import annotations


import numpy as np
from scipy import ndimage


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
