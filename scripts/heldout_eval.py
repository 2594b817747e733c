"""Held-out evaluation of shipped weights, in the form of a model card's metrics section.

    python scripts/heldout_eval.py --weights weights/uresnet2d.pt --preset uboone -n 200 --seed 31337
    python scripts/heldout_eval.py --weights weights/uresnet3d.pt --preset pilarnet -n 200 --seed 31337
    python scripts/heldout_eval.py --weights weights/uresnet2d.pt --label-rule legacy   # the old label convention

Simulates ``n`` interactions with a seed never used in training (kept under --out, reused on
a rerun), segments them at full size with ``sparseseg predict``'s code path, and writes
``metrics.json``, ``confusion.png`` and ``card.md`` (Markdown tables: summary, per-class
efficiency and purity per plane, confusion counts and the efficiency matrix, and each class's
efficiency at purity >= 0.8 when its pixels are selected by a cut on its own score) under --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparseseg.atomic import write_text
from sparseseg.classes import CLASS_NAMES
from sparseseg.heldout import predict_and_score, score_curves, simulated_file
from sparseseg.infer import Predictor
from sparseseg.metrics import format_table
from sparseseg.plots import confusion_heatmap


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


PURITY_FLOOR = 0.8


def card_markdown(s: dict, title: str, timing: dict, at_purity: dict | None = None) -> str:
    planes = list(s.get("per_plane", {}))
    lines = [f"### {title}", "",
             f"{s['events']} images, {s['pixels']:,} labelled pixels; "
             f"{timing['time_per_event_s']:.2f} s per event, peak memory {timing['peak_rss_mb']:.0f} MB "
             f"({timing['threads']} CPU threads).", "",
             "| metric | all | " + " | ".join(planes) + " |", "|---|---:|" + "---:|" * len(planes)]
    for key, label in (("accuracy", "5-class pixel accuracy"), ("track_shower_accuracy", "track/shower accuracy"),
                       ("mean_iou", "mean IoU")):
        lines.append(f"| {label} | {_fmt(s[key])} | " + " | ".join(_fmt(s['per_plane'][p][key]) for p in planes) + " |")
    for c in CLASS_NAMES:
        lines.append(f"| {c} efficiency / purity | {_fmt(s['efficiency'][c])} / {_fmt(s['purity'][c])} | "
                     + " | ".join(f"{_fmt(s['per_plane'][p]['efficiency'][c])} / {_fmt(s['per_plane'][p]['purity'][c])}"
                                  for p in planes) + " |")
    lines += ["", "Confusion matrix (rows = truth, columns = prediction): pixel counts | row-normalised (efficiency)", "",
              "| truth \\ pred | " + " | ".join(CLASS_NAMES) + " | " + " | ".join(CLASS_NAMES) + " |",
              "|---|" + "---:|" * (2 * len(CLASS_NAMES))]
    for i, c in enumerate(CLASS_NAMES):
        counts = " | ".join(f"{int(v):,}" for v in s["confusion"][i])
        eff = " | ".join(_fmt(v) for v in s["efficiency_matrix"][i])
        lines.append(f"| {c} | {counts} | {eff} |")
    if at_purity:
        lines += ["", f"Efficiency at purity >= {PURITY_FLOOR} (pixels selected by the class's own score, "
                      "P(class) >= cut, the lowest cut that keeps the purity):", "",
                  "| class | cut on P(class) | efficiency | purity |", "|---|---:|---:|---:|"]
        for c in CLASS_NAMES:
            a = at_purity[c]
            lines.append(f"| {c} | {_fmt(a['cut'])} | {_fmt(a['efficiency'])} | {_fmt(a['purity'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--preset", default="uboone")
    p.add_argument("-n", type=int, default=200, help="interactions (default 200)")
    p.add_argument("--seed", type=int, default=31337, help="held-out simulator seed (default 31337)")
    p.add_argument("--out", help="folder (default runs/heldout/<weights stem>)")
    p.add_argument("--cache", help="simulated event file to reuse (written if missing or of another stream; "
                                   "default: inside --out)")
    p.add_argument("--min-score", action="append", default=[], metavar="CLASS=SCORE")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as for `sparseseg predict`")
    p.add_argument("--flips", action="store_true", help="average over the mirror images, as `sparseseg predict --flips`")
    p.add_argument("--no-class-bias", action="store_true", help="plain argmax (ignore the weights' class_bias)")
    p.add_argument("--label-rule", default="visible", choices=["visible", "legacy"],
                   help="truth label convention of the simulated events (README 'Classes')")
    p.add_argument("--no-hadronic", dest="hadronic", action="store_false",
                   help="simulate the events without hadronic interactions of pions and protons (sparseseg simulate --no-hadronic)")
    args = p.parse_args(argv)

    from sparseseg.infer import parse_min_scores

    tag = args.label_rule if args.hadronic else f"{args.label_rule}-no-hadronic"
    flips = "-flips" if args.flips else ""
    out = Path(args.out or f"runs/heldout/{Path(args.weights).stem}-{args.precision}{flips}-{tag}")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out / f"{args.preset}-seed{args.seed}-n{args.n}-{tag}.h5"
    events, t_sim = simulated_file(cache, args.preset, args.n, args.seed, args.label_rule, hadronic=args.hadronic)
    if t_sim:
        print(f"simulated {args.n} {args.preset} interactions (seed {args.seed}) in {t_sim:.0f} s")
    predictor = Predictor(weights=args.weights, min_scores=parse_min_scores(args.min_score), precision=args.precision,
                          use_class_bias=not args.no_class_bias, flips=args.flips)
    r, acc = predict_and_score(events, out / "pred.h5", predictor)
    s = acc.summary()
    print(format_table(s))
    at_purity = score_curves(out / "pred.h5").summary(PURITY_FLOOR)
    print(f"efficiency at purity >= {PURITY_FLOOR} (cut on the class score): "
          + ", ".join(f"{c} {a['efficiency']:.4f}" for c, a in at_purity.items()))
    bias = predictor.class_bias(3 if args.preset == "pilarnet" else 2)
    write_text(out / "metrics.json", json.dumps({"summary": s,
                                                  "efficiency_at_purity": {"min_purity": PURITY_FLOOR, **at_purity},
                                                  "timing": r, "weights": args.weights,
                                                  "preset": args.preset, "seed": args.seed, "n": args.n,
                                                  "min_scores": args.min_score, "precision": predictor.precision,
                                                  "flips": args.flips,
                                                  "label_rule": args.label_rule, "hadronic": args.hadronic,
                                                  "class_bias": None if bias is None else bias.tolist()},
                                                 indent=2))
    confusion_heatmap(acc.matrix, str(out / "confusion.png"),
                      title=f"{Path(args.weights).name}: {args.n} held-out {args.preset} interactions (seed {args.seed})")
    title = f"Held-out {args.preset}: {args.n} interactions, seed {args.seed}, label rule {args.label_rule}"
    if not args.hadronic:
        title += ", without hadronic interactions"
    if args.flips:
        title += ", scores averaged over mirror images (--flips)"
    if args.min_score:
        title += f", --min-score {' '.join(args.min_score)}"
    write_text(out / "card.md", card_markdown(s, title, r, at_purity))
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'}, {out / 'card.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
