"""The held-out evaluation pipeline: simulate -> event file -> predict -> score.

One place for what ``sparseseg demo``, ``scripts/heldout_eval.py`` and
``scripts/compare_hit_tagging.py`` all do: simulate interactions of a seed never used in
training into an event file (resumable, so an interrupted run continues where it stopped),
segment it with ``sparseseg predict``'s code path (full images, the same output file), and
score the prediction file by confusion matrix (:func:`sparseseg.infer.evaluate_files`); and tell
whether two models' figures on the same events differ by more than the events' own noise
(:func:`paired_bootstrap`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["simulated_file", "predict_and_score", "score_curves", "interaction_counts", "paired_bootstrap"]


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
    from .metrics import ScoreCurves

    curves = ScoreCurves()
    for ev, scores in _labelled_images(pred, "scores", "class scores"):
        curves.add(ev.labels, scores)
    return curves


def _labelled_images(pred: str | Path, extra: str, what: str):
    """Each image of a prediction file with its ``extra`` dataset; refuses, by name, a file
    without that dataset (``what`` it holds) or without truth labels."""
    from .io import EventFile

    with EventFile(str(pred)) as f:
        if extra not in f.extra_names:
            raise ValueError(f"{pred}: holds no {what} (no '{extra}' dataset); make it with `sparseseg predict`")
        for i in range(len(f)):
            ev = f[i]
            if ev.labels is None:
                raise ValueError(f"{pred}: has no truth labels to evaluate against")
            yield ev, f.read_extra(i, extra)


def interaction_counts(pred: str | Path) -> tuple[Any, Any, Any, Any]:
    """Per interaction (the images of one ``event_id`` together) of a prediction file: pixels
    with a truth label, pixels whose class is right, pixels whose track/shower group is right.
    Returns (event_ids, labelled, correct, track_shower_correct) as numpy arrays, and checks
    nothing else; :func:`paired_bootstrap` compares two files."""
    import numpy as np

    from .classes import IGNORE, to_track_shower

    totals: dict[int, list[int]] = {}
    for i, (ev, got) in enumerate(_labelled_images(pred, "pred", "predicted classes")):
        ok = ev.labels != IGNORE
        row = totals.setdefault(int(ev.meta.get("event_id", i)), [0, 0, 0])
        row[0] += int(ok.sum())
        row[1] += int(((ev.labels == got) & ok).sum())
        row[2] += int(((to_track_shower(ev.labels) == to_track_shower(got)) & ok).sum())
    ids = np.array(sorted(totals), dtype=np.int64)
    table = np.array([totals[k] for k in ids], dtype=np.int64).reshape(-1, 3)
    return ids, table[:, 0], table[:, 1], table[:, 2]


def paired_bootstrap(pred_a: str | Path, pred_b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Is model A better than model B on the same events, beyond what the choice of events
    can do? Resamples the interactions (with replacement, ``n_boot`` times) and recomputes both
    accuracies on each resample from the two prediction files of the same event file. Returns,
    for "accuracy" and "track_shower_accuracy": ``a``, ``b``, ``diff`` (a - b), ``lo`` and ``hi``
    (the 95 % interval of the difference), ``sd_a`` (the spread of A's figure alone, what another
    set of as many events could give)."""
    import numpy as np

    if n_boot < 100:
        raise ValueError(f"paired_bootstrap: n_boot must be >= 100 for a 95 % interval, got {n_boot}")
    ids_a, n_a, ca, ta = interaction_counts(pred_a)
    ids_b, n_b, cb, tb = interaction_counts(pred_b)
    if not (np.array_equal(ids_a, ids_b) and np.array_equal(n_a, n_b)):
        raise ValueError(f"{pred_a} and {pred_b} do not hold the same events (interactions or labelled pixels differ): "
                         "predict the same event file with both weights")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids_a), (n_boot, len(ids_a)))
    pixels = n_a[pick].sum(1)
    out = {}
    for key, good_a, good_b in (("accuracy", ca, cb), ("track_shower_accuracy", ta, tb)):
        fa, fb = good_a[pick].sum(1) / pixels, good_b[pick].sum(1) / pixels
        d = fa - fb
        a, b = good_a.sum() / n_a.sum(), good_b.sum() / n_a.sum()
        out[key] = {"a": float(a), "b": float(b), "diff": float(a - b), "lo": float(np.percentile(d, 2.5)),
                    "hi": float(np.percentile(d, 97.5)), "sd_a": float(fa.std())}
    return out


def class_errors(pred: str | Path, cls: int, size_bins=(1, 10, 20, 50, 100, 200, 500), radius: int = 2) -> dict[str, Any]:
    """Where the pixels of truth class ``cls`` go, split three ways, from a prediction file:

    - ``by_size``: by the size of the particle they belong to (pixels of ``cls`` in their truth
      cluster, bins from ``size_bins``; pixels outside any cluster are left out),
    - ``by_topology``: by the interaction type of their image (``meta["topology"]``),
    - ``by_neighbour``: by the other truth classes within ``radius`` pixels (Chebyshev distance):
      ``"alone"`` where there is none, else one row per class present (a pixel with MIP and
      shower pixels near it counts in both rows).

    Each row: {"pixels", "clusters" (by_size only), "predicted": counts per predicted class}.
    """
    import itertools

    import numpy as np

    from .classes import CLASS_NAMES, NUM_CLASSES

    edges = list(size_bins) + [np.inf]
    by_size = [{"lo": int(a), "hi": None if b == np.inf else int(b), "clusters": 0, "pixels": 0,
                "predicted": np.zeros(NUM_CLASSES, np.int64)} for a, b in zip(edges[:-1], edges[1:])]
    by_topology: dict[str, dict[str, Any]] = {}
    by_neighbour = {k: {"pixels": 0, "predicted": np.zeros(NUM_CLASSES, np.int64)}
                    for k in ["alone"] + [n for i, n in enumerate(CLASS_NAMES) if i != cls]}
    for ev, got in _labelled_images(pred, "pred", "predicted classes"):
        mine = np.flatnonzero(ev.labels == cls)
        if not len(mine):
            continue
        hits = np.zeros((len(mine), NUM_CLASSES), np.int64)
        hits[np.arange(len(mine)), got[mine]] = 1
        row = by_topology.setdefault(str(ev.meta.get("topology", "unknown")),
                                     {"pixels": 0, "predicted": np.zeros(NUM_CLASSES, np.int64)})
        row["pixels"] += len(mine)
        row["predicted"] += hits.sum(0)
        if ev.clusters is not None:
            ids, inv, size = np.unique(ev.clusters[mine], return_inverse=True, return_counts=True)
            per = np.zeros((len(ids), NUM_CLASSES), np.int64)
            np.add.at(per, inv, hits)
            for size_bin in by_size:
                s = (ids >= 0) & (size >= size_bin["lo"]) & (size < (size_bin["hi"] or np.inf))
                size_bin["clusters"] += int(s.sum())
                size_bin["pixels"] += int(size[s].sum())
                size_bin["predicted"] += per[s].sum(0)
        # truth classes around each pixel of ``cls``: linear keys of the padded grid, looked up
        coords = ev.coords.astype(np.int64) + radius
        dims = [int(s) + 2 * radius for s in ev.shape]
        keys = np.ravel_multi_index(coords.T, dims)
        order = np.argsort(keys)
        sorted_keys, sorted_labels = keys[order], ev.labels[order]
        near = np.zeros((len(mine), NUM_CLASSES), bool)
        for off in itertools.product(range(-radius, radius + 1), repeat=len(dims)):
            q = np.ravel_multi_index((coords[mine] + np.array(off)).T, dims)
            pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            found = sorted_keys[pos] == q
            lab = sorted_labels[pos[found]]
            ok = lab < NUM_CLASSES
            near[np.flatnonzero(found)[ok], lab[ok]] = True
        near[:, cls] = False
        alone = ~near.any(1)
        by_neighbour["alone"]["pixels"] += int(alone.sum())
        by_neighbour["alone"]["predicted"] += hits[alone].sum(0)
        for i, name in enumerate(CLASS_NAMES):
            if i != cls:
                by_neighbour[name]["pixels"] += int(near[:, i].sum())
                by_neighbour[name]["predicted"] += hits[near[:, i]].sum(0)
    return {"class": CLASS_NAMES[cls], "by_size": by_size, "by_topology": dict(sorted(by_topology.items())),
            "by_neighbour": by_neighbour}
