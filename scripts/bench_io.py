"""Benchmark the HDF5 event format: write rate, file size and random-access read time.

Writes a file of N random 2D events (5-20k pixels each, MicroBooNE-sized 1008 x 3456 planes,
made of random line segments like tracks; pure numpy, no simulator) to a temporary directory
with each requested codec, then reads random events back.

    python scripts/bench_io.py                      # 10,000 events, gzip-1 and lzf
    python scripts/bench_io.py --events 2000 --codecs gzip1,gzip4,lzf,none

The read times are with the file in the page cache (it was just written).
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import numpy as np

from sparseseg import Event
from sparseseg.io import EventFile, write_events
from sparseseg.io import format as h5

SHAPE = (1008, 3456)


def make_event(rng: np.random.Generator, event_id: int) -> Event:
    """A random track-like event: line segments 3 px wide, with ADC, labels and cluster ids."""
    target = int(rng.integers(5000, 20001))
    lin_parts, lab_parts, clu_parts = [], [], []
    total = 0
    k = 0
    while total < target:
        length = int(rng.integers(50, 800))
        start = rng.uniform((0, 0), SHAPE)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.arange(length)[:, None]
        pts = start + t * np.array([np.sin(angle), np.cos(angle)])
        pts = np.concatenate([pts + (dr, 0) for dr in (-1, 0, 1)])
        pix = np.rint(pts).astype(np.int64)
        ok = (pix[:, 0] >= 0) & (pix[:, 0] < SHAPE[0]) & (pix[:, 1] >= 0) & (pix[:, 1] < SHAPE[1])
        lin = np.unique(pix[ok, 0] * SHAPE[1] + pix[ok, 1])
        lin_parts.append(lin)
        lab_parts.append(np.full(len(lin), rng.integers(0, 5), np.uint8))
        clu_parts.append(np.full(len(lin), k, np.int32))
        total += len(lin)
        k += 1
    lin = np.concatenate(lin_parts)
    lin, first = np.unique(lin, return_index=True)  # row-major order, like Event.from_dense
    n = len(lin)
    coords = np.stack(np.unravel_index(lin, SHAPE), axis=1).astype(np.int32)
    adc = np.clip(rng.gamma(4.0, 15.0, n), 10, 300).astype(np.float32)
    return Event(
        coords=coords,
        features=adc[:, None],
        shape=SHAPE,
        labels=np.concatenate(lab_parts)[first],
        clusters=np.concatenate(clu_parts)[first],
        vertices=rng.uniform(0, 1000, (2, 2)).astype(np.float32),
        meta={"plane": "Y", "event_id": event_id, "preset": "uboone"},
    )


CODECS = {"gzip1": ("gzip", 1), "gzip4": ("gzip", 4), "lzf": ("lzf", None), "none": (None, None)}


def bench(codec: str, pool: list[Event], n_events: int, n_reads: int, directory: str) -> dict:
    h5.COMPRESSION, h5.COMPRESSION_OPTS = CODECS[codec]
    path = os.path.join(directory, f"bench_{codec}.h5")

    def events():
        for i in range(n_events):
            ev = copy.copy(pool[i % len(pool)])  # shallow: shares the arrays, no re-validation
            ev.meta = {**ev.meta, "event_id": i}
            yield ev

    raw = sum(len(pool[i % len(pool)]) for i in range(n_events)) * (2 * 4 + 4 + 1 + 4)  # int32 coords
    t0 = time.perf_counter()
    write_events(path, events(), attrs={"preset": "uboone"})
    t_write = time.perf_counter() - t0
    size = os.path.getsize(path)

    rng = np.random.default_rng(1)
    out = dict(codec=codec, write_s=t_write, events_per_s=n_events / t_write, mb_per_s=raw / t_write / 1e6,
               size_mb=size / 1e6, raw_mb=raw / 1e6)
    t0 = time.perf_counter()
    f = EventFile(path)
    out["open_ms"] = (time.perf_counter() - t0) * 1e3
    f.close()
    for validate in (True, False):
        with EventFile(path, validate=validate) as f:
            idx = rng.integers(0, len(f), n_reads)
            f[0]
            times = np.empty(n_reads)
            for k, i in enumerate(idx):
                t0 = time.perf_counter()
                ev = f[int(i)]
                times[k] = time.perf_counter() - t0
                assert ev.meta["event_id"] == i
        key = "read" if validate else "read_novalidate"
        out[f"{key}_mean_ms"] = times.mean() * 1e3
        out[f"{key}_p95_ms"] = np.percentile(times, 95) * 1e3
    os.unlink(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=64, help="distinct random events, cycled")
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--codecs", default="gzip1,lzf")
    ap.add_argument("--dir", default=None, help="directory for the temporary file (default: system temp)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    pool = [make_event(rng, i) for i in range(args.pool)]
    npix = np.array([len(e) for e in pool])
    print(f"{args.events} events, D=2, {SHAPE[0]}x{SHAPE[1]}; pixels/event mean {npix.mean():.0f} "
          f"(min {npix.min()}, max {npix.max()}); {args.pool} distinct events cycled")
    header = (f"{'codec':6} {'write s':>8} {'events/s':>9} {'MB/s':>7} {'size MB':>8} {'raw MB':>8} "
              f"{'open ms':>8} {'read ms':>8} {'p95 ms':>7} {'noval ms':>9} {'p95 ms':>7}")
    print(header)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for codec in args.codecs.split(","):
            r = bench(codec.strip(), pool, args.events, args.reads, d)
            print(f"{r['codec']:6} {r['write_s']:8.1f} {r['events_per_s']:9.0f} {r['mb_per_s']:7.0f} "
                  f"{r['size_mb']:8.0f} {r['raw_mb']:8.0f} {r['open_ms']:8.1f} {r['read_mean_ms']:8.2f} "
                  f"{r['read_p95_ms']:7.2f} {r['read_novalidate_mean_ms']:9.2f} {r['read_novalidate_p95_ms']:7.2f}",
                  flush=True)
    print("MB/s: uncompressed bytes (int32 coords, float32 ADC, uint8 label, int32 cluster) per second; "
          "read ms: mean random-access EventFile[i] (page cache warm); noval: EventFile(path, validate=False)")


if __name__ == "__main__":
    main()
