"""Resident memory of this process, the one place it is read (benchmarks, training logs,
predict and the held-out reports).

On Linux the peak comes from ``VmHWM`` in /proc/self/status, which :func:`reset_peak_rss`
can lower to the current RSS so that a measurement sees its own peak only; elsewhere from
``getrusage`` (whose peak cannot be reset).
"""
from __future__ import annotations

import resource

__all__ = ["rss_mb", "peak_rss_mb", "reset_peak_rss", "tensor_peak_mb"]


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


def tensor_peak_mb(fn) -> float:
    """Run ``fn()`` under torch's profiler and return the peak of the bytes held by tensors
    allocated during it (above what was held at its start), MB.

    Peak RSS also counts what the C allocator keeps after a free (heap fragmentation: 2-3
    times the live bytes in a training step); this figure is what the computation itself
    needs, the same whatever the allocator does. The profiler slows ``fn`` down: measure it
    apart from timings."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in changes:
        held += nbytes
        peak = max(peak, held)
    return peak / 2 ** 20
