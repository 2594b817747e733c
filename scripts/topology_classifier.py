"""Fit and score the event classifier that reads the segmentation (`sparseseg.tasks.topology`):
topology features of the three views from the 2D sparse UResNet, plus the CVN's probabilities,
combined by a logistic regression (nu_mu CC / nu_e CC / NC).

    python scripts/topology_classifier.py --fit 3000 --out weights/topology.json     # fit, then score
    python scripts/topology_classifier.py                                            # score the shipped one

Fitting simulates ``--fit`` interactions of the crop512 stream ``--fit-seed`` (natural class
mix, a seed no model was trained, validated or scored on), segments each view with
``--segmentation`` weights and runs the ``--cvn`` weights on the same views. Scoring uses
``-n`` held-out interactions (``--seed``, 31337) and picks the nu_e CC cut on ``--tune-n``
validation interactions (seed 1001) as the lowest with purity >= 0.8, as
``scripts/cvn_heldout.py`` does, and prints the CVN alone on the same interactions beside it.
Feature tables are cached under ``--cache`` (keyed by the weights' sha256), so a refit or a
rescore does not simulate again. Writes ``metrics.json`` and ``confusion.png`` to ``--out-dir``.
``--gains 0.5,2`` re-simulates the held-out interactions with the detector gain multiplied by
each factor (before noise and threshold) and adds a row each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MIN_PURITY = 0.8


def cached_table(cache: Path, n: int, seed: int, predictor, cvn_model, key: str, gain: float = 1.0):
    from sparseseg.atomic import write_atomic
    from sparseseg.tasks.topology import FEATURE_NAMES, feature_table

    tag = "" if gain == 1.0 else f"-gain{gain:g}"
    path = cache / f"crop512-seed{seed}-n{n}{tag}-{key}.npz"
    if path.exists():
        d = np.load(path)
        if tuple(d["names"]) == FEATURE_NAMES:
            return d["x"], d["y"]
    conditions = None
    if gain != 1.0:
        from sparseseg.robustness import conditions_for

        conditions = conditions_for("crop512", {"gain": gain})
    x, y = feature_table(n, seed, predictor, cvn_model, conditions=conditions)
    write_atomic(path, lambda f: np.savez(f, x=x, y=y, names=np.array(FEATURE_NAMES)))
    return x, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="classifier to score (JSON; default: the shipped weights/topology.json)")
    p.add_argument("--fit", type=int, default=0, metavar="N", help="fit on N interactions first")
    p.add_argument("--fit-seed", type=int, default=21)
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
    args = p.parse_args(argv)
    from sparseseg.robustness import parse_gains

    try:
        gains = parse_gains(args.gains)
    except ValueError as e:
        p.error(str(e))
    if args.fit and not args.out:
        p.error("--fit needs --out (where to write the classifier)")

    import torch

    torch.set_num_threads(args.threads)
    from sparseseg.atomic import write_text
    from sparseseg.checkpoint import load_model
    from sparseseg.classes import CVN_CLASSES
    from sparseseg.infer import Predictor
    from sparseseg.metrics import classification_table
    from sparseseg.plots import confusion_heatmap
    from sparseseg.registry import get, sha256
    from sparseseg.tasks.cvn import nue_selection
    from sparseseg.tasks.topology import TopologyClassifier, fit, shipped_classifier_path

    seg_path = Path(args.segmentation) if args.segmentation else get("uresnet2d").path
    cvn_path = Path(args.cvn) if args.cvn else get("cvn").path
    key = f"{sha256(seg_path)[:8]}-{sha256(cvn_path)[:8]}"
    predictor = Predictor(weights=str(seg_path))
    cvn_model = load_model(cvn_path)[0].eval()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.fit:
        x, y = cached_table(cache, args.fit, args.fit_seed, predictor, cvn_model, key)
        from sparseseg.simulate import SIMULATOR_VERSION

        clf = fit(x, y, c=args.c, info={"fit_interactions": args.fit, "fit_seed": args.fit_seed, "preset": "crop512",
                                        "simulator": SIMULATOR_VERSION,
                                        "segmentation_sha256": sha256(seg_path), "cvn_sha256": sha256(cvn_path)})
        clf.save(args.out)
        print(f"wrote {args.out}: logistic regression on {args.fit} interactions (seed {args.fit_seed}), C = {args.c}")
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
        table["nue_selection"] = nue_selection(pt, yt, ph, yh, MIN_PURITY)
        rows[name] = table
    gain_rows = []
    for g in gains:  # the same interactions under another detector gain; the nu_e cut stays the nominal one
        xg, yg = cached_table(cache, args.n, args.seed, predictor, cvn_model, key, gain=g)
        row = {"gain": g}
        for name, pg in (("cvn", np.exp(xg[:, cvn_cols])), ("topology", clf.probabilities(xg))):
            t = classification_table(yg, pg.argmax(1), ncls, list(CVN_CLASSES))
            row[name] = {"accuracy": t["accuracy"], "efficiency": dict(zip(CVN_CLASSES, t["efficiency"]))}
        gain_rows.append(row)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from sparseseg.registry import WEIGHTS_DIR

    def name(path) -> str:  # shipped files by their place in the package, others as given
        return f"weights/{Path(path).name}" if Path(path).resolve().parent == WEIGHTS_DIR.resolve() else str(path)

    metrics = {"n": args.n, "seed": args.seed, "tune_n": args.tune_n, "classifier_weights": name(weights),
               "segmentation_weights": name(seg_path), "cvn_weights": name(cvn_path), **rows, "gains": gain_rows}
    write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")
    confusion_heatmap(np.array(rows["topology"]["confusion"]), str(out / "confusion.png"), list(CVN_CLASSES),
                      title=f"segmentation + CVN, {args.n} held-out interactions", unit="interactions")
    print(f"{args.n} held-out interactions (crop512, seed {args.seed}); nu_e CC cut chosen on {args.tune_n} "
          f"validation interactions (seed 1001) for purity >= {MIN_PURITY}")
    print("| classifier | accuracy | " + " | ".join(f"{c} eff / pur" for c in CVN_CLASSES) + " | nu_e CC selection eff / pur |")
    print("|---|---:|" + "---|" * (ncls + 1))
    for name, t in rows.items():
        label = "CVN alone" if name == "cvn" else "segmentation + CVN"
        cells = " | ".join(f"{e:.3f} / {q:.3f}" for e, q in zip(t["efficiency"], t["purity"]))
        s = t["nue_selection"]
        print(f"| {label} | {t['accuracy']:.3f} | {cells} | {s['efficiency']:.3f} / {s['purity']:.3f} |")
    if gain_rows:
        print("\n| detector gain | CVN alone accuracy | segmentation + CVN accuracy | " +
              " | ".join(f"{c} eff" for c in CVN_CLASSES) + " |")
        print("|---:|---:|---:|" + "---:|" * ncls)
        for r in gain_rows:
            eff = " | ".join(f"{r['topology']['efficiency'][c]:.3f}" for c in CVN_CLASSES)
            print(f"| x{r['gain']:g} | {r['cvn']['accuracy']:.3f} | {r['topology']['accuracy']:.3f} | {eff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
