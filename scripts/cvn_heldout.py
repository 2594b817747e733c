"""Held-out evaluation of a CVN event classifier: efficiency, purity, confusion matrix, and
the nu_e CC selection at a purity of at least 0.8.

    python scripts/cvn_heldout.py --weights weights/cvn.pt [-n 500] [--seed 31337] [--out docs/cvn]

Simulates ``n`` interactions of the training preset with a seed never used in training (the
same 3-view 500 x 500 images as training, natural mix of nu_mu CC / nu_e CC / NC), classifies
them (largest probability), and prints the table. The nu_e CC selection is a cut on the
network's nu_e CC probability: the cut is chosen on the validation interactions (the
checkpoint's ``data.val_seed``, ``--tune-n`` of them) as the lowest one with purity >= 0.8,
then applied to the held-out interactions, so the quoted efficiency is not tuned on them.
Writes ``metrics.json``, ``confusion.png`` and ``nue_score.png`` to ``--out``.

``--gains 0.5,0.7,1.5,2`` re-simulates the same held-out interactions with the detector gain
multiplied by each factor (before noise and the zero-suppression threshold; the interactions
do not change) and adds a row per gain: how far the classifier depends on the detector's
absolute charge scale.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

MIN_PURITY = 0.8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("-n", type=int, default=500, help="held-out interactions (default 500)")
    p.add_argument("--seed", type=int, default=31337, help="held-out simulator seed (default 31337)")
    p.add_argument("--tune-n", type=int, default=500, help="validation interactions the nu_e cut is chosen on (default 500)")
    p.add_argument("--out", default="runs/cvn_heldout")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-hadronic", dest="hadronic", action="store_false",
                   help="simulate without hadronic interactions of pions and protons (the physics before simulator 0.5)")
    p.add_argument("--gains", default=None, metavar="G1,G2,...",
                   help="also score the same interactions at these detector gains (e.g. 0.5,0.7,1.5,2)")
    args = p.parse_args(argv)
    from sparseseg.robustness import parse_gains

    try:
        gains = parse_gains(args.gains)
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)

    from sparseseg.atomic import write_text
    from sparseseg.checkpoint import load_model
    from sparseseg.classes import CVN_CLASSES
    from sparseseg.metrics import classification_table
    from sparseseg.plots import confusion_heatmap, score_histograms
    from sparseseg.simulate import SIMULATOR_VERSION
    from sparseseg.tasks.cvn import cvn_dataset, cvn_probabilities, nue_selection

    model, ckpt = load_model(args.weights, name="cvn")
    model.eval()
    data_cfg = ckpt["config"].get("data") or {}
    preset = data_cfg.get("simulate") or "crop512"
    tune_seed = int(data_cfg.get("val_seed", 1001))
    nue = CVN_CLASSES.index("nu_e CC")

    t0 = time.perf_counter()
    x, y = cvn_dataset(args.n, args.seed, preset=preset, hadronic=args.hadronic)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = cvn_probabilities(model, x)
    t_net = (time.perf_counter() - t0) / max(1, len(x))
    del x
    xt, yt = cvn_dataset(args.tune_n, tune_seed, preset=preset, hadronic=args.hadronic)
    sel = nue_selection(cvn_probabilities(model, xt), yt, prob, y, MIN_PURITY)
    del xt

    table = classification_table(y, prob.argmax(1), len(CVN_CLASSES), CVN_CLASSES)
    print(f"{len(y)} held-out {preset} interactions (seed {args.seed}); accuracy {table['accuracy']:.3f}; "
          f"{t_net * 1e3:.0f} ms per interaction ({torch.get_num_threads()} threads), simulation {t_sim:.0f} s")
    print(f"{'class':10s} {'truth':>6s} {'efficiency':>10s} {'purity':>7s}")
    cm = np.asarray(table["confusion"])
    for c, name in enumerate(CVN_CLASSES):
        print(f"{name:10s} {int(cm[c].sum()):6d} {table['efficiency'][c]:10.3f} {table['purity'][c]:7.3f}")
    print("confusion (rows truth, columns prediction):")
    for c, name in enumerate(CVN_CLASSES):
        print(f"  {name:10s} " + " ".join(f"{int(v):5d}" for v in cm[c]))
    if sel["cut"] is None:
        print(f"nu_e CC selection: no cut on P(nu_e CC) reaches purity {MIN_PURITY} on the "
              f"{args.tune_n} validation interactions (seed {tune_seed})")
    else:
        print(f"nu_e CC selection P(nu_e CC) >= {sel['cut']:.3f} (the lowest cut with purity >= {MIN_PURITY} on "
              f"{args.tune_n} validation interactions, seed {tune_seed}): held-out efficiency "
              f"{sel['efficiency']:.3f}, purity {sel['purity']:.3f}")
    gain_rows = []
    if gains:
        from sparseseg.robustness import conditions_for

        print(f"{'gain':>5s} {'accuracy':>8s} " + " ".join(f"{name + ' eff':>12s}" for name in CVN_CLASSES))
        for g in gains:
            xg, yg = cvn_dataset(args.n, args.seed, preset=preset, hadronic=args.hadronic,
                                 conditions=conditions_for(preset, {"gain": g}))
            tg = classification_table(yg, cvn_probabilities(model, xg).argmax(1), len(CVN_CLASSES), CVN_CLASSES)
            del xg
            gain_rows.append({"gain": g, "accuracy": tg["accuracy"],
                              "efficiency": dict(zip(CVN_CLASSES, tg["efficiency"]))})
            print(f"{g:5.2f} {tg['accuracy']:8.3f} " + " ".join(f"{e:12.3f}" for e in tg["efficiency"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"CVN: {len(y)} held-out {preset} interactions (seed {args.seed})"
    confusion_heatmap(cm, str(out / "confusion.png"), class_names=CVN_CLASSES, title=title, unit="interactions")
    score_histograms(prob[:, nue], y, CVN_CLASSES, str(out / "nue_score.png"), score_name="P(nu_e CC)",
                     cut=sel["cut"], title=title)
    write_text(out / "metrics.json", json.dumps({
        "weights": args.weights, "n": len(y), "seed": args.seed, "preset": preset, "hadronic": args.hadronic,
        "simulator_version": SIMULATOR_VERSION, "accuracy": table["accuracy"],
        "efficiency": dict(zip(CVN_CLASSES, table["efficiency"])), "purity": dict(zip(CVN_CLASSES, table["purity"])),
        "confusion": cm.tolist(), "time_per_interaction_s": t_net,
        "nue_selection": {**sel, "min_purity": MIN_PURITY, "tuned_on": {"seed": tune_seed, "n": args.tune_n}},
        "input_norm": getattr(model.config, "input_norm", "none"), "gains": gain_rows},
        indent=2))
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'}, {out / 'nue_score.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
