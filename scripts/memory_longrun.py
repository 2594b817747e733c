"""Does memory stay flat over a long run? Predict many simulated uboone events in one process
and record the resident memory (RSS) after each.

    python scripts/memory_longrun.py --model uresnet -n 1000               # sparse 2D UResNet
    python scripts/memory_longrun.py --model roi-mobilenetv3 -n 1000       # a dense model
    python scripts/memory_longrun.py --model all -n 1000 --json mem.json   # every model, one process each

The sparse UResNet runs as `sparseseg predict` does (the inference engine at precision auto,
shipped weights unless --weights) on all three planes of each event: sizes vary with every
event. Dense models get an input whose size varies from event to event as well (the event's
active wire range, clipped to [64, --max-width], for oneDNN's shape-keyed caches): ROI models a
3 x W x 600 map, the dense UResNet twin a W x 1008 crop of the Y plane, the CVN 3 x 500 x 500
views; their weights are random (memory does not depend on their values).
Reports RSS at event 100 and at the end and their difference (the target is < 50 MB).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from sparseseg.memory import rss_mb


def one(model_name: str, n: int, seed: int, weights: str | None, threads: int, max_width: int = 2400) -> dict:
    import torch

    from sparseseg.models import build_model
    from sparseseg.simulate import simulate_interaction

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if model_name == "uresnet":
        from sparseseg.infer import Predictor

        predictor = Predictor(weights=weights)
        model = predictor.scores
    else:
        model = build_model(model_name).eval()
    rss, t0 = [], time.perf_counter()
    with torch.no_grad():
        for k in range(n):
            planes = simulate_interaction("uboone", seed, k)
            if model_name == "uresnet":
                model(planes)
            else:
                wires = planes[2].coords[:, 1]
                width = int(np.clip(wires.max() - wires.min() + 1 if len(wires) else 64, 64, max_width))
                if model_name == "cvn":
                    x = torch.rand(1, 3, 500, 500) * 50
                elif model_name == "uresnet-dense":
                    x = torch.rand(1, 1, width, 1008)
                else:
                    x = torch.rand(1, 3, width, 600)
                model(x)
            rss.append(rss_mb())
            if (k + 1) % 50 == 0:
                print(f"{model_name}: event {k + 1}/{n}, RSS {rss[-1]:.0f} MB, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    ref = min(100, n) - 1
    return {"model": model_name, "events": n, "rss_mb_at_100": rss[ref], "rss_mb_at_end": rss[-1],
            "growth_mb": rss[-1] - rss[ref], "rss_mb_max": max(rss), "rss_mb": rss[::10],
            "wall_s": time.perf_counter() - t0, "seed": seed, "threads": torch.get_num_threads(),
            **({"precision": predictor.precision} if model_name == "uresnet" else {"max_width": max_width})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="uresnet", help="uresnet, a dense model name, or 'all'")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--weights")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-width", type=int, default=2400, help="widest dense input in wires (default: a full plane)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model == "all":  # one fresh process per model
        from sparseseg.bench import json_subprocess
        from sparseseg.models import FAMILIES, names

        rows = []
        # every family that runs on whole images (the patch CNN runs per hit)
        for m in ("uresnet",) + tuple(n for n in names(sparse=False) if FAMILIES[n].task != "patch"):
            cmd = [sys.executable, __file__, "--model", m, "-n", str(args.n), "--seed", str(args.seed),
                   "--threads", str(args.threads), "--max-width", str(args.max_width), "--row"]
            rows.append(json_subprocess(cmd, {"model": m}))
    else:
        rows = one(args.model, args.n, args.seed, args.weights, args.threads, args.max_width)
        if args.row:  # a child of --model all: its row as JSON on the last line
            print(json.dumps(rows))
            return 0
    for r in rows if isinstance(rows, list) else [rows]:
        if "error" in r:
            print(f"{r['model']:>16}: error {r['error']}")
        else:
            print(f"{r['model']:>16}: RSS {r['rss_mb_at_100']:.0f} MB at event 100, {r['rss_mb_at_end']:.0f} MB at "
                  f"event {r['events']}: growth {r['growth_mb']:+.1f} MB ({r['wall_s']:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
