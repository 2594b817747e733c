"""Where the pixels of one truth class go, from a held-out prediction file.

    python scripts/heldout_eval.py --weights weights/uresnet2d.pt --preset uboone -n 200 --seed 31337
    python scripts/class_errors.py runs/heldout/uresnet2d-fp32-visible/pred.h5 --class HIP

Prints three tables of the class's pixels, each row with its efficiency and the fraction given
to every other class: by the size of the particle they belong to (truth cluster), by the
interaction type of the image, and by the other truth classes within ``--radius`` pixels (what
the network had to tell them apart from). ``--json`` writes the counts.
"""
from __future__ import annotations

import argparse
import json
import sys

from sparseseg.atomic import write_text
from sparseseg.classes import CLASS_NAMES, class_index
from sparseseg.heldout import class_errors


def _row(name: str, row: dict, clusters: str = "") -> str:
    n = max(row["pixels"], 1)
    fracs = " | ".join(f"{c / n:.3f}" for c in row["predicted"])
    return f"| {name} |{clusters} {row['pixels']:,} | {fracs} |"


def format_tables(res: dict) -> str:
    cls = class_index(res["class"])
    head = " | ".join(f"-> {c}" if i != cls else f"{c} (efficiency)" for i, c in enumerate(CLASS_NAMES))
    ncol = len(CLASS_NAMES) + 1
    lines = [f"{res['class']} pixels by particle size (pixels of the class in its truth cluster)", "",
             f"| size | clusters | pixels | {head} |", "|---|" + "---:|" * (ncol + 1)]
    for r in res["by_size"]:
        name = f"{r['lo']}-{r['hi'] - 1}" if r["hi"] else f">= {r['lo']}"
        lines.append(_row(name, r, f" {r['clusters']:,} |"))
    for title, key, first in (("interaction type", "by_topology", "type"),
                              ("other truth classes within the radius", "by_neighbour", "near")):
        lines += ["", f"{res['class']} pixels by {title}", "", f"| {first} | pixels | {head} |", "|---|" + "---:|" * ncol]
        lines += [_row(name, r) for name, r in res[key].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", help="prediction file with truth labels (heldout_eval.py's pred.h5 or `sparseseg predict` output)")
    p.add_argument("--class", dest="cls", default="HIP", help=f"truth class to follow, one of {', '.join(CLASS_NAMES)} (default HIP)")
    p.add_argument("--radius", type=int, default=2, help="neighbourhood radius in pixels (default 2)")
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    try:
        if args.radius < 0:
            raise ValueError(f"--radius must be >= 0, got {args.radius}")
        res = class_errors(args.pred, class_index(args.cls), radius=args.radius)
    except (OSError, ValueError, KeyError) as e:
        print(f"class_errors.py: error: {e}", file=sys.stderr)
        return 2
    print(format_tables(res))
    if args.json:
        def plain(o):
            return o.tolist() if hasattr(o, "tolist") else o
        write_text(args.json, json.dumps(res, indent=2, default=plain) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
