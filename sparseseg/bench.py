"""Time and peak memory per model on full-size inputs, sparse vs dense, cost vs occupancy.

Every measurement runs in a fresh Python subprocess (``python -m sparseseg.bench --worker
JSON``), so that peak memory is that model's alone: the worker builds its input, records its
peak RSS (the no-model baseline), builds the model, runs one warm-up and ``reps`` timed
forwards, and reports the median time and the peak RSS above the baseline. On CUDA it reports
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` instead.

Sparse convolution FLOPs are counted from the rulebooks actually used (sum over layers of
pairs x C_in x C_out x 2) and compared with a ``torch.mm`` SGEMM peak measured in the same run.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

SEED = 20261123
"""Simulator seed of the benchmark's events."""

ROI_SHAPE = (1, 3, 2400, 600)
"""A full U plane for DNN-ROI models: 2400 wires x 6000 ticks rebinned by 10, 3 input maps."""

MODELS = {
    # name: (model-table name, builder options, input description)
    "uresnet2d": ("uresnet", {"dim": 2}, "uboone Y plane 1008 x 3456 (sparse)"),
    "uresnet2d-bf16": ("uresnet", {"dim": 2}, "uboone Y plane 1008 x 3456 (sparse, bf16 GEMMs)"),
    "uresnet2d-dense": ("uresnet-dense", {"dim": 2}, "uboone Y plane 1008 x 3456 (dense)"),
    "uresnet3d": ("uresnet", {"dim": 3}, "pilarnet volume 768^3 (sparse)"),
    "roi-unet": ("roi-unet", {}, "full U plane 3 x 2400 x 600"),
    "roi-mobilenetv2": ("roi-mobilenetv2", {}, "full U plane 3 x 2400 x 600"),
    "roi-mobilenetv3": ("roi-mobilenetv3", {}, "full U plane 3 x 2400 x 600"),
    "roi-transformer": ("roi-transformer", {}, "full U plane 3 x 2400 x 600"),
    "cvn": ("cvn", {}, "3 views x 500 x 500"),
}
DEFAULT_MODELS = ("uresnet2d", "uresnet2d-dense", "uresnet3d", "roi-unet", "roi-mobilenetv2",
                  "roi-mobilenetv3", "roi-transformer", "cvn")
OCCUPANCIES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def cpu_has_bf16() -> bool:
    """True where the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _status_mb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark to the current RSS where Linux allows it
    (/proc/self/clear_refs); returns the baseline (MB) that peaks are measured from."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _status_mb("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def uboone_event(seed: int = SEED) -> list:
    from .simulate import simulate_interaction

    return simulate_interaction("uboone", seed, 0)


def occupancy_plane(target: float, seed: int = SEED):
    """A Y-plane image with about ``target`` of its pixels active, built from simulated events:
    the union of several events' Y planes above one event's occupancy, a contiguous window of
    wires of one event below it (so tracks keep their shape)."""
    from .event import Event
    from .simulate import simulate_interaction

    planes = []
    k = 0
    ev = simulate_interaction("uboone", seed, k)[2]
    size = int(np.prod(ev.shape))
    coords = ev.coords
    while len(np.unique(coords, axis=0)) < target * size and k < 60:
        k += 1
        planes.append(simulate_interaction("uboone", seed, k)[2].coords)
        coords = np.concatenate([coords] + planes[-1:])
    coords = np.unique(coords, axis=0)
    if len(coords) > target * size:  # keep a window of wires holding the target count
        order = np.argsort(coords[:, 1], kind="stable")
        coords = coords[order[: int(target * size)]]
    feats = np.full((len(coords), 1), 60.0, np.float32)
    return Event(coords.astype(np.int32), feats, ev.shape, meta={"plane": "Y", "event_id": 0})


class _FlopCounter:
    """Counts sparse-convolution FLOPs from the rulebooks passed to the CPU kernels."""

    def __init__(self) -> None:
        self.flops = 0

    def __enter__(self):
        from .models import sparse_cpu

        self._orig = sparse_cpu.indice_conv

        def counted(features, filters, indice_pairs, indice_pair_num, num_out, inverse=False, subm=False):
            cout, cin = filters.shape[0], filters.shape[-1]
            pairs = sum(len(r) for _, r, _ in sparse_cpu._pairs(indice_pairs, indice_pair_num, inverse, subm))
            if subm:  # the centre offset maps every site to itself
                pairs += features.shape[0]
            self.flops += 2 * pairs * cin * cout
            return self._orig(features, filters, indice_pairs, indice_pair_num, num_out, inverse, subm)

        sparse_cpu.indice_conv = counted
        return self

    def __exit__(self, *exc):
        from .models import sparse_cpu

        sparse_cpu.indice_conv = self._orig


def _input_events(spec: dict[str, Any]) -> list:
    """The events a worker measures on (simulated; see :func:`_load_events`)."""
    if spec.get("occupancy"):
        return [occupancy_plane(float(spec["occupancy"]))]
    if spec["model"] == "uresnet3d":
        from .simulate import simulate_interaction

        return simulate_interaction("pilarnet", SEED, 0)
    return uboone_event()


def _load_events(spec: dict[str, Any]) -> list:
    import pickle

    if spec.get("input_file"):
        with open(spec["input_file"], "rb") as fh:
            return pickle.load(fh)
    return _input_events(spec)


def _time(fn, reps: int, sync) -> list[float]:
    fn()  # warm-up (allocations, rulebooks, oneDNN primitives)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one model (runs in its own process)."""
    from .models import build_model

    name, device, reps = spec["model"], spec.get("device", "cpu"), int(spec.get("reps", 5))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    table_name, opts, desc = MODELS[name]
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    row: dict[str, Any] = {"model": name, "input": desc, "device": device, "threads": torch.get_num_threads()}
    # ---- input (part of the baseline); events come pickled from the parent so that the
    # simulator's own memory peak does not hide the model's
    if name.startswith("uresnet"):
        event = _load_events(spec)
        plane = event[2] if name.startswith("uresnet2d") and len(event) == 3 else event[0]
        row["active_pixels"] = len(plane)
        if spec.get("occupancy"):
            row["input"] = f"Y plane 1008 x 3456 at occupancy {len(plane) / np.prod(plane.shape):.4f} (sparse)"
        if name == "uresnet2d-dense":
            from .models.dense_uresnet import densify

            x = densify([plane], multiple=16).to(device)
    elif name == "cvn":
        x = torch.rand(1, 3, 500, 500, device=device) * 50
    else:
        x = torch.rand(*ROI_SHAPE, device=device)
    import gc

    gc.collect()
    baseline = _reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    # ---- model
    model = build_model(table_name, **opts).to(device).eval()
    sparse = table_name == "uresnet"
    if sparse:
        from .models import sparse_cpu

        if name.endswith("bf16"):
            sparse_cpu.compute_dtype = torch.bfloat16
        with torch.no_grad():
            times = _time(lambda: model([plane]), reps, sync)
            if not cuda:
                with _FlopCounter() as fc:
                    model([plane])
                row["gflops"] = fc.flops / 1e9
            row["peak_mem_mb"] = _peak_rss_mb() - baseline  # the single plane, before the whole event
            if name == "uresnet2d" and not spec.get("occupancy"):
                row["event_time_s"] = statistics.median(_time(lambda: model(event), max(1, reps // 2), sync))
            if name.endswith("bf16"):
                pred_bf16 = model([plane]).argmax(1)
                sparse_cpu.compute_dtype = None
                pred_fp32 = model([plane]).argmax(1)
                row["agreement_with_fp32"] = float((pred_bf16 == pred_fp32).float().mean())
    else:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad():
            times = _time(lambda: model(x), reps, sync)
            with FlopCounterMode(display=False) as fcm:
                model(x)
            row["gflops"] = fcm.get_total_flops() / 1e9
    row["time_s_median"] = statistics.median(times)
    row["times_s"] = times
    if cuda:
        row["max_memory_allocated_mb"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
        row["max_memory_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        row["peak_mem_mb"] = row["max_memory_allocated_mb"]
    elif "peak_mem_mb" not in row:
        row["peak_mem_mb"] = _peak_rss_mb() - baseline
    if "gflops" in row:
        row["gflops_per_s"] = row["gflops"] / row["time_s_median"]
    return row


def sgemm_peak(threads: int = 0, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of torch.mm on n x n matrices (median of reps), on this process's threads."""
    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    times = _time(lambda: torch.mm(a, b), reps, lambda: None)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_worker(spec: dict[str, Any], timeout: float = 1800, tmp: str | None = None) -> dict[str, Any]:
    """Run :func:`worker` in a fresh subprocess; an error becomes a row with ``error``.
    Sparse models' events are simulated here and handed over as a pickle in ``tmp``."""
    import pickle

    if tmp and spec["model"].startswith("uresnet"):
        key = f"{spec['model'][:9]}-{spec.get('occupancy', 0)}.pkl"
        path = os.path.join(tmp, key)
        if not os.path.exists(path):
            with open(path, "wb") as fh:
                pickle.dump(_input_events(spec), fh)
        spec = dict(spec, input_file=path)
    cmd = [sys.executable, "-m", "sparseseg.bench", "--worker", json.dumps(spec)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": spec["model"], "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": spec["model"], "error": f"exit {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def run(models=DEFAULT_MODELS, threads: int = 0, reps: int = 5, device: str = "cpu",
        scaling: bool = True, progress: bool = True) -> dict[str, Any]:
    """The whole benchmark: per-model rows, ratios, scaling and efficiency."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"bench: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    import tempfile

    say = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    with tempfile.TemporaryDirectory(prefix="sparseseg-bench-") as tmp:
        return _run(models, threads, reps, device, scaling, say, tmp)


def _run(models, threads, reps, device, scaling, say, tmp) -> dict[str, Any]:
    rows = []
    for i, m in enumerate(models):
        say(f"bench [{i + 1}/{len(models)}] {m} ...")
        n = min(reps, 2) if m == "uresnet2d-dense" else reps  # ~1 min per dense full-plane forward on 2 cores
        rows.append(run_worker({"model": m, "threads": threads, "reps": n, "device": device}, tmp=tmp))
    res: dict[str, Any] = {"threads": threads or torch.get_num_threads(), "device": device, "rows": rows,
                           "cpu_bf16": cpu_has_bf16(), "torch": torch.__version__}
    by = {r["model"]: r for r in rows if "error" not in r}
    if "uresnet2d" in by:
        res["event_time_s"] = by["uresnet2d"].get("event_time_s")
    if "uresnet2d" in by and "uresnet2d-dense" in by:
        s, d = by["uresnet2d"], by["uresnet2d-dense"]
        res["ratios"] = {"dense_over_sparse_time": d["time_s_median"] / s["time_s_median"],
                         "dense_over_sparse_mem": d["peak_mem_mb"] / max(s["peak_mem_mb"], 1e-3)}
    if device == "cpu":
        say("bench: torch.mm peak ...")
        res["sgemm_fp32_gflops_per_s"] = sgemm_peak(threads)
        if res["cpu_bf16"]:
            res["sgemm_bf16_gflops_per_s"] = sgemm_peak(threads, torch.bfloat16)
        if "uresnet2d" in by:
            res["sparse_efficiency"] = by["uresnet2d"]["gflops_per_s"] / res["sgemm_fp32_gflops_per_s"]
    if scaling and device == "cpu":
        pts = []
        for occ in OCCUPANCIES:
            say(f"bench: scaling, occupancy {occ:.3f} ...")
            r = run_worker({"model": "uresnet2d", "threads": threads, "reps": reps, "occupancy": occ}, tmp=tmp)
            if "error" not in r:
                pts.append({"occupancy": r["active_pixels"] / (1008 * 3456), "active_pixels": r["active_pixels"],
                            "time_s_median": r["time_s_median"], "peak_mem_mb": r["peak_mem_mb"]})
        if len(pts) >= 2:
            n = np.log([p["active_pixels"] for p in pts])
            res["scaling"] = {
                "points": pts,
                "time_exponent": float(np.polyfit(n, np.log([p["time_s_median"] for p in pts]), 1)[0]),
                "mem_exponent": float(np.polyfit(n, np.log([max(p["peak_mem_mb"], 1e-3) for p in pts]), 1)[0]),
            }
    return res


def format_markdown(res: dict[str, Any]) -> str:
    """The benchmark as Markdown tables."""
    lines = [f"Device: {res['device']}, {res['threads']} threads, torch {res['torch']}.", "",
             "| model | input | time / image (s, median) | peak memory (MB) | GFLOP | GFLOP/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | - | error: {r['error']} | | | |")
            continue
        extra = f" (agrees with fp32 on {r['agreement_with_fp32']:.4%} of pixels)" if "agreement_with_fp32" in r else ""
        lines.append(f"| {r['model']} | {r['input']}{extra} | {r['time_s_median']:.3f} | {r['peak_mem_mb']:.0f} | "
                     f"{r.get('gflops', float('nan')):.1f} | {r.get('gflops_per_s', float('nan')):.1f} |")
    lines.append("")
    if res.get("event_time_s") is not None:
        lines.append(f"Whole 3-plane uboone event, sparse 2D: {res['event_time_s']:.3f} s.")
    if "ratios" in res:
        r = res["ratios"]
        lines.append(f"Dense / sparse on the same Y plane: time x{r['dense_over_sparse_time']:.1f}, "
                     f"memory x{r['dense_over_sparse_mem']:.1f}.")
    if "sgemm_fp32_gflops_per_s" in res:
        s = f"torch.mm peak: {res['sgemm_fp32_gflops_per_s']:.0f} GFLOP/s fp32"
        if "sgemm_bf16_gflops_per_s" in res:
            s += f", {res['sgemm_bf16_gflops_per_s']:.0f} GFLOP/s bf16"
        if "sparse_efficiency" in res:
            s += f"; the sparse UResNet reaches {res['sparse_efficiency']:.0%} of the fp32 peak"
        lines.append(s + ".")
    if "scaling" in res:
        sc = res["scaling"]
        lines += ["", "| occupancy | active pixels | time (s) | peak memory (MB) |", "|---:|---:|---:|---:|"]
        for p in sc["points"]:
            lines.append(f"| {p['occupancy']:.2%} | {p['active_pixels']} | {p['time_s_median']:.3f} | {p['peak_mem_mb']:.0f} |")
        lines.append("")
        lines.append(f"Time grows as (active pixels)^{sc['time_exponent']:.2f}, memory as "
                     f"(active pixels)^{sc['mem_exponent']:.2f}.")
    return "\n".join(lines)


def plot_scaling(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = res["scaling"]
    n = np.array([p["active_pixels"] for p in sc["points"]])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label, exp in ((axes[0], "time_s_median", "time per Y plane (s)", sc["time_exponent"]),
                                (axes[1], "peak_mem_mb", "peak memory (MB)", sc["mem_exponent"])):
        ax.loglog(n, [max(p[key], 1e-3) for p in sc["points"]], "o-")
        ax.set_xlabel("active pixels")
        ax.set_ylabel(label)
        ax.set_title(f"slope {exp:.2f}")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"sparse 2D UResNet vs occupancy ({res['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        print("usage: sparseseg bench ...  (this module's own entry point is for worker processes)", file=sys.stderr)
        sys.exit(2)
