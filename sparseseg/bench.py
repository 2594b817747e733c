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

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from .memory import peak_rss_mb, reset_peak_rss, tensor_peak_mb
from .models.sparse_infer import cpu_has_bf16

SEED = 20261123
"""Simulator seed of the benchmark's events."""

ROI_SHAPE = (1, 3, 2400, 600)
"""A full U plane for DNN-ROI models: 2400 wires x 6000 ticks rebinned by 10, 3 input maps."""

ROWS = {
    # name: (model-table name, builder options, input description)
    "uresnet2d": ("uresnet", {"dim": 2}, "uboone Y plane 1008 x 3456 (sparse, fp32)"),
    "uresnet2d-bf16": ("uresnet", {"dim": 2}, "uboone Y plane 1008 x 3456 (sparse, bf16)"),
    "uresnet2d-graph": ("uresnet", {"dim": 2}, "uboone Y plane 1008 x 3456 (sparse, training graph, fp32)"),
    "uresnet2d-dense": ("uresnet-dense", {"dim": 2}, "uboone Y plane 1008 x 3456 (dense)"),
    "uresnet3d": ("uresnet", {"dim": 3}, "pilarnet volume 768^3 (sparse, fp32)"),
    "uresnet3d-bf16": ("uresnet", {"dim": 3}, "pilarnet volume 768^3 (sparse, bf16)"),
    "roi-unet": ("roi-unet", {}, "full U plane 3 x 2400 x 600"),
    "roi-mobilenetv2": ("roi-mobilenetv2", {}, "full U plane 3 x 2400 x 600"),
    "roi-mobilenetv3": ("roi-mobilenetv3", {}, "full U plane 3 x 2400 x 600"),
    "roi-transformer": ("roi-transformer", {}, "full U plane 3 x 2400 x 600"),
    "cvn": ("cvn", {}, "3 views x 500 x 500"),
}
"""Sparse rows run what ``predict`` runs on CPU, with the shipped weights: the inference engine
(:class:`~sparseseg.models.sparse_infer.FastUResNet`), 2D and 3D; ``uresnet2d-graph`` is the
2D training graph (spconv modules and rulebooks)."""
DEFAULT_MODELS = ("uresnet2d", "uresnet2d-bf16", "uresnet2d-graph", "uresnet2d-dense", "uresnet3d", "uresnet3d-bf16", "roi-unet",
                  "roi-mobilenetv2", "roi-mobilenetv3", "roi-transformer", "cvn")
OCCUPANCIES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


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


def _sparse_model(dim: int, row: dict[str, Any]):
    """The shipped sparse UResNet of this dimension (random weights where it is missing)."""
    from .models import build_model

    from .registry import DEFAULT_SEGMENTATION, default_weights

    weights = default_weights(dim)
    if not weights.exists():
        row["weights"] = "random"
        return build_model("uresnet", dim=dim)
    from .checkpoint import build_from, load

    row["weights"] = DEFAULT_SEGMENTATION[dim]
    return build_from(load(weights))


def _sparse_rows(row, name, dim, plane, event, reps, device, sync, baseline) -> None:
    """Time, memory, FLOPs (and bf16 agreement) of a sparse UResNet row, into ``row``.
    Like ``predict``, the fast rows keep only the inference engine, not the training modules."""
    from .models.sparse_infer import FastUResNet
    from .models.uresnet import collate

    from .models.uresnet import cpu_path

    cuda = torch.device(device).type == "cuda"
    path = cpu_path(device, dim, "bf16" if name.endswith("bf16") else "fp32", grad=False)
    graph = name.endswith("-graph") or path in ("graph", "spconv")
    model = _sparse_model(dim, row).to(device).eval()
    model.backend = "graph"  # on CPU: spconv's rulebooks (the engine is for gradients)
    fast = None if graph else FastUResNet(model, "bf16" if name.endswith("bf16") else "fp32")
    if fast is not None:
        del model
        gc.collect()  # spconv's layers hold reference cycles (state-dict hooks): free their weights now

    def run(events):
        if graph:
            return model(events)
        idx, feats, shape, _ = collate(events, dim)
        return fast(idx, feats, shape)

    with torch.no_grad():
        row["times"] = _time(lambda: run([plane]), reps, sync)
        row["peak_mem_mb"] = peak_rss_mb() - baseline  # the single plane, before the whole event
        if dim == 2 and len(event) == 3:
            row["event_time_s"] = statistics.median(_time(lambda: run(event), max(3, reps), sync))
            row["event_peak_mem_mb"] = peak_rss_mb() - baseline
        if not cuda:  # the network's FLOPs on the plane, counted by the engine (the same for every path)
            counter = fast or FastUResNet(model, "fp32")
            row["gflops"] = counter.count_flops(*collate([plane], dim)[:3]) / 1e9
        if name.endswith("bf16"):  # agreement with fp32 on the whole event (after the memory figures)
            ref = FastUResNet(_sparse_model(dim, {}), "fp32")
            idx, feats, shape, _ = collate(event, dim)
            same = fast(idx, feats, shape).argmax(1) == ref(idx, feats, shape).argmax(1)
            row["agreement_with_fp32"] = float(same.float().mean())
            row["agreement_pixels"] = int(same.numel())


TRAIN_VARIANTS = ("graph", "engine", "engine_fp32")
"""Training benchmark rows: spconv's rulebooks with this project's CPU kernels (fp32, the
baseline), the engine at the precision ``train`` picks by default, and the engine in fp32."""


def train_batches(steps: int, batch: int, seed: int = 123) -> list:
    """``steps`` batches of ``batch`` simulated crop512 views (the same for every variant)."""
    from .simulate import simulate_interaction

    out, k = [], 0
    for _ in range(steps):
        events = []
        while len(events) < batch:
            events += simulate_interaction("crop512", seed, k)
            k += 1
        out.append(events[:batch])
    return out


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time training steps of the 2D UResNet (one variant of :data:`TRAIN_VARIANTS`):
    data (labels and pixel weights), forward, backward, optimizer; peak RSS above baseline."""
    import pickle

    from .models import build_model
    from .tasks.segment import SegmentationTask as task
    from .train import resolve_precision
    from .weighting import WeightConfig, pixel_weights

    variant = spec["train"]
    if variant not in TRAIN_VARIANTS:
        raise ValueError(f"bench: training variant {variant!r} unknown; choose from {', '.join(TRAIN_VARIANTS)}")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    with open(spec["input_file"], "rb") as fh:
        batches = pickle.load(fh)
    precision = "bf16" if variant == "engine" and resolve_precision("auto", "cpu", True) == "bf16" else "fp32"
    torch.manual_seed(0)
    model = build_model("uresnet", dim=2)
    model.backend = "graph" if variant == "graph" else "engine"
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wcfg = WeightConfig()
    warm = int(spec.get("warmup", 2))
    gc.collect()
    baseline = reset_peak_rss()
    parts: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}
    pixels = []

    def step(events):
        """One training step, its parts timed apart (sparseseg.tasks.accumulated_step runs them
        as one): (times of data, forward, backward, optimizer; loss)."""
        t0 = time.perf_counter()
        _, target, _ = task.prepare((events, pixel_weights(events, wcfg)), "cpu")
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(events)
        loss = task.loss(logits.float(), target)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2, t4 - t3), loss

    for i, events in enumerate(batches):
        times, loss = step(events)
        if i >= warm:
            for key, dt in zip(parts, times):
                parts[key].append(dt)
            pixels.append(sum(len(e) for e in events))
    rss = peak_rss_mb() - baseline
    # what the step's tensors need at their peak, whatever the C allocator keeps (one more step
    # on the largest batch, under the profiler, after the timings and the RSS were read)
    tensors = tensor_peak_mb(lambda: step(max(batches, key=lambda evs: sum(len(e) for e in evs))))
    step_s = {k: float(np.mean(v)) for k, v in parts.items()}
    total = sum(step_s.values())
    batch = len(batches[0])
    return {"variant": variant, "precision": precision, "threads": torch.get_num_threads(), "batch": batch,
            "steps": len(parts["data"]), "active_pixels_per_batch": float(np.mean(pixels)),
            "time_step_s": total, **{f"time_{k}_s": v for k, v in step_s.items()},
            "images_per_s": batch / total, "peak_rss_mb": rss, "peak_tensor_mb": tensors,
            "final_loss": float(loss.detach())}


def run_train(threads: int = 2, steps: int = 10, batch: int = 8, progress: bool = True) -> dict[str, Any]:
    """The training benchmark: every variant on the same batches, each in a fresh process."""
    import pickle
    import tempfile

    say = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    if steps < 1 or batch < 1:
        raise ValueError("bench --train: --train-steps and --train-batch must be >= 1")
    warm = 2
    with tempfile.TemporaryDirectory(prefix="sparseseg-bench-") as tmp:
        say(f"bench --train: simulating {steps + warm} batches of {batch} crop512 views ...")
        path = os.path.join(tmp, "batches.pkl")
        with open(path, "wb") as fh:
            pickle.dump(train_batches(steps + warm, batch), fh)
        rows = {}
        for i, v in enumerate(TRAIN_VARIANTS):
            say(f"bench --train [{i + 1}/{len(TRAIN_VARIANTS)}] {v} ...")
            rows[v] = run_worker({"model": "train", "train": v, "threads": threads, "input_file": path,
                                  "warmup": warm})
    res: dict[str, Any] = dict(rows)
    if all("images_per_s" in rows[v] for v in ("graph", "engine")):
        res["speedup"] = rows["engine"]["images_per_s"] / rows["graph"]["images_per_s"]
    if all("images_per_s" in rows[v] for v in ("graph", "engine_fp32")):
        res["speedup_fp32"] = rows["engine_fp32"]["images_per_s"] / rows["graph"]["images_per_s"]
    return res


def format_train(res: dict[str, Any]) -> str:
    """Markdown table of :func:`run_train`'s rows."""
    lines = ["| training variant | precision | images/s | step (ms) | data | forward | backward | optimizer | peak RSS (MB) "
             "| peak tensors (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in TRAIN_VARIANTS:
        if v not in res:
            continue
        r = res[v]
        if "error" in r:
            lines.append(f"| {v} | | error: {r['error']} | | | | | | | |")
            continue
        ms = lambda k: f"{1000 * r[k]:.0f}"  # noqa: E731
        lines.append(f"| {v} | {r['precision']} | {r['images_per_s']:.1f} | {ms('time_step_s')} | {ms('time_data_s')} | "
                     f"{ms('time_forward_s')} | {ms('time_backward_s')} | {ms('time_optimizer_s')} | {r['peak_rss_mb']:.0f} "
                     f"| {r['peak_tensor_mb']:.0f} |")
    first = next((res[v] for v in TRAIN_VARIANTS if "batch" in res.get(v, {})), None)
    if first:
        lines.append("")
        lines.append(f"Batch {first['batch']} x 512 x 512 crop512 views ({first['active_pixels_per_batch']:.0f} active "
                     f"pixels), {first['threads']} threads, {first['steps']} timed steps after 2 warm-up steps.")
    lines.append("Peak RSS: the process's resident memory above its start (includes what the C allocator "
                 "keeps after frees); peak tensors: bytes held by tensors at the step's peak (one profiled step).")
    if "speedup" in res:
        lines.append(f"Engine over graph: x{res['speedup']:.2f} (default precision), "
                     f"x{res.get('speedup_fp32', float('nan')):.2f} (fp32).")
    return "\n".join(lines)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one model (runs in its own process)."""
    from .models import build_model

    if spec.get("train"):
        return train_worker(spec)

    name, device, reps = spec["model"], spec.get("device", "cpu"), int(spec.get("reps", 5))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    table_name, opts, desc = ROWS[name]
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    row: dict[str, Any] = {"model": name, "input": desc, "device": device, "threads": torch.get_num_threads()}
    if name.endswith("-bf16") and cuda:
        return dict(row, error="bf16 rows measure the CPU inference engine: skipped on cuda")
    if name.endswith("-bf16") and not cpu_has_bf16():
        return dict(row, error="this CPU has no native bfloat16 (AVX512-BF16/AMX): skipped")
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

    if name.startswith("uresnet"):
        from .models import sparse_infer, uresnet  # noqa: F401  (imports are part of the baseline)
    gc.collect()
    baseline = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    # ---- model
    if table_name == "uresnet":
        _sparse_rows(row, name, opts["dim"], plane, event, reps, device, sync, baseline)
        times = row.pop("times")
    else:
        from torch.utils.flop_counter import FlopCounterMode

        model = build_model(table_name, **opts).to(device).eval()
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
        row["peak_mem_mb"] = peak_rss_mb() - baseline
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
    return json_subprocess([sys.executable, "-m", "sparseseg.bench", "--worker", json.dumps(spec)],
                           {"model": spec["model"]}, timeout)


def json_subprocess(cmd: list[str], row: dict[str, Any], timeout: float | None = None) -> Any:
    """Run ``cmd`` in a fresh process (so that its time and peak memory are its own) and return
    the JSON document on the last line of its stdout that starts with ``{`` or ``[``; on a
    failure or timeout, ``row`` with an ``error`` (the last line of stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(row, error=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(("{", "["))]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(row, error=f"exit {p.returncode}: {tail}")
    return json.loads(lines[-1])


def run(models=DEFAULT_MODELS, threads: int = 0, reps: int = 5, device: str = "cpu",
        scaling: bool = True, progress: bool = True) -> dict[str, Any]:
    """The whole benchmark: per-model rows, ratios, scaling and efficiency."""
    unknown = [m for m in models if m not in ROWS]
    if unknown:
        raise ValueError(f"bench: unknown model(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
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
    peaks = {}
    if device == "cpu":
        say("bench: torch.mm peak ...")
        peaks["sgemm_fp32_gflops_per_s"] = sgemm_peak(threads)
        if res["cpu_bf16"]:
            peaks["sgemm_bf16_gflops_per_s"] = sgemm_peak(threads, torch.bfloat16)
    res.update(summarize(rows, res["cpu_bf16"], peaks))
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


def summarize(rows: list[dict[str, Any]], cpu_bf16: bool, peaks: dict[str, float]) -> dict[str, Any]:
    """The figures a run derives from its rows: the deployed path (what ``predict`` runs with
    precision auto) and its whole-event time and memory, its speed-up over the spconv graph,
    dense-over-sparse time and memory ratios, FLOP-rate efficiency against the torch.mm peaks in
    ``peaks``, and the targets met or missed."""
    res: dict[str, Any] = dict(peaks)
    by = {r["model"]: r for r in rows if "error" not in r}
    deployed = "uresnet2d-bf16" if cpu_bf16 and "uresnet2d-bf16" in by else "uresnet2d"
    if deployed in by and by[deployed].get("event_time_s") is not None:
        d = by[deployed]
        res["deployed"] = deployed
        res["event_time_s"] = d["event_time_s"]
        res["event_peak_mem_mb"] = d.get("event_peak_mem_mb")
        if by.get("uresnet2d-graph", {}).get("event_time_s"):
            res["speedup_over_graph"] = by["uresnet2d-graph"]["event_time_s"] / d["event_time_s"]
    if "uresnet2d-dense" in by:
        dense = by["uresnet2d-dense"]
        res["ratios"] = {}
        for key, sparse_row in (("", "uresnet2d"), ("_deployed", deployed)):
            if sparse_row in by:
                s = by[sparse_row]
                res["ratios"][f"dense_over_sparse_time{key}"] = dense["time_s_median"] / s["time_s_median"]
                res["ratios"][f"dense_over_sparse_mem{key}"] = dense["peak_mem_mb"] / max(s["peak_mem_mb"], 1e-3)
    for row_name, key, peak in (("uresnet2d", "sparse_efficiency", "sgemm_fp32_gflops_per_s"),
                                ("uresnet2d-bf16", "sparse_efficiency_bf16", "sgemm_bf16_gflops_per_s")):
        if row_name in by and peak in res and "gflops_per_s" in by[row_name]:
            res[key] = by[row_name]["gflops_per_s"] / res[peak]
    res["targets"] = _targets(res)
    return res


TARGETS = {
    "event_time_s": ("<=", 0.10, "3-plane uboone event, median time (s)"),
    "event_peak_mem_mb": ("<=", 150.0, "3-plane event, peak memory above baseline (MB)"),
    "dense_over_sparse_time": (">=", 100.0, "dense twin / sparse time, Y plane"),
    "dense_over_sparse_mem": (">=", 20.0, "dense twin / sparse memory, Y plane"),
    "efficiency": (">=", 0.50, "achieved / same-precision torch.mm FLOP rate"),
}
"""The performance targets on 2 cores, checked in every run (deployed path = precision auto)."""


def _targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = res.get("ratios", {})
    eff = res.get("sparse_efficiency_bf16") if res.get("deployed") == "uresnet2d-bf16" else res.get("sparse_efficiency")
    values = {"event_time_s": res.get("event_time_s"), "event_peak_mem_mb": res.get("event_peak_mem_mb"),
              "dense_over_sparse_time": ratios.get("dense_over_sparse_time_deployed"),
              "dense_over_sparse_mem": ratios.get("dense_over_sparse_mem_deployed"), "efficiency": eff}
    out = []
    for key, (op, goal, what) in TARGETS.items():
        v = values[key]
        if v is None:
            continue
        ok = v <= goal if op == "<=" else v >= goal
        out.append({"target": key, "what": what, "value": v, "goal": f"{op} {goal:g}", "met": bool(ok)})
    return out


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
    events = [r for r in res["rows"] if r.get("event_time_s") is not None]
    if events:
        lines += ["| sparse 2D path | whole 3-plane uboone event (s, median) | peak memory (MB) |", "|---|---:|---:|"]
        for r in events:
            mark = " (what `predict` runs here)" if r["model"] == res.get("deployed") else ""
            mem = r.get("event_peak_mem_mb")
            lines.append(f"| {r['model']}{mark} | {r['event_time_s']:.3f} | {'-' if mem is None else f'{mem:.0f}'} |")
        lines.append("")
    if res.get("speedup_over_graph"):
        lines.append(f"Inference engine over the training graph, whole event: x{res['speedup_over_graph']:.1f}.")
    if res.get("ratios"):
        r = res["ratios"]
        if "dense_over_sparse_time" in r:
            lines.append(f"Dense / sparse fp32 on the same Y plane: time x{r['dense_over_sparse_time']:.1f}, "
                         f"memory x{r['dense_over_sparse_mem']:.1f}.")
        if res.get("deployed", "uresnet2d") != "uresnet2d" and "dense_over_sparse_time_deployed" in r:
            lines.append(f"Dense / sparse {res['deployed']}: time x{r['dense_over_sparse_time_deployed']:.1f}, "
                         f"memory x{r['dense_over_sparse_mem_deployed']:.1f}.")
    if "sgemm_fp32_gflops_per_s" in res:
        s = f"torch.mm peak (2048^2): {res['sgemm_fp32_gflops_per_s']:.0f} GFLOP/s fp32"
        if "sgemm_bf16_gflops_per_s" in res:
            s += f", {res['sgemm_bf16_gflops_per_s']:.0f} GFLOP/s bf16"
        if "sparse_efficiency" in res:
            s += f"; the sparse UResNet reaches {res['sparse_efficiency']:.0%} of the fp32 peak"
        if "sparse_efficiency_bf16" in res:
            s += f", {res['sparse_efficiency_bf16']:.0%} of the bf16 peak in bf16"
        lines.append(s + ".")
    if res.get("targets"):
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['what']} | {t['value']:.3g} | {t['goal']} | {'yes' if t['met'] else 'no'} |")
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
