"""Compare two models on the same held-out events: is the difference more than the events' noise?

    python scripts/heldout_eval.py --weights new.pt --out runs/heldout/new     # both on the same events
    python scripts/heldout_eval.py --weights old.pt --out runs/heldout/old
    python scripts/compare_predictions.py runs/heldout/new/pred.h5 runs/heldout/old/pred.h5

Resamples the interactions of the event file (paired: both models on each resample) and prints,
for the 5-class and the track/shower accuracy, each model's figure, the difference with its 95 %
interval, and the spread of one model's figure alone over as many events (``--json`` writes them).
"""
from __future__ import annotations

import argparse
import json
import sys

from sparseseg.atomic import write_text
from sparseseg.heldout import paired_bootstrap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="prediction file of model A (heldout_eval.py's pred.h5 or `sparseseg predict` output)")
    p.add_argument("b", help="prediction file of model B, of the same event file")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    try:
        r = paired_bootstrap(args.a, args.b, args.n_boot, args.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare_predictions.py: error: {e}", file=sys.stderr)
        return 2
    print("| figure | A | B | A - B | 95 % interval of A - B | spread of A alone (sd) |")
    print("|---|---:|---:|---:|---|---:|")
    for key, label in (("accuracy", "5-class accuracy"), ("track_shower_accuracy", "track/shower accuracy")):
        x = r[key]
        print(f"| {label} | {x['a']:.4f} | {x['b']:.4f} | {x['diff']:+.4f} | {x['lo']:+.4f} to {x['hi']:+.4f} | {x['sd_a']:.4f} |")
    if args.json:
        write_text(args.json, json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
