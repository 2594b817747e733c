"""Fit and score the event classifier that reads the segmentation (`sparseseg.tasks.topology`):
topology features of the three views from the 2D sparse UResNet, plus the CVN's probabilities,
combined by boosted decision trees (nu_mu CC / nu_e CC / NC).

    python scripts/topology_classifier.py --fit 3000 --fit-seed 21,22 --fit-vertex-smear 0,4 --out weights/topology.json
    python scripts/topology_classifier.py                                                         # score the shipped one

Fitting simulates ``--fit`` interactions of each crop512 stream in ``--fit-seed`` (natural class
mix, seeds no model was trained, validated or scored on), segments each view with
``--segmentation`` weights and runs the ``--cvn`` weights on the same views; with
``--fit-vertex-smear`` the features of each stream are measured from a vertex smeared by that
stream's sigma (pixels; 0: the true vertex), so the classifier learns what a reconstructed
vertex does to them. The nu_e CC cut
(the lowest P(nu_e CC) with purity >= 0.8) is chosen on 5-fold cross-validated probabilities
of the fitting interactions and stored in the classifier file. Scoring uses ``-n`` held-out
interactions (``--seed``, 31337) and prints the CVN alone on the same interactions beside it;
the CVN's cut is chosen on ``--tune-n`` validation interactions (seed 1001), as
``scripts/cvn_heldout.py`` does (the validation accuracy of both is printed too).
Feature tables are cached under ``--cache`` (keyed by the weights' sha256), so a refit or a
rescore does not simulate again. Writes ``metrics.json`` and ``confusion.png`` to ``--out-dir``.
``--gains 0.5,2`` re-simulates the held-out interactions with the detector gain multiplied by
each factor (before noise and threshold) and adds a row each; ``--vertex-smear 2,5`` measures
their features from a vertex moved by that many pixels (Gaussian sigma: one drift-time shift for
the three views, a wire shift per view), as a reconstructed vertex would be.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MIN_PURITY = 0.8


def cached_table(cache: Path, n: int, seed: int, predictor, cvn_model, key: str, gain: float = 1.0,
                 vertex_sigma: float = 0.0):
    from sparseseg.atomic import write_atomic
    from sparseseg.tasks.topology import FEATURE_NAMES, feature_table

    tag = ("" if gain == 1.0 else f"-gain{gain:g}") + ("" if vertex_sigma == 0 else f"-vtx{vertex_sigma:g}")
    path = cache / f"crop512-seed{seed}-n{n}{tag}-{key}.npz"
    if path.exists():
        d = np.load(path)
        if tuple(d["names"]) == FEATURE_NAMES:
            return d["x"], d["y"]
    conditions = None
    if gain != 1.0:
        from sparseseg.robustness import conditions_for

        conditions = conditions_for("crop512", {"gain": gain})
    x, y = feature_table(n, seed, predictor, cvn_model, conditions=conditions, vertex_sigma=vertex_sigma)
    write_atomic(path, lambda f: np.savez(f, x=x, y=y, names=np.array(FEATURE_NAMES)))
    return x, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="classifier to score (JSON; default: the shipped weights/topology.json)")
    p.add_argument("--fit", type=int, default=0, metavar="N", help="fit on N interactions first")
    p.add_argument("--fit-seed", default="21", metavar="S1,S2,...",
                   help="stream seed(s) of the fitting interactions, --fit of each (default 21)")
    p.add_argument("--fit-vertex-smear", default=None, metavar="S1,S2,...",
                   help="vertex smearing sigma (pixels) of each --fit-seed stream, 0 for the true vertex (default: all 0)")
    p.add_argument("--model", default="trees", choices=("trees", "logistic"),
                   help="boosted decision trees (default) or a logistic regression")
    p.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    p.add_argument("--out", help="with --fit: the classifier file to write")
    p.add_argument("--segmentation", default=None, help="2D segmentation weights (default: the shipped ones)")
    p.add_argument("--cvn", default=None, help="CVN weights (default: the shipped ones)")
    p.add_argument("-n", type=int, default=500, help="held-out interactions (default 500)")
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--tune-n", type=int, default=500, help="validation interactions the nu_e cut is chosen on")
    p.add_argument("--cache", default="runs/topology", help="folder of cached feature tables")
    p.add_argument("--out-dir", default="runs/topology/heldout")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gains", default=None, metavar="G1,G2,...",
                   help="also score the same held-out interactions at these detector gains (e.g. 0.5,2)")
    p.add_argument("--vertex-smear", default=None, metavar="S1,S2,...",
                   help="also score them with the vertex smeared by these sigmas, pixels (e.g. 2,5)")
    args = p.parse_args(argv)
    from sparseseg.robustness import parse_gains

    try:
        gains = parse_gains(args.gains)
        smears = parse_gains(args.vertex_smear, option="--vertex-smear")
    except ValueError as e:
        p.error(str(e))
    if args.fit and not args.out:
        p.error("--fit needs --out (where to write the classifier)")
    try:
        fit_seeds = [int(v) for v in args.fit_seed.split(",")]
    except ValueError:
        p.error(f"--fit-seed: expected integers separated by commas, got {args.fit_seed!r}")
    if len(set(fit_seeds)) != len(fit_seeds) or {1001, args.seed} & set(fit_seeds):
        p.error(f"--fit-seed: the seeds must differ from each other, from the validation seed 1001 and from "
                f"the held-out --seed {args.seed}, got {args.fit_seed!r}")
    try:
        fit_smear = [0.0] * len(fit_seeds) if args.fit_vertex_smear is None else [
            float(v) for v in args.fit_vertex_smear.split(",")]
    except ValueError:
        p.error(f"--fit-vertex-smear: expected numbers separated by commas, got {args.fit_vertex_smear!r}")
    if len(fit_smear) != len(fit_seeds) or any(not v >= 0 for v in fit_smear):
        p.error(f"--fit-vertex-smear: expected one sigma >= 0 per --fit-seed ({len(fit_seeds)}), got {args.fit_vertex_smear!r}")

    import torch

    torch.set_num_threads(args.threads)
    from sparseseg.atomic import write_text
    from sparseseg.checkpoint import load_model
    from sparseseg.classes import CVN_CLASSES
    from sparseseg.infer import Predictor
    from sparseseg.metrics import classification_table
    from sparseseg.plots import confusion_heatmap
    from sparseseg.registry import get, sha256
    from sparseseg.tasks.cvn import nue_cut, nue_selection, nue_selection_at
    from sparseseg.tasks.topology import TopologyClassifier, cross_validated, fit, shipped_classifier_path

    seg_path = Path(args.segmentation) if args.segmentation else get("uresnet2d").path
    cvn_path = Path(args.cvn) if args.cvn else get("cvn").path
    key = f"{sha256(seg_path)[:8]}-{sha256(cvn_path)[:8]}"
    predictor = Predictor(weights=str(seg_path))
    cvn_model = load_model(cvn_path)[0].eval()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.fit:
        tables = [cached_table(cache, args.fit, s, predictor, cvn_model, key, vertex_sigma=v)
                  for s, v in zip(fit_seeds, fit_smear)]
        x, y = np.vstack([t[0] for t in tables]), np.concatenate([t[1] for t in tables])
        from sparseseg.simulate import SIMULATOR_VERSION

        cv = cross_validated(x, y, args.model, args.c)
        cut = nue_cut(cv, y, MIN_PURITY)
        clf = fit(x, y, args.model, args.c, info={
            "fit_interactions": len(y), "fit_seeds": fit_seeds, "fit_vertex_sigma": fit_smear, "preset": "crop512", "simulator": SIMULATOR_VERSION,
            "segmentation_sha256": sha256(seg_path), "cvn_sha256": sha256(cvn_path),
            "cv_accuracy": float((cv.argmax(1) == y).mean()), "nue_cut": cut,
            "nue_cut_rule": f"lowest P(nu_e CC) with purity >= {MIN_PURITY} in 5-fold cross-validation on the fitting rows"})
        clf.save(args.out)
        print(f"wrote {args.out}: {args.model} on {len(y)} interactions (seeds {args.fit_seed}); 5-fold cross-validated "
              f"accuracy {clf.info['cv_accuracy']:.3f}, nu_e CC cut {cut}")
        weights = args.out
    else:
        weights = args.weights or shipped_classifier_path()
    clf = TopologyClassifier.load(weights)
    xt, yt = cached_table(cache, args.tune_n, 1001, predictor, cvn_model, key)
    xh, yh = cached_table(cache, args.n, args.seed, predictor, cvn_model, key)
    ncls = len(CVN_CLASSES)
    cvn_cols = slice(-ncls, None)
    rows = {}
    for name, ph, pt in (("cvn", np.exp(xh[:, cvn_cols]), np.exp(xt[:, cvn_cols])),
                         ("topology", clf.probabilities(xh), clf.probabilities(xt))):
        table = classification_table(yh, ph.argmax(1), ncls, list(CVN_CLASSES))
        table["validation_accuracy"] = float((pt.argmax(1) == yt).mean())
        stored = clf.info.get("nue_cut") if name == "topology" else None
        if stored is None:  # the cut from the validation interactions
            table["nue_selection"] = dict(nue_selection(pt, yt, ph, yh, MIN_PURITY), chosen_on="validation")
        else:  # the classifier's own cut, from cross-validation on its fitting interactions
            table["nue_selection"] = dict(nue_selection_at(stored, ph, yh), chosen_on="cross-validation")
        rows[name] = table
    condition_rows = []  # the same interactions under another detector gain or vertex; the nu_e cut stays the nominal one
    for kind, value in [("gain", g) for g in gains] + [("vertex_sigma", v) for v in smears]:
        xg, yg = cached_table(cache, args.n, args.seed, predictor, cvn_model, key, **{kind: value})
        row = {kind: value}
        for name, pg in (("cvn", np.exp(xg[:, cvn_cols])), ("topology", clf.probabilities(xg))):
            t = classification_table(yg, pg.argmax(1), ncls, list(CVN_CLASSES))
            row[name] = {"accuracy": t["accuracy"], "efficiency": dict(zip(CVN_CLASSES, t["efficiency"]))}
            cut = rows[name]["nue_selection"]["cut"]
            if cut is not None:
                row[name]["nue_selection"] = nue_selection_at(cut, pg, yg)
        condition_rows.append(row)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from sparseseg.registry import WEIGHTS_DIR

    def name(path) -> str:  # shipped files by their place in the package, others as given
        return f"weights/{Path(path).name}" if Path(path).resolve().parent == WEIGHTS_DIR.resolve() else str(path)

    metrics = {"n": args.n, "seed": args.seed, "tune_n": args.tune_n, "classifier_weights": name(weights),
               "segmentation_weights": name(seg_path), "cvn_weights": name(cvn_path), **rows,
               "gains": [r for r in condition_rows if "gain" in r],
               "vertex_smear": [r for r in condition_rows if "vertex_sigma" in r]}
    write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")
    confusion_heatmap(np.array(rows["topology"]["confusion"]), str(out / "confusion.png"), list(CVN_CLASSES),
                      title=f"segmentation + CVN, {args.n} held-out interactions", unit="interactions")
    print(f"{args.n} held-out interactions (crop512, seed {args.seed}); nu_e CC selection: P(nu_e CC) >= the cut "
          f"chosen for purity >= {MIN_PURITY} (on the cross-validated fitting interactions when the classifier "
          f"stores one, else on {args.tune_n} validation interactions, seed 1001)")
    print("| classifier | accuracy | validation accuracy | " + " | ".join(f"{c} eff / pur" for c in CVN_CLASSES)
          + " | nu_e CC selection eff / pur (cut, chosen on) |")
    print("|---|---:|---:|" + "---|" * (ncls + 1))
    for name, t in rows.items():
        label = "CVN alone" if name == "cvn" else "segmentation + CVN"
        cells = " | ".join(f"{e:.3f} / {q:.3f}" for e, q in zip(t["efficiency"], t["purity"]))
        s = t["nue_selection"]
        cut = "none" if s["cut"] is None else f"{s['cut']:.3f}"
        print(f"| {label} | {t['accuracy']:.3f} | {t['validation_accuracy']:.3f} | {cells} | "
              f"{s['efficiency']:.3f} / {s['purity']:.3f} ({cut}, {s['chosen_on']}) |")
    if condition_rows:
        print("\n| condition | CVN alone accuracy | segmentation + CVN accuracy | " +
              " | ".join(f"{c} eff" for c in CVN_CLASSES) + " | nu_e CC selection eff / pur (nominal cut) |")
        print("|---|---:|---:|" + "---:|" * ncls + "---|")
        for r in condition_rows:
            label = f"gain x{r['gain']:g}" if "gain" in r else f"vertex smeared {r['vertex_sigma']:g} px"
            eff = " | ".join(f"{r['topology']['efficiency'][c]:.3f}" for c in CVN_CLASSES)
            sel = r["topology"].get("nue_selection")
            sel = "-" if sel is None else f"{sel['efficiency']:.3f} / {sel['purity']:.3f}"
            print(f"| {label} | {r['cvn']['accuracy']:.3f} | {r['topology']['accuracy']:.3f} | {eff} | {sel} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
