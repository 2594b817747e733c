"""Speed and occupancy of the built-in simulator.

Usage: python scripts/bench_simulate.py [--n-uboone 10] [--n-crop 100] [--n-pilarnet 50] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sparseseg.simulate import simulate


def _time(preset: str, n: int, seed: int):
    t0 = time.perf_counter()
    events = list(simulate(preset, n, seed))
    return n / (time.perf_counter() - t0), events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-uboone", type=int, default=10)
    ap.add_argument("--n-crop", type=int, default=100)
    ap.add_argument("--n-pilarnet", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    list(simulate("crop512", 1, a.seed + 1000))  # warm-up: tables, imports

    rate, evs = _time("uboone", a.n_uboone, a.seed)
    print(f"uboone:   {rate:6.2f} interactions/s (3 planes each, single process, {a.n_uboone} interactions)")
    for plane in ("U", "V", "Y"):
        occ = np.array([e.occupancy for e in evs if e.plane == plane]) * 100
        n = np.array([len(e) for e in evs if e.plane == plane])
        print(f"  plane {plane}: occupancy mean {occ.mean():.3f} % (min {occ.min():.3f}, max {occ.max():.3f}), "
              f"mean {n.mean():.0f} pixels")
    noise = np.mean([np.mean(e.labels == 255) for e in evs]) * 100
    print(f"  kept pixels without truth (noise): {noise:.2f} %")

    rate, evs = _time("crop512", a.n_crop, a.seed)
    n = np.array([len(e) for e in evs])
    print(f"crop512:  {rate:6.1f} interactions/s ({1000 / rate:.1f} ms per interaction of 3 views), "
          f"mean {n.mean():.0f} pixels per view")

    rate, evs = _time("pilarnet", a.n_pilarnet, a.seed)
    n = np.array([len(e) for e in evs])
    print(f"pilarnet: {rate:6.1f} events/s, voxels per event median {np.median(n):.0f} "
          f"(min {n.min()}, max {n.max()})")


if __name__ == "__main__":
    main()
