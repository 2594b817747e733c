"""Held-out evaluation of a CVN event classifier: efficiency, purity, confusion matrix.

    python scripts/cvn_heldout.py --weights weights/cvn.pt [-n 300] [--seed 31337] [--out docs/cvn]

Simulates ``n`` interactions of the training preset with a seed never used in training
(the same 3-view 500 x 500 images as training), classifies them, prints the table and writes
``metrics.json`` and ``confusion.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("-n", type=int, default=300, help="interactions (default 300)")
    p.add_argument("--seed", type=int, default=31337, help="held-out simulator seed (default 31337)")
    p.add_argument("--out", default="runs/cvn_heldout")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sparseseg.checkpoint import load
    from sparseseg.export import dense_from
    from sparseseg.metrics import classification_table
    from sparseseg.models.cvn import CVN_CLASSES, cvn_dataset
    from sparseseg.plots import confusion_heatmap

    ckpt = load(args.weights)
    model = dense_from(ckpt, args.weights, "cvn").eval()
    preset = (ckpt["config"].get("data") or {}).get("simulate") or "crop512"
    t0 = time.perf_counter()
    x, y = cvn_dataset(args.n, args.seed, preset=preset)
    t_sim = time.perf_counter() - t0
    preds = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), 8):
            preds.append(model(torch.from_numpy(x[i:i + 8])).argmax(1).numpy())
    t_net = (time.perf_counter() - t0) / max(1, len(x))
    table = classification_table(y, np.concatenate(preds), len(CVN_CLASSES), CVN_CLASSES)
    print(f"{len(y)} held-out {preset} interactions (seed {args.seed}); accuracy {table['accuracy']:.3f}; "
          f"{t_net * 1e3:.0f} ms per interaction ({torch.get_num_threads()} threads), simulation {t_sim:.0f} s")
    print(f"{'class':10s} {'truth':>6s} {'efficiency':>10s} {'purity':>7s}")
    cm = np.asarray(table["confusion"])
    for c, name in enumerate(CVN_CLASSES):
        print(f"{name:10s} {int(cm[c].sum()):6d} {table['efficiency'][c]:10.3f} {table['purity'][c]:7.3f}")
    print("confusion (rows truth, columns prediction):")
    for c, name in enumerate(CVN_CLASSES):
        print(f"  {name:10s} " + " ".join(f"{int(v):5d}" for v in cm[c]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "weights": args.weights, "n": len(y), "seed": args.seed, "preset": preset, "accuracy": table["accuracy"],
        "efficiency": dict(zip(CVN_CLASSES, table["efficiency"])), "purity": dict(zip(CVN_CLASSES, table["purity"])),
        "confusion": cm.tolist(), "time_per_interaction_s": t_net}, indent=2))
    confusion_heatmap(cm, str(out / "confusion.png"), class_names=CVN_CLASSES,
                      title=f"CVN: {len(y)} held-out {preset} interactions (seed {args.seed})")
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
