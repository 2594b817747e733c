"""Training-recipe ablation of the 2D UResNet at equal compute: which pixel weighting (and which
precision) reaches the best held-out accuracy for the same number of training images.

    python scripts/recipe_ablation.py                                  # every variant, one after another
    python scripts/recipe_ablation.py --variants plain,class           # some of them (run two lists in parallel)
    python scripts/recipe_ablation.py --report                         # the table of what has finished

Each variant is ``configs/uresnet2d.yaml`` at the depth of the ablation's table (5 levels, no
weight average) trained from scratch (``train.init`` off, lr 1e-3 cosine) for ``--steps`` steps
of 8 views on the same simulated stream (seed 7), with only the
``weights`` section (or ``train.precision``) changed; the final weights are validated on 400
views (seed 1001) and scored on held-out uboone interactions (``--heldout`` of them, seed 31337)
by ``scripts/heldout_eval.py``'s code path. Runs live under ``--out`` (default
``runs/ablation``) and resume: a finished variant is not trained again, an interrupted one
continues from its checkpoint. The table is written to ``<out>/ablation.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from sparseseg.weighting import DEFAULT_CLASS_VALUES

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "uresnet2d.yaml"

NO_WEIGHTS = {"cluster": False, "vertex": False, "class_mode": "none", "class_values": None}
SHIPPED_CLASS = {"class_mode": "const", "class_values": list(DEFAULT_CLASS_VALUES)}
VARIANTS: dict[str, tuple[str, dict]] = {
    "plain": ("plain cross-entropy", {"weights": NO_WEIGHTS}),
    "class": ("constant class weights (HIP 1.5, delta 1.5, Michel 3)",
              {"weights": {**NO_WEIGHTS, **SHIPPED_CLASS}}),
    "class_vertex": ("class weights + vertex boost x2 (the shipped recipe)",
                     {"weights": {**NO_WEIGHTS, **SHIPPED_CLASS, "vertex": True, "vertex_boost": 2.0}}),
    "class_vertex_cluster": ("class + vertex + cluster (1/N) weights",
                             {"weights": {**NO_WEIGHTS, **SHIPPED_CLASS, "vertex": True, "vertex_boost": 2.0,
                                          "cluster": True}}),
    "sqrt_vertex_cluster": ("batch inverse-sqrt class frequency + vertex x5 + cluster (the package default before sparseseg 0.4.1)",
                            {"weights": {"cluster": True, "vertex": True, "vertex_boost": 5.0, "class_mode": "sqrt",
                                         "class_values": None}}),
    "class_vertex_fp32": ("the shipped recipe, trained in fp32 (the others: bf16 where the CPU has it)",
                          {"weights": {**NO_WEIGHTS, **SHIPPED_CLASS, "vertex": True, "vertex_boost": 2.0},
                           "train": {"precision": "fp32"}}),
}


def variant_config(name: str, steps: int) -> dict:
    cfg = yaml.safe_load(BASE.read_text())
    cfg["train"].update({"init": None, "lr": 1.0e-3, "max_steps": steps, "val_every": steps, "threads": 1,
                         "checkpoint_every": 250, "precision": "auto", "ema": 0.0})
    cfg["data"].update({"val_images": 400, "seed": 7})
    cfg["model"].update({"depth": 5})  # the network the table was measured with (the shipped one has 6 levels)
    for section, values in VARIANTS[name][1].items():
        cfg[section].update(values)
    return cfg


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")


def train_and_score(name: str, out: Path, steps: int, heldout: int) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    metrics = d / "heldout" / "metrics.json"
    if metrics.exists():
        print(f"{name}: done")
        return
    cfg_path = d / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(variant_config(name, steps), sort_keys=False))
    log = d / "log.txt"
    best = d / "run" / "best.pt"
    if not best.exists():
        t0 = time.time()
        resume = ["--resume"] if (d / "run" / "checkpoint.pt").exists() else []
        print(f"{name}: training {steps} steps ({VARIANTS[name][0]})", flush=True)
        run([sys.executable, "-m", "sparseseg.cli", "train", "--config", str(cfg_path), "--out", str(d / "run"),
             "--threads", "1", "-q", *resume], log)
        (d / "train_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    print(f"{name}: held-out evaluation", flush=True)
    run([sys.executable, str(ROOT / "scripts" / "heldout_eval.py"), "--weights", str(best), "-n", str(heldout),
         "--out", str(d / "heldout"), "--cache", str(out / f"heldout-uboone-seed31337-n{heldout}.h5")], log)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(out: Path) -> str:
    rows, table = [], ["| variant | weighting | precision | train min | val acc (400 views) | held-out 5-class | "
                       "track/shower | HIP | MIP | shower | delta | Michel (eff / pur) |",
                       "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (label, _) in VARIANTS.items():
        d = out / name
        m = d / "heldout" / "metrics.json"
        if not m.exists():
            continue
        scored = json.loads(m.read_text())
        s = scored["summary"]
        val = [json.loads(line) for line in (d / "run" / "metrics.jsonl").read_text().splitlines()
               if '"val_accuracy"' in line]
        vacc = val[-1]["val_accuracy"] if val else None
        tsec = float((d / "train_seconds.txt").read_text()) if (d / "train_seconds.txt").exists() else None
        prec = scored["precision"]
        train_prec = torch.load(d / "run" / "best.pt", map_location="cpu", weights_only=False).get("precision", "?")
        eff = " | ".join(f"{_f(s['efficiency'][c])} / {_f(s['purity'][c])}"
                         for c in ("HIP", "MIP", "shower", "delta", "Michel"))
        table.append(f"| {name} | {label} | {train_prec} | {'-' if tsec is None else f'{tsec / 60:.0f}'} | "
                     f"{'-' if vacc is None else f'{vacc:.4f}'} | {s['accuracy']:.4f} | "
                     f"{s['track_shower_accuracy']:.4f} | {eff} |")
        rows.append({"variant": name, "label": label, "train_precision": train_prec, "predict_precision": prec,
                     "train_seconds": tsec, "val_accuracy": vacc, "heldout": s})
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    text = "\n".join(table) + "\n"
    (out / "ablation.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=1500, help="training steps of 8 views per variant (default 1500)")
    p.add_argument("--heldout", type=int, default=200, help="held-out uboone interactions (default 200)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--report", action="store_true", help="only print the table of finished variants")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not args.report:
        for name in names:
            train_and_score(name, out, args.steps, args.heldout)
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
