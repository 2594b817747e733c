"""Per-wire charge inside an ROI and the report's charge metrics: bias, resolution,
inefficiency and the shower charge profile."""
from __future__ import annotations


import numpy as np

from .threshold import _runs


PROFILE_WIRES = 42


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
