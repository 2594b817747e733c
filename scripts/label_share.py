"""Are the segmentation errors in the label convention or in the model?

    python scripts/label_share.py --weights weights/uresnet2d.pt --preset uboone -n 20
    python scripts/label_share.py --weights weights/uresnet3d.pt --preset pilarnet -n 40

Where deposits of several classes share a pixel, the truth label follows a class priority
(HIP > MIP > shower > delta > Michel, `sparseseg.simulate.render.priority_key`), so a pixel can
be labelled MIP while most of its charge is a delta ray's. This script re-simulates held-out
interactions (seed 31337, label rule visible), records for every labelled pixel the share of its
charge that its truth class deposited, and prints the model's error rate in bins of that share,
the fraction of all errors (and of track/shower errors) in each bin, and the accuracy against
"majority-charge" labels (each pixel labelled by the class that deposited most of its charge).
If most errors sit on pixels whose class holds nearly all the charge, the errors are the
model's, not the label rule's.
"""
from __future__ import annotations

import argparse

import numpy as np

BINS = (0.0, 0.1, 0.25, 0.5, 0.8, 1.0 + 1e-9)


class ShareRecorder:
    """Wraps the simulator's pixel accumulation: for each rendered image, the sorted pixel
    indices, the charge share of each pixel's priority class and its majority-charge class."""

    def __init__(self, render):
        self.render, self.orig, self.images = render, render.accumulate_pixels, []

    def __enter__(self):
        def wrapped(lin, q, label, cluster, npix, direct=None, q_key=None):
            pix, ch, lab, clu = out = self.orig(lin, q, label, cluster, npix, direct, q_key)
            charge = np.asarray(q if q_key is None else q_key, np.float64)
            per = np.zeros((pix.size, 8))
            np.add.at(per, (np.searchsorted(pix, np.asarray(lin, np.int64)), np.minimum(np.asarray(label), 7)), charge)
            total = np.maximum(per[:, :5].sum(1), 1e-12)
            share = per[np.arange(pix.size), np.minimum(lab, 7)] / total
            self.images.append((pix, share, per[:, :5].argmax(1), lab.copy()))
            return out

        self.render.accumulate_pixels = wrapped
        return self

    def __exit__(self, *exc):
        self.render.accumulate_pixels = self.orig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--preset", default="uboone")
    p.add_argument("-n", type=int, default=20, help="interactions (default 20)")
    p.add_argument("--seed", type=int, default=31337)
    args = p.parse_args(argv)

    import torch

    from sparseseg.classes import to_track_shower
    from sparseseg.infer import Predictor
    from sparseseg.metrics import track_shower_matrix
    from sparseseg.simulate import render
    from sparseseg.simulate.generator import simulate_interaction

    torch.set_num_threads(1)
    pred = Predictor(weights=args.weights)
    count, err, ts_err = (np.zeros(len(BINS) - 1) for _ in range(3))
    conf, conf_major = np.zeros((5, 5), np.int64), np.zeros((5, 5), np.int64)
    with ShareRecorder(render) as rec:
        for i in range(args.n):
            rec.images.clear()
            events = simulate_interaction(args.preset, args.seed, i)
            for ev, (p_cls, _), (pix, share, major, plab) in zip(events, pred.predict(events), rec.images):
                lin = np.ravel_multi_index(tuple(ev.coords.T.astype(np.int64)), ev.shape)
                at = np.minimum(np.searchsorted(pix, lin), pix.size - 1)
                y = ev.labels.astype(np.int64)
                ok = (pix[at] == lin) & (y < 5)
                y, yp, at = y[ok], p_cls[ok].astype(np.int64), at[ok]
                folded = plab[at].astype(np.int64) != y  # relabelled by the visible rule: its own class
                sh = np.where(folded, 1.0, share[at])
                b = np.digitize(sh, BINS) - 1
                np.add.at(count, b, 1)
                np.add.at(err, b, yp != y)
                np.add.at(ts_err, b, to_track_shower(yp) != to_track_shower(y))
                np.add.at(conf, (y, yp), 1)
                np.add.at(conf_major, (np.where(folded, y, major[at]), yp), 1)
    total = count.sum()

    def ts_acc(cm):
        return np.trace(track_shower_matrix(cm)) / cm.sum()

    print(f"{args.n} {args.preset} interactions (seed {args.seed}), {int(total):,} labelled pixels, {args.weights}")
    print(f"accuracy {np.trace(conf) / total:.4f}, track/shower {ts_acc(conf):.4f} (priority labels); against "
          f"majority-charge labels {np.trace(conf_major) / total:.4f}, {ts_acc(conf_major):.4f}")
    print("| truth-class share of the pixel's charge | pixels | error rate | share of errors | share of track/shower errors |")
    print("|---|---:|---:|---:|---:|")
    for k in range(len(count)):
        print(f"| {BINS[k]:.2f}-{min(BINS[k + 1], 1.0):.2f} | {count[k] / total:.4f} | {err[k] / max(count[k], 1):.3f} | "
              f"{err[k] / max(err.sum(), 1):.3f} | {ts_err[k] / max(ts_err.sum(), 1):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
