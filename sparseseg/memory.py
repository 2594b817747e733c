"""Resident memory of this process, the one place it is read (benchmarks, training logs,
predict and the held-out reports).

On Linux the peak comes from ``VmHWM`` in /proc/self/status, which :func:`reset_peak_rss`
can lower to the current RSS so that a measurement sees its own peak only; elsewhere from
``getrusage`` (whose peak cannot be reset).
"""
from __future__ import annotations

import resource

__all__ = ["rss_mb", "peak_rss_mb", "reset_peak_rss"]


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory now, MB (the peak so far where the current value cannot be read)."""
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (or since :func:`reset_peak_rss`), MB."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark to the current RSS where Linux allows it
    (/proc/self/clear_refs); returns the baseline (MB) that later peaks are measured from."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _status_mb("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return peak_rss_mb()
