"""Turn a training checkpoint into shipped weights: fp16 model weights, config, classes.

    python scripts/ship_weights.py runs/uresnet2d_ft/best.pt weights/uresnet2d.pt
    python scripts/ship_weights.py runs/uresnet3d/best.pt weights/uresnet3d.pt
    python scripts/ship_weights.py runs/uresnet2d/best.pt weights/uresnet2d.pt --class-bias 20
    python scripts/ship_weights.py runs/uresnet2d/checkpoint.pt weights/uresnet2d.pt --average --class-bias 20
    python scripts/ship_weights.py runs/uresnet3d/checkpoint.pt weights/uresnet3d.pt --average --class-bias 20 --bias-objective accuracy
    python scripts/ship_weights.py runs/uresnet3d_a/checkpoint.pt weights/uresnet3d.pt --average --soup runs/uresnet3d_b/checkpoint.pt
    python scripts/ship_weights.py runs/roi_mobilenetv2/best.pt weights/roi_mobilenetv2.pt
    python scripts/ship_weights.py runs/cvn/best.pt weights/cvn.pt --check-images 100

``--class-bias N`` chooses per-class log-score offsets (stored with the weights as
``class_bias`` and applied by ``predict``) on N tuning interactions of the full-size preset
(uboone for 2D, pilarnet for 3D) simulated with seed 4242, which no training, validation or
held-out set uses. They maximise the macro-averaged F1 (``--bias-objective macro-f1``, the
default), or the pixel accuracy with no class's purity pushed below min(0.8, its purity
without offsets) (``--bias-objective accuracy``; macro F1 can trade accuracy and purity for
the recall of rare classes).

``--soup CKPT ...`` ships the uniform average of the weights of the first checkpoint and of
these (each one's weight average with ``--average``): runs fine-tuned from the same weights
on different data streams, averaged ("model soup"); their model configs must agree.

The optimizer state is dropped and floating-point weights are stored as float16 (loaded back
as float32). The script checks what fp16 storage costs: it predicts a few simulated images
(dense models: samples of their task) with the original and the shipped weights and prints
the fraction of pixels (dense models: decisions) that agree (it refuses to write below
99.9 %), and the file sizes.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sparseseg import checkpoint
from sparseseg.simulate import simulate


def predict_classes(model, events) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model([e]).argmax(1).numpy() for e in events])


def dense_fp16_check(ckpt: dict, shipped: dict, path, n: int) -> float:
    """Fraction of decisions (signal mask at 0.5 for ROI networks, class for classifiers) that
    fp16 storage leaves unchanged, on ``n`` samples the model's task simulates with seed 777."""
    import copy

    from sparseseg.tasks import dense_task

    cfg = copy.deepcopy(ckpt["config"])
    cfg["data"].update(val_seed=777, val_images=max(1, n))
    x = dense_task(cfg).validation()[0]
    decisions = []
    for state in (ckpt, shipped):
        model = checkpoint.build_from(state, path).eval()
        with torch.no_grad():
            out = torch.cat([model(torch.from_numpy(x[i:i + 8])) for i in range(0, len(x), 8)])
        decisions.append((out > 0.5) if out.shape[1] == 1 else out.argmax(1))
    agree = float((decisions[0] == decisions[1]).float().mean())
    print(f"fp16 vs fp32 weights: decision agrees on {agree:.5%} of {decisions[0].numel()} outputs "
          f"({len(x)} samples, seed 777)")
    return agree


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="training checkpoint (checkpoint.pt or best.pt of a run)")
    p.add_argument("output", help="shipped weights file to write")
    p.add_argument("--check-images", type=int, default=6, help="simulated images for the fp16 check")
    p.add_argument("--class-bias", type=int, default=0, metavar="N",
                   help="choose per-class score offsets on N tuning interactions (seed 4242); 0: none")
    p.add_argument("--bias-objective", default="macro-f1", choices=["macro-f1", "accuracy"],
                   help="what --class-bias maximises: macro-f1 (default), or pixel accuracy with no class's "
                        "purity below min(0.8, its purity without offsets)")
    p.add_argument("--average", action="store_true",
                   help="ship the weight average (train.ema) that checkpoint.pt holds instead of its last weights")
    p.add_argument("--soup", nargs="+", default=[], metavar="CKPT",
                   help="average the weights of the checkpoint with these (same model config; --average applies to each)")
    args = p.parse_args(argv)

    ckpts = []
    for path in [args.checkpoint, *args.soup]:
        ckpt = checkpoint.load(path)
        if args.average:
            if "ema" not in ckpt:
                print(f"--average: {path} holds no weight average (train.ema was off, or it is a best.pt)",
                      file=sys.stderr)
                return 1
            ckpt = dict(ckpt, model=ckpt["ema"]["model"])
        if ckpts and ckpt["config"]["model"] != ckpts[0]["config"]["model"]:
            print(f"--soup: {path} has another model config than {args.checkpoint}", file=sys.stderr)
            return 1
        ckpts.append(ckpt)
    ckpt = ckpts[0]
    source = str(args.checkpoint) + (" (weight average)" if args.average else "")
    if args.soup:
        ckpt = dict(ckpt, model=checkpoint.average_states([c["model"] for c in ckpts]))
        source = " + ".join(map(str, [args.checkpoint, *args.soup])) + (", weight averages" if args.average else "") \
            + f", uniform soup of {len(ckpts)}"
    shipped = checkpoint.slim(ckpt, fp16=True, source=source)
    from sparseseg.tasks import dense_task

    if dense_task(ckpt["config"]) is not None:
        agree = dense_fp16_check(ckpt, shipped, args.checkpoint, args.check_images)
        dim = None
    else:
        full = checkpoint.build_from(ckpt, args.checkpoint)
        half = checkpoint.build_from(shipped, args.output)
        dim = full.config.dim
        preset = "crop512" if dim == 2 else "pilarnet"
        events = list(simulate(preset, max(1, args.check_images // (3 if dim == 2 else 1)), 777))[: args.check_images]
        a, b = predict_classes(full, events), predict_classes(half, events)
        agree = float((a == b).mean()) if len(a) else 1.0
        print(f"fp16 vs fp32 weights: predicted class agrees on {agree:.5%} of {len(a)} pixels "
              f"({len(events)} {preset} images, seed 777)")
    if agree < 0.999:
        print("refusing to ship: fp16 storage changes more than 0.1 % of predictions", file=sys.stderr)
        return 1
    if args.class_bias and dim is None:
        print("--class-bias applies to the segmentation models only", file=sys.stderr)
        return 1
    if args.class_bias:
        from sparseseg.infer import Predictor, choose_class_bias
        from sparseseg.simulate import simulate_interaction

        import tempfile

        with tempfile.TemporaryDirectory(prefix="ship-") as tmp:  # tuned on the weights as shipped (fp16)
            checkpoint.save(Path(tmp) / "w.pt", shipped)
            tuner = Predictor(weights=str(Path(tmp) / "w.pt"), use_class_bias=False)
            tuner.model(dim)
        full_preset = "uboone" if dim == 2 else "pilarnet"
        scores, labels = [], []
        for k in range(args.class_bias):
            evs = simulate_interaction(full_preset, 4242, k, label_rule=ckpt["config"]["data"].get("label_rule", "visible"))
            for ev, sc in zip(evs, tuner.scores(evs)):
                keep = ev.labels != 255
                scores.append(sc[keep])
                labels.append(ev.labels[keep].astype(np.int64))
        scores, labels = np.concatenate(scores), np.concatenate(labels)
        bias, value = choose_class_bias(scores, labels, objective=args.bias_objective)
        plain = float((scores.argmax(1) == labels).mean())
        biased = float(((np.log(np.maximum(scores, 1e-30)) + bias).argmax(1) == labels).mean())
        shipped["class_bias"] = [float(b) for b in bias]
        print(f"class_bias {np.round(bias, 2).tolist()} on {args.class_bias} {full_preset} interactions (seed 4242): "
              f"{args.bias_objective} {value:.4f}; accuracy {plain:.4f} -> {biased:.4f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out, shipped)
    print(f"wrote {out}: {os.path.getsize(out) / 1e6:.2f} MB (from {os.path.getsize(args.checkpoint) / 1e6:.2f} MB), "
          f"step {shipped['step']}")
    from sparseseg.registry import sha256

    print(f"sha256 {sha256(out)}: put it in sparseseg/registry.py and the model card, and update "
          "PINNED_PREDICTIONS in tests/test_regression.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
