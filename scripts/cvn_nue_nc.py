"""Why the CVN confuses nu_e CC with NC: the held-out interactions split by what their images
show, with the network's answer in each group.

    python scripts/cvn_nue_nc.py --weights weights/cvn.pt [-n 500] [--seed 31337] [--json out.json]

The same interactions as ``scripts/cvn_heldout.py`` (the first ``n`` neutrino interactions of
the held-out stream). From the simulator's truth, per interaction:

- NC (every simulated NC interaction holds a pi0): for each of the pi0's two photons, its
  gap (cm from the vertex to its first deposit) and its visible size (pixels of its shower in
  the three 500 x 500 views). A photon counts as seen when it leaves >= ``--min-pixels``
  pixels; the NC interaction then shows two showers, one shower (the other photon escaped
  the window, converted outside it or is too soft), or none.
- nu_e CC: the electron's visible size, and whether a pi+ or protons accompany it.

It prints, per group, how many interactions it holds and where the network puts them. The
network's view of the image: the stem is a 7 x 7 convolution with stride 2 and a 2 x 2
max-pool, so the first merged feature map has one cell per 4 x 4 pixels (1.2 cm of wire
pitch x 4 ticks); a photon's gap of a radiation length (14 cm, ~47 wires) spans ~12 cells.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from tqdm import tqdm


def photon_groups(truth, events, size: int, min_pixels: int) -> dict:
    """Truth features of one interaction: pixels per EM primary of the neutrino (pi0
    photons and the nu_e electron) inside the CVN views, and the photons' gaps."""
    from sparseseg.tasks.cvn import crop_origin

    out = {"photons": [], "electron_pixels": 0}
    for i, (pdg, parent) in enumerate(zip(truth.em_pdg, truth.em_parent)):
        if parent not in ("pi0", "nu"):
            continue
        cid = int(truth.em_cluster[i])
        pixels = 0
        for ev in events:
            r0, c0 = crop_origin(ev.shape, size)
            inside = ((ev.coords[:, 0] >= r0) & (ev.coords[:, 0] < r0 + size)
                      & (ev.coords[:, 1] >= c0) & (ev.coords[:, 1] < c0 + size))
            pixels += int(np.count_nonzero(inside & (ev.clusters == cid)))
        if pdg == 22 and parent == "pi0":
            start = truth.em_visible_start[i]
            gap = float(np.linalg.norm(start - truth.em_origin[i])) if np.all(np.isfinite(start)) else float("nan")
            out["photons"].append({"pixels": pixels, "gap_cm": gap, "seen": pixels >= min_pixels})
        elif abs(int(pdg)) == 11 and parent == "nu":
            out["electron_pixels"] += pixels
    return out


def nc_group(info: dict) -> str:
    seen = [p for p in info["photons"] if p["seen"]]
    if len(seen) >= 2:
        return "NC, two photon showers seen"
    if len(seen) == 1:
        return "NC, one photon shower seen"
    return "NC, no photon shower seen"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("-n", type=int, default=500, help="held-out interactions (default 500)")
    p.add_argument("--seed", type=int, default=31337, help="held-out simulator seed (default 31337)")
    p.add_argument("--min-pixels", type=int, default=30, help="pixels (three views together) for a photon to count as seen")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    p.add_argument("--no-hadronic", dest="hadronic", action="store_false",
                   help="simulate without hadronic interactions of pions and protons (the physics before simulator 0.5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sparseseg.checkpoint import load_model
    from sparseseg.classes import CVN_CLASSES
    from sparseseg.simulate import simulate_full
    from sparseseg.tasks.cvn import TOPOLOGY_CLASS, cvn_probabilities, cvn_views, neutrino_indices

    model, ckpt = load_model(args.weights, name="cvn")
    model.eval()
    preset = (ckpt["config"].get("data") or {}).get("simulate") or "crop512"
    size = 500
    rows: dict[str, list[int]] = {}
    gaps: dict[str, list[float]] = {}
    per_pred: dict[tuple[int, int], list[dict]] = {}
    for index in tqdm(neutrino_indices(args.n, args.seed, preset=preset), desc="interactions", file=sys.stderr):
        events, truth = simulate_full(preset, args.seed, index, hadronic=args.hadronic)
        x = cvn_views(events, size)[None]
        pred = int(cvn_probabilities(model, x).argmax(1)[0])
        info = photon_groups(truth, events, size, args.min_pixels)
        label = TOPOLOGY_CLASS[truth.topology]
        if label == 2:
            group = nc_group(info)
            seen = sorted((q for q in info["photons"] if q["seen"]), key=lambda q: -q["pixels"])
            if seen:
                gaps.setdefault(group, []).append(seen[0]["gap_cm"])
        elif label == 1:
            group = "nu_e CC"
        else:
            group = "nu_mu CC"
        rows.setdefault(group, [0, 0, 0])[pred] += 1
        if label in (1, 2):
            seen = sorted((q["pixels"] for q in info["photons"]), reverse=True)
            lead = max(info["photons"], key=lambda q: q["pixels"]) if info["photons"] else None
            per_pred.setdefault((label, pred), []).append({
                "gap": lead["gap_cm"] if lead else float("nan"),
                "ratio": seen[1] / seen[0] if len(seen) > 1 and seen[0] > 0 else 0.0,
                "electron": info["electron_pixels"],
                "pion": bool(np.any((np.abs(truth.track_pdg) == 211) & ~truth.track_cosmic)),
            })

    order = ["nu_mu CC", "nu_e CC", "NC, two photon showers seen", "NC, one photon shower seen", "NC, no photon shower seen"]
    print(f"{args.n} held-out {preset} interactions (seed {args.seed}), weights {args.weights}; "
          f"a photon is seen with >= {args.min_pixels} pixels in the three views\n")
    print("| group | interactions | -> " + " | -> ".join(CVN_CLASSES) + " | leading photon gap (median cm) |")
    print("|---|---:|" + "---:|" * len(CVN_CLASSES) + "---:|")
    table = {}
    for g in order:
        if g not in rows:
            continue
        r = rows[g]
        tot = sum(r)
        gap = float(np.nanmedian(gaps[g])) if gaps.get(g) else float("nan")
        table[g] = {"n": tot, "predicted": dict(zip(CVN_CLASSES, r)), "leading_gap_cm_median": gap}
        cells = " | ".join(f"{c} ({c / tot:.2f})" for c in r)
        print(f"| {g} | {tot} | {cells} | {'' if np.isnan(gap) else f'{gap:.1f}'} |")
    print("\nBy the network's answer (medians):\n")
    print("| truth -> prediction | interactions | leading photon gap (cm) | gap < 3 cm | 2nd / 1st photon pixels | electron pixels | with a pi+- |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    answers = {}
    for (label, pred), items in sorted(per_pred.items()):
        key = f"{CVN_CLASSES[label]} -> {CVN_CLASSES[pred]}"
        g = np.array([i["gap"] for i in items])
        med = {"n": len(items),
               "gap_cm": float(np.nanmedian(g)) if np.isfinite(g).any() else float("nan"),
               "gap_below_3cm": float(np.mean(g[np.isfinite(g)] < 3.0)) if np.isfinite(g).any() else float("nan"),
               "photon_ratio": float(np.median([i["ratio"] for i in items])),
               "electron_pixels": float(np.median([i["electron"] for i in items])),
               "with_pion": float(np.mean([i["pion"] for i in items]))}
        answers[key] = med
        if label == 2:
            print(f"| {key} | {med['n']} | {med['gap_cm']:.1f} | {med['gap_below_3cm']:.2f} | {med['photon_ratio']:.2f} | | {med['with_pion']:.2f} |")
        else:
            print(f"| {key} | {med['n']} | | | | {med['electron_pixels']:.0f} | {med['with_pion']:.2f} |")
    if args.json:
        from sparseseg.atomic import write_text

        write_text(args.json, json.dumps({"n": args.n, "seed": args.seed, "min_pixels": args.min_pixels, "groups": table, "by_answer": answers}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
