"""The held-out evaluation pipeline: simulate -> event file -> predict -> score.

One place for what ``sparseseg demo``, ``scripts/heldout_eval.py`` and
``scripts/compare_hit_tagging.py`` all do: simulate interactions of a seed never used in
training into an event file (resumable, so an interrupted run continues where it stopped),
segment it with ``sparseseg predict``'s code path (full images, the same output file), and
score the prediction file by confusion matrix (:func:`sparseseg.infer.evaluate_files`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["simulated_file", "predict_and_score", "score_curves"]


def simulated_file(path: str | Path, preset: str, n: int, seed: int, label_rule: str = "visible",
                   fresh: bool = False, hadronic: bool = True) -> tuple[Path, float]:
    """An event file at ``path`` holding the ``n`` interactions of simulator stream ``(preset,
    seed)`` (all their images) under ``label_rule`` (``hadronic``: as in
    :func:`~sparseseg.simulate.simulate_full`). A complete file already there is reused when it
    records the same stream and simulator version (else, or with ``fresh``, it is rewritten);
    an interrupted one is continued. Returns (path, seconds spent simulating; 0 when reused)."""
    from .io import EventFile, EventWriter
    from .simulate import SIMULATOR_VERSION, simulate

    path = Path(path)
    if n < 1:
        raise ValueError(f"simulated_file: n must be >= 1, got {n}")
    attrs = {"preset": preset, "seed": int(seed), "interactions": int(n), "label_rule": label_rule,
             "hadronic": bool(hadronic), "simulator_version": SIMULATOR_VERSION}
    if path.exists():
        with EventFile(str(path)) as f:
            old = {k: f.attrs.get(k) for k in attrs}
        if not fresh and old == attrs:
            return path, 0.0
        path.unlink()
    t0 = time.perf_counter()
    with EventWriter(str(path), attrs=attrs, resume=True) as w:
        for i, ev in enumerate(simulate(preset, n, seed, label_rule=label_rule, hadronic=hadronic)):
            if i >= w.n_done:
                w.append(ev)
    return path, time.perf_counter() - t0


def predict_and_score(events: str | Path, pred: str | Path, predictor, progress: bool = True) -> tuple[dict[str, Any], Any]:
    """Segment every image of ``events`` into a new prediction file ``pred`` (an old one is
    replaced) and score it. Returns (timing: ``predict_file``'s record plus ``threads`` and
    ``peak_rss_mb``, the :class:`~sparseseg.metrics.ConfusionAccumulator` of the file)."""
    import torch

    from .infer import evaluate_files, predict_file
    from .memory import peak_rss_mb

    pred = Path(pred)
    if pred.exists():
        pred.unlink()
    timing = predict_file(str(events), str(pred), predictor, progress=progress)
    timing["threads"] = torch.get_num_threads()
    timing["peak_rss_mb"] = peak_rss_mb()
    return timing, evaluate_files([str(pred)])


def score_curves(pred: str | Path):
    """:class:`~sparseseg.metrics.ScoreCurves` of a prediction file with truth labels and
    stored scores (``sparseseg predict`` writes both): each class's efficiency at a purity floor
    when pixels are selected by that class's score alone."""
    from .io import EventFile
    from .metrics import ScoreCurves

    curves = ScoreCurves()
    with EventFile(str(pred)) as f:
        if "scores" not in f.extra_names:
            raise ValueError(f"{pred}: holds no class scores (no 'scores' dataset); make it with `sparseseg predict`")
        for i in range(len(f)):
            ev = f[i]
            if ev.labels is None:
                raise ValueError(f"{pred}: has no truth labels to evaluate against")
            curves.add(ev.labels, f.read_extra(i, "scores"))
    return curves
