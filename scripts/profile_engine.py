"""Where the sparse UResNet's inference time goes, and how far its GEMMs are from the machine.

    python scripts/profile_engine.py [--precision auto|fp32|bf16] [--threads 2] [--graph]

On the benchmark's 3-plane uboone event with the shipped 2D weights, prints:
- a torch.profiler table of the operators (self CPU time, one forward after a warm-up);
- FLOPs: useful (neighbour pairs x C_in x C_out x 2, as the rulebook count) and as computed
  (the dense neighbour tables include missing neighbours, multiplied as zero rows);
- the GEMMs' own rate against torch.mm on the same shapes and on 2048^2 matrices.
``--graph`` profiles the training graph instead (spconv rulebooks, per-offset GEMMs).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--graph", action="store_true", help="profile the training graph instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from torch.profiler import profile

    from sparseseg.bench import sgemm_peak, uboone_event
    from sparseseg.checkpoint import load_model
    from sparseseg.models.sparse_infer import FastUResNet, cpu_has_bf16
    from sparseseg.models.uresnet import collate

    precision = ("bf16" if cpu_has_bf16() else "fp32") if args.precision == "auto" else args.precision
    model, _ = load_model("weights/uresnet2d.pt")
    model.eval()
    idx, feats, shape, _ = collate(uboone_event(), 2)
    if args.graph:
        precision = "fp32 (training graph)"
        run = lambda: model(idx, feats, shape)  # noqa: E731
    else:
        fast = FastUResNet(model, "bf16" if precision == "bf16" else "fp32")
        run = lambda: fast(idx, feats, shape)  # noqa: E731
    with torch.no_grad():
        run()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        with profile() as prof:
            run()
    total = statistics.median(times)
    print(f"3-plane uboone event ({idx.shape[0]} pixels), {precision}, {args.threads} threads: "
          f"{total * 1e3:.1f} ms median of 5")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.graph:
        return 0

    # FLOPs and GEMM shapes of one forward
    shapes: list[tuple[int, int, int]] = []
    real_mm = torch.mm
    # every GEMM the engine calls (addmm_: the convolutions that accumulate into their output)
    patched = [(torch, "mm"), (torch, "addmm"), (torch.Tensor, "addmm_")]
    originals = [getattr(owner, name) for owner, name in patched]

    def counted(f):
        def g(*args, **kw):  # the two matrices are the last positional arguments
            a, b = args[-2], args[-1]
            shapes.append((a.shape[0], a.shape[1], b.shape[1]))
            return f(*args, **kw)
        return g

    for (owner, name), f in zip(patched, originals):
        setattr(owner, name, counted(f))
    try:
        with torch.no_grad():
            run()
    finally:
        for (owner, name), f in zip(patched, originals):
            setattr(owner, name, f)
    useful = fast.count_flops(idx, feats, shape)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gemms = [s for s in shapes if s[1] > 4]  # leave out the 1-channel stem's tiny products
    computed = sum(2 * m * k * n for m, k, n in gemms)
    iso = 0.0
    for m, k, n in set(gemms):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        real_mm(a, b)
        t0 = time.perf_counter()
        for _ in range(5):
            real_mm(a, b)
        iso += (time.perf_counter() - t0) / 5 * gemms.count((m, k, n))
    peak = sgemm_peak(args.threads, dtype)
    print(f"FLOPs: useful {useful / 1e9:.2f} G (neighbour pairs), computed in GEMMs {computed / 1e9:.2f} G "
          f"({useful / computed:.0%} useful)")
    print(f"GEMMs alone, same shapes, isolated: {iso * 1e3:.1f} ms = {computed / iso / 1e9:.0f} GFLOP/s; "
          f"torch.mm 2048^2 {dtype}: {peak:.0f} GFLOP/s")
    print(f"whole forward: {useful / total / 1e9:.0f} GFLOP/s useful = {useful / total / 1e9 / peak:.0%} of the "
          f"2048^2 peak; the GEMMs are {iso / total:.0%} of the time, the rest is gathers, "
          f"element-wise work and neighbour tables")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
