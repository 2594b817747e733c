"""``sparseseg roi-eval``: the theta_xz and shower-energy scans of the traditional ROI and the
ROI networks, with tables, plots, the summary table and each network's cost."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .threshold import threshold_roi
from .charge import charge_metrics, charge_profile, roi_charge
from .data import DEFAULT_ANGLES, DEFAULT_ENERGIES, ROIConfig, ROISample, simulate_roi_sample


def prob_to_mask(prob: np.ndarray, rebin: int, n_ticks: int, threshold: float = 0.5) -> np.ndarray:
    """Network output (W, Tb) probabilities -> tick-level bool ROI mask (W, n_ticks)."""
    p = np.asarray(prob)
    return np.repeat(p >= threshold, rebin, axis=-1)[..., :n_ticks]


def predict_mask(model, sample: ROISample, config: ROIConfig, threshold: float = 0.5) -> np.ndarray:
    """Tick-level bool ROI mask (W, T) predicted by an ROI network on one sample."""
    import torch

    with torch.no_grad():
        prob = model(torch.from_numpy(sample.inputs[None]))[0, 0].cpu().numpy()
    return prob_to_mask(prob, config.rebin, config.n_ticks, threshold)


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
        from ..atomic import write_text

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
    from .. import registry
    from ..models import FAMILIES, names

    files = {s.config.removesuffix(".yaml").replace("_", "-"): s.path for s in registry.SHIPPED.values()
             if s.config.startswith("roi_")}
    return {FAMILIES[n].label: files[n] for n in names("roi") if n in files}


def load_roi_models(specs: Iterable[str]) -> dict[str, Any]:
    """ROI networks from command-line specs: a checkpoint path (label: file stem) or a model
    name (random weights -- only to check the pipeline). No specs: every shipped ROI network,
    labelled by family (the families' table labels)."""
    from ..export import load_dense_checkpoint
    from ..models import FAMILIES, names

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
    from ..bench import run_worker
    from ..models.roi_nets import ROI_MODELS

    out = {}
    for label, model in models.items():
        name = next(n for n, cls in ROI_MODELS.items() if type(model) is cls)
        out[label] = run_worker({"model": name, "threads": threads, "reps": reps})
    return out
