"""Head to head: the sparse UResNet vs the per-hit patch classifier, on the same held-out
uboone events, in one run.

    python scripts/compare_hit_tagging.py --uresnet weights/uresnet2d.pt --patch weights/patch_cnn.pt -n 20

For each model, ``sparseseg predict`` runs in its own process (time per event and peak memory
are that model's alone), then both prediction files are scored on the labelled pixels:
track (HIP + MIP) vs EM (shower + delta + Michel) accuracy, efficiency and purity, and the
Michel score's ROC curve and AUC. Writes ``compare.json``, ``compare.md`` and
``michel_roc.png`` under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RUN = """
import json, sys, torch
from sparseseg.infer import Predictor, predict_file
from sparseseg.memory import peak_rss_mb
torch.set_num_threads(int(sys.argv[4]))
p = Predictor(weights=sys.argv[3])
r = predict_file(sys.argv[1], sys.argv[2], p, progress=False)
r["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(r))
"""


def score(pred_path: str) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    from sparseseg.classes import IGNORE, MICHEL
    from sparseseg.io import EventFile
    from sparseseg.metrics import confusion_matrix, summarize

    labels, preds, michel = [], [], []
    with EventFile(pred_path) as f:
        for i in range(len(f)):
            ev = f[i]
            keep = ev.labels != IGNORE
            labels.append(ev.labels[keep])
            preds.append(f.read_extra(i, "pred")[keep])
            michel.append(f.read_extra(i, "scores")[keep, 4].astype(np.float32))
    t, p, m = np.concatenate(labels), np.concatenate(preds), np.concatenate(michel)
    s = summarize(confusion_matrix(t, p))
    out = {"pixels": int(len(t)), "track_em_accuracy": s["track_shower_accuracy"]}
    for name, key in (("track", "track"), ("EM", "shower")):
        out[f"{name}_efficiency"] = s["track_shower_efficiency"][key] or 0.0
        out[f"{name}_purity"] = s["track_shower_purity"][key] or 0.0
    truth = t == MICHEL
    out["michel_pixels"] = int(truth.sum())
    if 0 < truth.sum() < len(truth):
        fpr, tpr, _ = roc_curve(truth, m)
        keep = np.unique(np.linspace(0, len(fpr) - 1, 400).astype(int))
        out["michel_auc"] = float(roc_auc_score(truth, m))
        out["michel_roc"] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uresnet", default="weights/uresnet2d.pt")
    ap.add_argument("--patch", default="weights/patch_cnn.pt")
    ap.add_argument("-n", type=int, default=20, help="uboone interactions (default 20)")
    ap.add_argument("--seed", type=int, default=31337, help="held-out simulator seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/compare")
    args = ap.parse_args(argv)

    from sparseseg.atomic import write_text
    from sparseseg.bench import json_subprocess
    from sparseseg.heldout import simulated_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events, _ = simulated_file(out / f"uboone-seed{args.seed}-n{args.n}.h5", "uboone", args.n, args.seed)
    res = {"events": args.n, "seed": args.seed, "threads": args.threads, "models": {}}
    for label, weights in (("sparse UResNet", args.uresnet), ("patch CNN", args.patch)):
        pred = out / f"{Path(weights).stem}.pred.h5"
        if pred.exists():
            pred.unlink()
        print(f"{label}: predicting {args.n} events ...", flush=True)
        run = json_subprocess([sys.executable, "-c", RUN, str(events), str(pred), weights, str(args.threads)],
                              {"model": label})
        if "error" in run:
            print(f"{label}: {run['error']}", file=sys.stderr)
            return 1
        res["models"][label] = {"weights": weights, "time_per_event_s": run["time_per_event_s"],
                                "peak_rss_mb": run["peak_rss_mb"], **score(str(pred))}
    rows = ["| model | track/EM accuracy | track eff / purity | EM eff / purity | Michel AUC | time / event (s) | peak memory (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in res["models"].items():
        rows.append(f"| {label} | {m['track_em_accuracy']:.4f} | {m['track_efficiency']:.4f} / {m['track_purity']:.4f} | "
                    f"{m['EM_efficiency']:.4f} / {m['EM_purity']:.4f} | {m.get('michel_auc', float('nan')):.4f} | "
                    f"{m['time_per_event_s']:.2f} | {m['peak_rss_mb']:.0f} |")
    text = (f"{args.n} held-out uboone events (seed {args.seed}), {args.threads} CPU threads, every labelled pixel "
            f"of all three planes.\n\n" + "\n".join(rows) + "\n")
    print(text)
    write_text(out / "compare.md", text)
    write_text(out / "compare.json", json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    for label, m in res["models"].items():
        if "michel_roc" in m:
            ax.plot(m["michel_roc"]["fpr"], m["michel_roc"]["tpr"], label=f"{label} (AUC {m['michel_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("non-Michel pixels tagged (false positive rate)")
    ax.set_ylabel("Michel pixels tagged (efficiency)")
    ax.set_title(f"Michel tagging, {args.n} uboone events")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "michel_roc.png", dpi=120)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}, {out / 'michel_roc.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
