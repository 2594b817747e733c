"""Training speed on 512 x 512 simulated views: images/s and time per step (data, forward, backward).

    python scripts/bench_train.py [--steps 30] [--batch 8] [--threads 2] [--precision fp32|bf16]

bf16 runs the forward pass under torch.autocast (as train.precision: bf16 does).
"""
import argparse
import time

import numpy as np
import torch

from sparseseg.losses import weighted_cross_entropy
from sparseseg.models import build_model
from sparseseg.simulate import simulate_interaction
from sparseseg.weighting import WeightConfig, pixel_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("uresnet", dim=2, depth=args.depth, filters=args.filters)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wcfg = WeightConfig()
    t_data, t_fwd, t_bwd, pixels = [], [], [], []
    k = 0
    for step in range(args.steps + 3):
        tic = time.perf_counter()
        events = []
        while len(events) < args.batch:
            events += simulate_interaction("crop512", 123, k)
            k += 1
        events = events[: args.batch]
        w = torch.from_numpy(pixel_weights(events, wcfg))
        labels = torch.from_numpy(np.concatenate([e.labels for e in events]).astype(np.int64))
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(events)
        loss = weighted_cross_entropy(logits.float(), labels, w)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if step >= 3:  # warm-up
            t_data.append(t1 - tic)
            t_fwd.append(t2 - t1)
            t_bwd.append(t3 - t2)
            pixels.append(sum(len(e) for e in events))
    step_s = np.mean(t_fwd) + np.mean(t_bwd)
    print(f"UResNet depth {args.depth}, {args.filters} filters, batch {args.batch} x 512 x 512, {args.threads} threads, "
          f"{args.precision}")
    print(f"  active pixels per batch: {np.mean(pixels):.0f}")
    print(f"  data (simulate + weights): {1000 * np.mean(t_data):7.1f} ms/step")
    print(f"  forward:                   {1000 * np.mean(t_fwd):7.1f} ms/step")
    print(f"  backward + optimizer:      {1000 * np.mean(t_bwd):7.1f} ms/step")
    print(f"  training throughput: {args.batch / step_s:.1f} images/s (model only), "
          f"{args.batch / (step_s + np.mean(t_data)):.1f} images/s with data in the same process")


if __name__ == "__main__":
    main()
