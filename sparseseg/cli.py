"""The ``sparseseg`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .atomic import write_text

DESCRIPTION = """\
sparseseg: semantic segmentation of liquid-argon TPC images on CPU.

Every pixel with ADC >= 10 of a wire-plane image (or voxel of a 3D volume) is labelled
HIP, MIP, shower, delta or Michel by a submanifold sparse UResNet, on full MicroBooNE-size
images (1008 x 2400/2400/3456) without cropping.

typical session:
  sparseseg simulate --preset uboone -n 10 --seed 7 -o events.h5   # make events
  sparseseg info events.h5                                         # what is in a file
  sparseseg predict events.h5 -o pred.h5                           # segment (shipped weights)
  sparseseg evaluate pred.h5 --json metrics.json --plot cm.png     # confusion matrices
  sparseseg show events.h5 --pred pred.h5 --event 0 -o ev.png      # event display
  sparseseg train --config configs/uresnet2d.yaml --out runs/2d    # train your own
  sparseseg demo                                                   # all of the above, small

Run `sparseseg COMMAND --help` for the options of a command. Errors in the input exit with
status 2 and a one-line message; a failure inside sparseseg itself (a bug) says so and exits
with status 70. Add --debug to see the Python traceback.
"""


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is a --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


OUTPUT_FILES = {
    "evaluate": (("--json", "json"), ("--plot", "plot")),
    "export": (("-o", "output"),),
    "robustness": (("--json", "json"), ("--markdown", "markdown")),
    "bench": (("--json", "json"), ("--markdown", "markdown"), ("--plot", "plot")),
}
"""File options per command, checked before the command starts (simulate and predict check
their outputs when they open them; show checks its -o itself, which may be a folder)."""


def _check_output_file(option: str, path: str) -> None:
    """A file can be written at ``path``: not a folder, in an existing, writable folder."""
    p = Path(path)
    if p.is_dir() or path.endswith(("/", os.sep)):
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) and not (p.exists() and os.access(p, os.W_OK)):
        raise UsageError(f"{option} {path}: folder {parent} is not writable (read-only or no permission)")


def check_arguments(args) -> None:
    """Checks of options shared by several commands, made before any work starts."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 0:
        raise UsageError(f"--threads {threads}: must be at least 1, or 0 for torch's default")
    if getattr(args, "device", None) is not None:
        from .devices import check_device

        check_device(args.device)
    seed = getattr(args, "seed", None)
    from .config import SEED_MAX

    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed {seed}: must be an integer from 0 to 2**63 - 1")
    for option, dest in OUTPUT_FILES.get(args.command, ()):
        path = getattr(args, dest, None)
        if isinstance(path, str) and path:
            _check_output_file(option, path)


# --------------------------------------------------------------------------- commands
class Stopped(BaseException):
    """Raised by the signal handler of a writing command (SIGTERM, SIGINT, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.output: str | None = None


@contextmanager
def _stop_on_signals():
    """Turn SIGTERM/SIGINT/SIGHUP into :class:`Stopped`, raised outside a writer's segment write."""
    import signal

    from .io.writer import when_safe

    got: list[int] = []

    def handler(signum, frame):
        if got:
            return  # cleanup after the first signal is not interrupted again

        def stop():
            raise Stopped(signum)

        got.append(signum)
        when_safe(stop)

    sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _tracking_output(output: str):
    """Context manager: a :class:`Stopped` raised inside is tagged with ``output``."""

    @contextmanager
    def cm():
        try:
            yield
        except Stopped as stop:
            stop.output = stop.output or output
            raise

    return cm()


def cmd_simulate(args) -> None:
    with _stop_on_signals():
        _simulate(args)


def _simulate(args) -> None:
    from tqdm import tqdm

    from . import __version__
    from .io import EventWriter
    from .simulate import PRESETS, simulate

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.n < 1:
        raise UsageError(f"-n must be at least 1, got {args.n}")
    if args.start < 0:
        raise UsageError(f"--start must be at least 0, got {args.start}")
    per = 1 if args.preset == "pilarnet" else 3
    from .event import ADC_MAX, ADC_MIN
    from .simulate import SIMULATOR_VERSION

    attrs = {"preset": args.preset, "seed": args.seed, "label_rule": args.label_rule,
             "simulator_version": SIMULATOR_VERSION, "sparseseg_version": __version__, "command": command_line(args)}
    if args.preset == "pilarnet":
        from .simulate.render import VOXEL_MEV

        attrs.update(feature_units="MeV", threshold_mev=round(ADC_MIN * VOXEL_MEV, 4))
    else:
        attrs.update(feature_units="ADC", adc_min=ADC_MIN, adc_max=ADC_MAX)
    identity = {"command": "simulate", "preset": args.preset, "seed": args.seed, "start": args.start, "n": args.n,
                "label_rule": args.label_rule, "sparseseg": __version__, "simulator_version": SIMULATOR_VERSION}
    attrs["hadronic"] = identity["hadronic"] = args.hadronic
    t0 = time.perf_counter()
    with _tracking_output(args.output):
        with EventWriter(args.output, attrs=attrs, resume=not args.restart, identity=identity) as writer:
            done_interactions, skip = divmod(writer.n_done, per)
            left = args.n - done_interactions
            bar = tqdm(total=args.n * per, initial=writer.n_done, desc=f"simulate {args.preset}", unit="image",
                       disable=args.quiet)
            if left > 0:
                stream = simulate(args.preset, left, args.seed, start=args.start + done_interactions,
                                  label_rule=args.label_rule, hadronic=args.hadronic)
                for k, ev in enumerate(stream):
                    if k < skip:
                        continue
                    writer.append(ev)
                    bar.update(1)
            bar.close()
            resumed = writer.n_done
    dt = time.perf_counter() - t0
    note = f" (resumed after {resumed} images)" if resumed else ""
    print(f"wrote {args.n} {args.preset} interaction(s) ({args.n * per} images) to {args.output}{note} in {dt:.1f} s")


def file_info(path: str) -> dict:
    import numpy as np

    from .classes import CLASS_NAMES, IGNORE
    from .io import open_event_file

    with open_event_file(path) as f:
        n = len(f)
        planes: dict[str, dict] = {}
        counts = np.zeros(len(CLASS_NAMES) + 1, dtype=np.int64)
        has_labels = False
        for i in range(n):
            ev = f[i]
            p = planes.setdefault(ev.plane, {"images": 0, "pixels": 0, "occupancy": 0.0, "shape": list(ev.shape)})
            p["images"] += 1
            p["pixels"] += len(ev)
            p["occupancy"] += ev.occupancy
            if ev.labels is not None:
                has_labels = True
                lab = ev.labels.astype(np.int64)
                lab[lab == IGNORE] = len(CLASS_NAMES)
                counts += np.bincount(lab, minlength=len(CLASS_NAMES) + 1)
        for p in planes.values():
            p["mean_pixels"] = p["pixels"] / max(1, p["images"])
            p["occupancy"] = p["occupancy"] / max(1, p["images"])
        info = {"file": str(path), "format": f.attrs.get("format"), "images": n,
                "events": len(set(f.event_ids.tolist())), "dim": f.D,
                "planes": planes, "attrs": {k: v for k, v in f.attrs.items() if isinstance(v, (int, float, str))}}
        if has_labels:
            total = max(1, counts.sum())
            info["class_fractions"] = {name: counts[c] / total for c, name in enumerate(CLASS_NAMES)}
            info["class_fractions"]["no truth (255)"] = counts[-1] / total
    return info


def cmd_info(args) -> None:
    info = file_info(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=float))
        return
    kind = " (PILArNet-M file, features in MeV)" if info["format"] == "pilarnet-m" else ""
    print(f"{info['file']}: {info['images']} images from {info['events']} events, {info['dim']}D{kind}")
    for name, p in info["planes"].items():
        shape = " x ".join(str(s) for s in p["shape"])
        print(f"  plane {name:>2}: {p['images']:6d} images of {shape}, {p['mean_pixels']:9.0f} pixels each, "
              f"occupancy {100 * p['occupancy']:.3f} %")
    if "class_fractions" in info:
        print("  class fractions: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in info["class_fractions"].items()))
    shown = [(label, info["attrs"][key]) for key, label in PROVENANCE if info["attrs"].get(key) not in (None, "")]
    if shown:
        print("  provenance:")
        for label, value in shown:
            print(f"    {label:18s} {value}")


PROVENANCE = (("command", "command"), ("sparseseg_version", "sparseseg"), ("simulator_version", "simulator"),
              ("preset", "preset"), ("seed", "seed"), ("label_rule", "label rule"), ("weights_name", "weights"),
              ("weights_file", "weights file"), ("weights_sha256", "weights sha256"), ("precision", "precision"),
              ("flips", "mirror average"),
              ("min_scores", "min scores"), ("class_bias", "class bias"), ("input_file", "input"),
              ("input_sha256", "input identity"), ("source_format", "input format"))
"""Provenance attributes that ``info`` prints, with their labels (docs/file_format.md)."""


def _interaction_images(f, index: int):
    """The images (planes) of file entry group ``index``: entries sharing an event id, in file order."""
    ids = f.event_ids
    unique = list(dict.fromkeys(ids.tolist()))
    if not -len(unique) <= index < len(unique):
        raise UsageError(f"{f.path}: --event {index} is out of range (the file holds {len(unique)} events)")
    eid = unique[index]
    rows = [i for i, e in enumerate(ids.tolist()) if e == eid]
    return eid, rows


def cmd_show(args) -> None:
    """Event display of one event: a PNG (matplotlib; also .pdf, .svg) or, for .html, one
    self-contained interactive page (plotly). A folder as -o receives event<ID>.png."""
    from .io import EventFile, open_event_file
    from .plots import display_title, event_display

    target = args.output or ""
    to_folder = bool(target) and (os.path.isdir(target) or target.endswith(("/", os.sep)))
    if to_folder:
        if not os.path.isdir(target):
            raise UsageError(f"-o {target}: folder {target.rstrip('/' + os.sep) or os.sep} does not exist")
    elif target:
        ext = os.path.splitext(target)[1].lower()
        if ext not in (".png", ".pdf", ".svg", ".html", ".htm"):
            raise UsageError(f"-o {target}: unknown display format {ext or '(no extension)'}; "
                             "give a .png, .pdf, .svg or .html file, or a folder")
        _check_output_file("-o", target)
    html = target.lower().endswith((".html", ".htm"))

    with open_event_file(args.file) as f:  # sparseseg or PILArNet-M
        eid, rows = _interaction_images(f, args.event)
        events = [f[i] for i in rows]
        preds = scores = None
        if args.pred:
            with EventFile(args.pred) as p:
                if "pred" not in p.extra_names:
                    raise UsageError(f"{args.pred}: holds no predictions (no 'pred' dataset); make it with `sparseseg predict`")
                from .event import plane_name

                pos = {(e, plane_name(str(pl) or None, p.D)): i
                       for i, (e, pl) in enumerate(zip(p.event_ids.tolist(), p.planes.tolist()))}
                preds = []
                scores = [] if html and "scores" in p.extra_names else None
                for ev in events:
                    key = (ev.meta.get("event_id"), ev.plane)
                    if key not in pos:
                        raise UsageError(f"{args.pred}: no prediction for event {key[0]} plane {key[1]}")
                    preds.append(p.read_extra(pos[key], "pred"))
                    if scores is not None:
                        scores.append(p.read_extra(pos[key], "scores"))
    out = target if target and not to_folder else os.path.join(target, f"event{eid}.png")
    if to_folder:
        _check_output_file("-o", out)
    title = display_title(events[0].meta, source=Path(args.file).name)
    if html:
        from .display_html import event_display_html

        event_display_html(events, preds, out, title=title, scores=scores)
    else:
        event_display(events, preds, out, title=title)
    print(f"wrote {out}")


def cmd_train(args) -> None:
    from . import config as config_mod
    from .train import train

    cfg = config_mod.load(args.config)
    if args.threads is not None:
        cfg["train"]["threads"] = args.threads
    if args.device is not None:
        cfg["train"]["device"] = args.device
    if args.data_seed is not None:
        if not cfg["data"].get("simulate"):
            raise UsageError(f"--data-seed {args.data_seed}: {args.config} trains on files (data.train), not on "
                             "simulated views; the seed of a simulated stream only applies with data.simulate")
        if args.data_seed < 0:
            raise UsageError(f"--data-seed {args.data_seed}: must be >= 0")
        cfg["data"]["seed"] = args.data_seed
    out = args.out or os.path.join("runs", Path(args.config).stem)
    result = train(cfg, out, resume=args.resume, max_steps=args.max_steps, progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        val = result.get("val") or {}
        acc = val.get("accuracy")
        print(f"done at step {result['step']}; validation accuracy {acc:.4f}" if acc is not None else f"done at step {result['step']}")
        print(f"checkpoint: {out}/checkpoint.pt  best: {out}/best.pt  log: {out}/metrics.jsonl")


def cmd_predict(args) -> None:
    with _stop_on_signals():
        _predict(args)


def _predict(args) -> None:
    from .infer import Predictor, output_paths, parse_min_scores, parse_planes, parse_shard, predict_file

    if args.threads:
        torch_threads(args.threads)
    planes = parse_planes(args.planes)
    pairs = output_paths(args.inputs, args.output, parse_shard(args.shard))
    predictor = Predictor(weights=args.weights, device=args.device, min_scores=parse_min_scores(args.min_score),
                          precision=args.precision, model_name=args.model, flips=args.flips)

    def warn(message: str) -> None:
        print(f"sparseseg predict: warning: {' '.join(message.split())}", file=sys.stderr)

    for inp, out in pairs:
        with _tracking_output(out):
            r = predict_file(inp, out, predictor, progress=not args.quiet, restart=args.restart, warn=warn,
                             command=command_line(args), planes=planes)
        note = f" (resumed after {r['resumed_from']} images)" if r["resumed_from"] else ""
        if planes is not None:
            note = f" of planes {','.join(r['planes'])}{note}, skipped {r['skipped']} images of other planes"
        clipped = f", {r['clipped']} feature values clipped to {r['clip']:g}" if r["clipped"] else ""
        print(f"{inp} -> {out}: {r['images']} images{note}{clipped}, {r['time_per_event_s']:.3f} s per event, "
              f"peak memory {r['peak_rss_mb']:.0f} MB")
    if not pairs:
        print("nothing to do: no input file falls in this shard")


def command_line(args) -> str:
    """The command line of this run, as recorded in the outputs' provenance."""
    import shlex

    argv = getattr(args, "argv", None)
    return "sparseseg " + shlex.join(argv if argv is not None else sys.argv[1:])


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


PER_EVENT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
"""``evaluate --per-event`` file formats, by file extension."""


def _dim_plot_path(path: str, label: str) -> str:
    """``cm.png`` -> ``cm.2D.png``: the heatmap of one dimension when the inputs hold two."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.{label}{p.suffix or '.png'}"))


class _PerEventWriter:
    """Rows of ``evaluate --per-event`` as CSV or JSON lines, written to a temp file in the
    target's folder and renamed over the target when complete (never a half-written file)."""

    def __init__(self, path: str, fmt: str) -> None:
        from .atomic import temp_file
        from .classes import CLASS_NAMES

        self.path, self.fmt, self.rows = path, fmt, 0
        fd, self.tmp = temp_file(path)
        self.fh = os.fdopen(fd, "w", newline="")
        self.fields = ["file", "entry", "event_id", "plane", "dim", "pixels", "scored_pixels", "accuracy",
                       "track_shower_accuracy"] + [f"efficiency_{n}" for n in CLASS_NAMES]
        if fmt == "csv":
            import csv

            self.csv = csv.DictWriter(self.fh, fieldnames=self.fields, extrasaction="raise")
            self.csv.writeheader()

    def __call__(self, row: dict) -> None:
        if self.fmt == "csv":
            self.csv.writerow(row)
        else:
            self.fh.write(json.dumps(row) + "\n")
        self.rows += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def cmd_evaluate(args) -> None:
    from contextlib import nullcontext

    from .infer import evaluate, parse_planes, same_path
    from .metrics import format_table

    planes = parse_planes(args.planes)
    outputs = [(o, t) for o, t in (("--json", args.json), ("--plot", args.plot), ("--per-event", args.per_event)) if t]
    for option, target in outputs:
        _check_output_file(option, target)
        for inp in args.inputs:
            if same_path(inp, target):
                raise UsageError(f"{option} {target}: is the input file {inp}; choose another name")
    for k, (o1, t1) in enumerate(outputs):
        for o2, t2 in outputs[k + 1:]:
            if same_path(t1, t2):
                raise UsageError(f"{o1} and {o2} are the same file {t1}; give two names")
    fmt = None
    if args.per_event:
        fmt = PER_EVENT_FORMATS.get(Path(args.per_event).suffix.lower())
        if fmt is None:
            raise UsageError(f"--per-event {args.per_event}: unknown format; name the file "
                             f"{' or '.join('*' + e for e in PER_EVENT_FORMATS)}")
    with (_PerEventWriter(args.per_event, fmt) if fmt else nullcontext()) as rows:
        result = evaluate(args.inputs, planes=planes, per_image=rows)
    summary = result.summary()
    labelled = {f"{d}D": acc for d, acc in sorted(result.by_dim.items())}
    if planes is not None:
        for part in ([summary] if len(labelled) == 1 else list(summary.values())):
            part["planes"] = list(planes)
    if len(labelled) == 1:
        print(format_table(summary))
    else:
        print("\n\n".join(f"{label}: {acc.events} images\n{format_table(summary[label])}"
                           for label, acc in labelled.items()))
    if planes is not None:
        what = f"skipped {result.skipped} images of planes {', '.join(result.skipped_planes)}" if result.skipped \
            else "no image of another plane"
        print(f"scored planes {', '.join(planes)} only; {what}")
    if rows is not None:
        print(f"wrote {rows.rows} per-image rows to {args.per_event}")
    if args.json:
        write_text(args.json, json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from .plots import confusion_heatmap

        title = ", ".join(Path(p).name for p in args.inputs)
        for label, acc in labelled.items():
            target = args.plot if len(labelled) == 1 else _dim_plot_path(args.plot, label)
            confusion_heatmap(acc.matrix, target, title=title if len(labelled) == 1 else f"{title} ({label})")
            print(f"wrote {target}")


def cmd_demo(args) -> None:
    from .heldout import predict_and_score, simulated_file
    from .infer import DEFAULT_WEIGHTS, Predictor
    from .io import EventFile
    from .metrics import format_table
    from .plots import confusion_heatmap, event_display

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch_threads(args.threads)
    events_path, pred_path = out / "events.h5", out / "pred.h5"
    _, t_sim = simulated_file(events_path, "uboone", args.n, args.seed, fresh=True)
    print(f"simulated {args.n} MicroBooNE-like events (3 planes, 1008 x 2400/2400/3456) in "
          f"{t_sim:.1f} s -> {events_path}")
    if not DEFAULT_WEIGHTS[2].exists():
        with EventFile(str(events_path)) as f:
            events = [f[i] for i in range(3)]
        png = out / "event0.png"
        event_display(events, None, str(png), title="simulated MicroBooNE-like event 0 (ADC and truth)")
        print(f"no shipped weights at {DEFAULT_WEIGHTS[2]}: drew the truth only -> {png}")
        return
    predictor = Predictor()
    predictor.model(2)  # load before timing
    r, acc = predict_and_score(events_path, pred_path, predictor, progress=False)
    print(f"segmented {r['events']} events (all planes, full size, CPU, {r['threads']} threads): "
          f"{r['time_per_event_s']:.2f} s per event, peak memory {r['peak_rss_mb']:.0f} MB -> {pred_path}")
    with EventFile(str(events_path)) as f, EventFile(str(pred_path)) as p:
        events = [f[i] for i in range(3)]
        preds = [p.read_extra(i, "pred") for i in range(3)]
    png = out / "event0.png"
    event_display(events, preds, str(png), title="simulated MicroBooNE-like event 0: ADC, truth, prediction")
    cm_png = out / "confusion.png"
    confusion_heatmap(acc.matrix, str(cm_png), title=f"{args.n} simulated uboone events (seed {args.seed})")
    summary = acc.summary()
    write_text(out / "metrics.json", json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"event display: {png}\nconfusion matrix: {cm_png}\nmetrics: {out / 'metrics.json'}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated integers, got {text!r}") from None


def cmd_export(args) -> None:
    from .export import export_model

    shape = _int_list(args.input_shape) if args.input_shape else None
    fmt = args.format or EXPORT_FORMATS.get(Path(args.output).suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {args.output}: cannot tell the format from the extension "
                         f"({', '.join(EXPORT_FORMATS)}); pass --format torchscript or --format onnx")
    r = export_model(args.model, args.weights, fmt, args.output, example_input_shape=shape)
    src = r["weights"] or "random weights (no --weights given)"
    if r.get("converted_from"):
        src += f", {r['converted_from']} weights converted to the dense twin"
    print(f"exported {r['model']} ({src}) as {r['format']} -> {r['path']}")
    print(f"checked: input {tuple(r['input_shape'])} -> output {tuple(r['output_shape'])}, "
          f"max |exported - pytorch| = {r['max_abs_diff']:.2e}")
    if r.get("converted_from"):
        print("note: the dense twin equals the sparse model where every pixel is active; on sparse images it also "
              "convolves the empty pixels, so its scores differ")
    if r.get("input_norm") == "mip":
        how = ("sparseseg.calibration.normalize_views" if r["model"] == "cvn"
               else "sparseseg.models.dense_uresnet.densify with normalize=True")
        print(f"note: input_norm mip: feed MIP-calibrated inputs ({how}); the exported network does not calibrate")


EXPORT_FORMATS = {".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript",
                  ".onnx": "onnx"}
"""``export`` formats told from the output's extension when ``--format`` is not given."""


def cmd_roi_eval(args) -> None:
    from .roi import (DEFAULT_ANGLES, DEFAULT_ENERGIES, format_roi_summary, format_roi_tables, load_roi_models, roi_cost,
                      roi_evaluate, roi_summary)

    models = load_roi_models(args.models or [])
    if args.threads:
        torch_threads(args.threads)
    angles = _int_list(args.angles) if args.angles else DEFAULT_ANGLES
    energies = _int_list(args.energies) if args.energies else DEFAULT_ENERGIES
    res = roi_evaluate(models, angles=angles, energies=energies, n_events=args.n, seed=args.seed,
                       threshold=args.threshold, out_dir=args.out, progress=not args.quiet)
    print(format_roi_tables(res))
    cost = {}
    if not args.no_bench and models:
        if not args.quiet:
            print("roi-eval: timing each network on a full U plane (3 x 2400 x 600) ...", file=sys.stderr, flush=True)
        cost = roi_cost(models, threads=args.threads)
    rows = roi_summary(res, cost)
    print("\nSummary (tracks: theta_xz scan; showers: mean over the energy scan; time and peak memory: one "
          "full U plane, 3 x 2400 x 600)")
    print(format_roi_summary(rows))
    files = res.get("files", [])
    if args.out:
        out = Path(args.out)
        write_text(out / "roi_summary.md", format_roi_summary(rows, markdown=True) + "\n")
        write_text(out / "roi_summary.json", json.dumps({"rows": rows, "bench": cost}, indent=2, default=float))
        files += [str(out / "roi_summary.md"), str(out / "roi_summary.json")]
    for f in files:
        print(f"wrote {f}")


def _report(text: str, res: dict, args) -> None:
    """Print a table; write it as Markdown (--markdown) and its figures as JSON (--json)."""
    print(text)
    if args.json:
        write_text(args.json, json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        write_text(args.markdown, text + "\n")
        print(f"wrote {args.markdown}")


def cmd_classify(args) -> None:
    import csv
    import io

    from .atomic import write_text
    from .checkpoint import load_model
    from .infer import Predictor
    from .registry import get, sha256
    from .tasks.topology import TopologyClassifier, classify_file, shipped_classifier_path

    if args.threads:
        torch_threads(args.threads)
    weights = args.weights or shipped_classifier_path()
    clf = TopologyClassifier.load(weights)
    seg, cvn = get("uresnet2d").path, get("cvn").path
    for name, path, key in (("2D segmentation", seg, "segmentation_sha256"), ("CVN", cvn, "cvn_sha256")):
        if clf.info.get(key) not in (None, sha256(path)):
            raise SystemExit(f"sparseseg classify: {weights} was fitted on the outputs of other {name} weights than the "
                             f"shipped {path.name}; refit it (scripts/topology_classifier.py --fit)")
    rows = classify_file(args.input, clf, Predictor(weights=str(seg)), load_model(cvn)[0].eval(), progress=not args.quiet)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write_text(args.output, buf.getvalue())
    counts = {c: sum(r["class"] == c for r in rows) for c in clf.classes}
    cut = clf.info.get("nue_cut")
    selection = ("no nu_e CC cut stored in the classifier" if cut is None else
                 f"nu_e CC selection (P >= {cut:.3f}, purity 0.8 on simulation): {sum(bool(r['nue_selected']) for r in rows)}")
    print(f"{args.input}: {len(rows)} interactions -> {args.output}; predicted "
          + ", ".join(f"{c} {n}" for c, n in counts.items()) + f"; {selection}")


def cmd_robustness(args) -> None:
    from .robustness import format_table, run

    if args.threads:
        torch_threads(args.threads)
    only = [c.strip() for c in args.conditions.split(",")] if args.conditions else None
    res = run(args.weights, args.preset, args.n, args.seed, args.precision, args.label_rule, only)
    text = format_table(res)
    _report(text, res, args)


def cmd_bench(args) -> None:
    from .bench import DEFAULT_MODELS, format_markdown, format_train, plot_scaling, run, run_train

    if args.train:
        res = {"train": run_train(threads=args.threads or 2, steps=args.train_steps, batch=args.train_batch)}
        text = format_train(res["train"])
        _report(text, res, args)
        return
    models = [m.strip() for m in args.models.split(",")] if args.models else list(DEFAULT_MODELS)
    res = run(models, threads=args.threads, reps=args.reps, device=args.device, scaling=not args.no_scaling)
    text = format_markdown(res)
    _report(text, res, args)
    if args.plot and "scaling" in res:
        plot_scaling(res, args.plot)
        print(f"wrote {args.plot}")


def cmd_weights(args) -> None:
    from .registry import SHIPPED, sha256

    rows = []
    for s in SHIPPED.values():
        present = s.path.exists()
        ok = present and (not args.verify or sha256(s.path) == s.sha256)
        rows.append({"name": s.name, "file": str(s.path), "task": s.task, "trained_on": s.trained_on,
                     "inputs": s.feature_scale, "sha256": s.sha256, "card": str(s.card_path), "config": s.config,
                     "size_mb": round(s.path.stat().st_size / 2**20, 2) if present else None,
                     "status": ("ok" if ok else "sha256 differs") if present else "missing"})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            size = f"{r['size_mb']:.1f} MB" if r["size_mb"] is not None else "missing"
            check = f", {r['status']}" if args.verify else ""
            print(f"{r['name']}: {r['task']}\n  file {r['file']} ({size}, sha256 {r['sha256'][:16]}...{check})\n"
                  f"  trained on {r['trained_on']}; inputs: {r['inputs']}\n"
                  f"  model card {r['card']}; config: sparseseg config {Path(r['config']).stem}")
    if args.verify and any(r["status"] != "ok" for r in rows):
        bad = ", ".join(f"{r['name']} ({r['status']})" for r in rows if r["status"] != "ok")
        raise UsageError(f"shipped weights failed the check: {bad}")


def cmd_config(args) -> None:
    from .registry import config_names, config_path

    if not args.name:
        for name in config_names():
            first = config_path(name).read_text().splitlines()[:1]
            print(f"{name:18s} {first[0].lstrip('# ') if first else ''}")
        print("print one with `sparseseg config NAME > my.yaml`, edit it, then `sparseseg train --config my.yaml`")
        return
    sys.stdout.write(config_path(args.name).read_text())


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparseseg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    p.add_argument("--version", action="version", version=f"sparseseg {__import__('sparseseg').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate LArTPC events into an HDF5 file",
                       description="Simulate neutrino interactions (with cosmics for uboone) and write them as sparse events. "
                                   "Presets: uboone (3 planes, 1008 x 2400/2400/3456), crop512 (512 x 512 training views), "
                                   "pilarnet (3D, 768^3 voxels). The same seed gives the same events bit for bit.")
    s.add_argument("--preset", default="uboone", help="simulator preset (default: uboone)")
    s.add_argument("-n", type=int, default=10, help="number of interactions (default: 10)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--start", type=int, default=0, help="index of the first interaction (to extend a sample)")
    s.add_argument("-o", "--output", required=True, help="output HDF5 file")
    s.add_argument("--label-rule", choices=["visible", "legacy"], default="visible",
                   help="label convention (README 'Classes'): visible (default: unresolvable delta stubs belong to their "
                        "track, knock-ons above the critical energy are showers) or legacy (every knock-on is delta)")
    s.add_argument("--no-hadronic", dest="hadronic", action="store_false",
                   help="pions and protons do not interact with argon nuclei (by default they do, interaction length "
                        "85.7 cm: kinks, absorption stars, secondary protons; as before simulator 0.5)")
    s.add_argument("--restart", action="store_true",
                   help="discard the saved part of an interrupted run of this output (<output>.partial) instead of resuming it")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("info", help="summarise an event file", description="Events, planes, pixels, occupancy and class fractions of an HDF5 event file.")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("show", help="draw an event display (ADC, truth, prediction per plane)",
                       description="Draw all planes of one event: ADC, truth labels and, with --pred, the prediction. "
                                   "The extension of -o picks the format: a PNG (pooled to the screen) or an HTML "
                                   "page to zoom into at full resolution.")
    s.add_argument("file")
    s.add_argument("--event", type=int, default=0, help="which event (by position among event ids; default 0)")
    s.add_argument("--pred", help="prediction file from `sparseseg predict`")
    s.add_argument("-o", "--output",
                   help="file to write: .png (also .pdf, .svg), or .html for an interactive page (plotly, opens "
                        "offline; full resolution, hover with classes and scores); a folder receives event<ID>.png "
                        "(default: event<ID>.png)")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a segmentation model. Data: simulated on the fly (data.simulate) or HDF5 files "
                                   "(data.train). Checkpoints are atomic; --resume continues at the same step. Under "
                                   "`torchrun --nproc_per_node=K` it trains with DistributedDataParallel.")
    s.add_argument("--config", required=True, help="YAML config (see configs/)")
    s.add_argument("--out", help="run folder (default: runs/<config name>)")
    s.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    s.add_argument("--max-steps", type=int, help="override train.max_steps")
    s.add_argument("--threads", type=int, help="override train.threads: CPU threads, 1 or more, or 0 for torch's choice")
    s.add_argument("--device", help="override train.device: cpu, cuda or cuda:N")
    s.add_argument("--data-seed", type=int, metavar="N",
                   help="override data.seed: the simulated training stream (the same recipe on other views, e.g. "
                        "for runs whose weights are averaged with `scripts/ship_weights.py --soup`)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="segment every plane of every event (full images, no cropping)",
                       description="Segment HDF5 event files with a trained model (default: the shipped weights) and write "
                                   "per-pixel predicted class and softmax scores; truth is copied when present. A rerun after "
                                   "an interruption resumes where it stopped.")
    s.add_argument("inputs", nargs="+", help="event file(s)")
    s.add_argument("-o", "--output", required=True,
                   help="output file (one input) or folder (several inputs, or an existing folder or a name ending "
                        "in / for one input), which receives <input stem>.pred.h5 per input")
    s.add_argument("--weights", help="checkpoint to use (default: weights/uresnet2d.pt or uresnet3d.pt by the file's D)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--min-score", action="append", metavar="CLASS=SCORE",
                   help="reassign pixels whose best class is CLASS but score < SCORE to their next class (repeatable)")
    s.add_argument("--model", choices=["uresnet", "patch-cnn"],
                   help="which model the weights must hold; patch-cnn runs the per-hit patch classifier "
                        "(default weights weights/patch_cnn.pt) and writes the same layout: MIP = track, "
                        "shower/Michel = EM split by its Michel score, HIP and delta 0")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="sparse UResNet arithmetic on CPU: bf16 gathers and GEMMs in bfloat16 (float32 accumulation), "
                        "about 2x faster on CPUs with AVX512-BF16/AMX; auto (default) = bf16 on such CPUs, else fp32. "
                        "`sparseseg bench` prints bf16's agreement with fp32")
    s.add_argument("--flips", action="store_true",
                   help="average the scores over the event's 2^D mirror images (4 forwards per 2D image, 8 per 3D "
                        "volume): a little more accurate (+0.002 pixel accuracy on held-out uboone images and pilarnet "
                        "volumes), 2^D times slower; recorded in the output")
    s.add_argument("--shard", metavar="K/N", help="process only input files i with i %% N == K (batch arrays)")
    s.add_argument("--planes", metavar="NAMES",
                   help="segment and write only these planes, comma-separated names (e.g. Y); the other images are "
                        "skipped and counted. Part of the output's identity: a resume needs the same selection")
    s.add_argument("--restart", action="store_true",
                   help="discard the saved part of an interrupted run (<output>.partial) instead of resuming it; "
                        "needed when the input, weights or settings changed since")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="confusion matrices, efficiency and purity of predictions",
                       description="Compare predictions with truth: confusion matrix (rows = truth), efficiency (normalised "
                                   "to truth), purity (normalised to prediction), IoU, track/shower collapsed, per plane. "
                                   "2D planes and 3D volumes are never pooled: inputs holding both give one table per "
                                   "dimension, labelled 2D and 3D, and JSON keyed \"2D\" / \"3D\".")
    s.add_argument("inputs", nargs="+", help="prediction file(s) from `sparseseg predict`")
    s.add_argument("--json", help="write all numbers as JSON here")
    s.add_argument("--plot", help="write a confusion-matrix heatmap PNG here (inputs holding 2D and 3D images: "
                                  "one per dimension, <name>.2D.png and <name>.3D.png)")
    s.add_argument("--per-event", metavar="FILE.csv|FILE.jsonl",
                   help="write one row per image (event id, plane) here, CSV or JSON lines by the extension: "
                        "file, entry, event_id, plane, dim, pixels, scored_pixels (truth known), accuracy, "
                        "track_shower_accuracy, efficiency_<class> (empty / null where undefined)")
    s.add_argument("--planes", metavar="NAMES",
                   help="score only these planes, comma-separated names (e.g. U,V; an image without a plane name "
                        "is 2D or 3D); every name must be in the inputs")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="simulate, segment and draw a few MicroBooNE-like events",
                       description="The quick start: simulate uboone events, segment them with the shipped weights, "
                                   "write an event display and a confusion matrix, print time and memory.")
    s.add_argument("--out", default="demo", help="output folder (default: demo)")
    s.add_argument("-n", type=int, default=3, help="events to simulate (default: 3)")
    s.add_argument("--seed", type=int, default=20261123, help="simulator seed")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("export", help="export a dense model to TorchScript or ONNX",
                       description="Write a dense model (roi-unet, roi-mobilenetv2, roi-mobilenetv3, roi-transformer, cvn, "
                                   "uresnet-dense) as TorchScript (torch.jit.load / torch::jit::load in LArSoft or Wire-Cell) "
                                   "or ONNX (onnxruntime), then reload it and check it reproduces PyTorch to 1e-4. The sparse "
                                   "UResNet cannot be exported: spconv's rulebook convolutions have no TorchScript/ONNX "
                                   "operator; run it through sparseseg predict, or export its dense twin (uresnet-dense): "
                                   "--model uresnet-dense --weights weights/uresnet2d.pt converts the sparse weights.")
    s.add_argument("--model", required=True, help="model name (see above)")
    s.add_argument("--weights", help="sparseseg checkpoint of that model, or for uresnet-dense of the sparse uresnet "
                                     "(converted) (default: random weights, to test a chain)")
    s.add_argument("--format", choices=["torchscript", "onnx"],
                   help="output format (default: by the extension of -o: .onnx = onnx; .pt, .ts, .torchscript, "
                        ".jit = torchscript)")
    s.add_argument("--input-shape", metavar="B,C,H,W", help="example input used to trace and check (default per model)")
    s.add_argument("-o", "--output", required=True, help="file to write")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("roi-eval", help="DNN-ROI charge metrics vs a traditional threshold ROI",
                       description="Simulate single muon tracks (theta_xz scan) and electron showers (energy scan) as "
                                   "wire x tick waveforms with noise, find signal ROIs with the traditional threshold method "
                                   "and with ROI networks, and report charge bias, resolution, inefficiency and the shower "
                                   "charge profile, as tables and plots.")
    s.add_argument("models", nargs="*", help="ROI checkpoints, or model names for untrained networks (pipeline check); "
                                             "default: every shipped ROI network (UNet, MobileNetV2, MobileNetV3, Transformer)")
    s.add_argument("-n", type=int, default=4, help="events per scan point (default: 4)")
    s.add_argument("--seed", type=int, default=0, help="simulator seed (default: 0)")
    s.add_argument("--angles", help="theta_xz values in degrees, comma separated (default: 0,10,...,80,85)")
    s.add_argument("--energies", help="shower energies in MeV, comma separated (default: 100 to 5000)")
    s.add_argument("--threshold", type=float, default=0.5, help="network score threshold (default: 0.5)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.add_argument("--out", default="roi_eval", help="folder for roi_metrics.json, roi_tables.txt and plots")
    s.add_argument("--no-bench", action="store_true", help="skip timing each network on a full plane")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress")
    s.set_defaults(func=cmd_roi_eval)

    s = sub.add_parser("classify", help="classify interactions nu_mu CC / nu_e CC / NC from their segmentation and the CVN",
                       description="For each interaction of a 2D event file (its U, V and Y views share an event id and "
                                   "carry the interaction vertex): segment the views with the shipped 2D UResNet, run the "
                                   "CVN, measure the topology features (the track leaving the vertex, the showers' gaps and "
                                   "start charges, ...) and apply the event classifier (weights/topology.json, its card). "
                                   "Full MicroBooNE planes are cropped to 512 x 512 around the vertex. Writes one CSV row per "
                                   "interaction: event_id, the three probabilities, the class, and whether it passes the "
                                   "nu_e CC selection (purity 0.8 on simulation).")
    s.add_argument("input", help="2D event file (HDF5) with U, V, Y views and vertices, e.g. from 'sparseseg simulate'")
    s.add_argument("-o", "--output", default="classes.csv", help="CSV to write (default: classes.csv)")
    s.add_argument("--weights", help="classifier file (default: the shipped weights/topology.json)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("robustness", help="accuracy of a model under other detector conditions (gain, noise, dead wires, threshold)",
                       description="Simulate the same interactions under each detector condition (the physics is identical, "
                                   "only the detector response changes) and print 5-class and track/shower accuracy and "
                                   "per-class efficiency per condition. 2D presets: nominal, gain 0.5/0.7/1.5/2.0 (before "
                                   "noise and threshold), white noise sigma 2.5/3.5/4.5 ADC, +10 %% dead wires, threshold "
                                   "15/20 ADC; 3D: the energy scale x0.5/0.7/1.5/2.0.")
    s.add_argument("--weights", help="weights file (default: the shipped model of the preset's dimension)")
    s.add_argument("--preset", default="uboone", help="simulator preset (default: uboone)")
    s.add_argument("-n", type=int, default=40, help="interactions per condition (default: 40)")
    s.add_argument("--seed", type=int, default=5151, help="simulator seed (default: 5151)")
    s.add_argument("--label-rule", choices=["visible", "legacy"], default="visible", help="truth label convention")
    s.add_argument("--conditions", help="comma-separated subset, e.g. 'nominal,gain 0.5'")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="as for predict")
    s.add_argument("--json", help="write the table as JSON here")
    s.add_argument("--markdown", help="write the table as Markdown here")
    s.set_defaults(func=cmd_robustness)

    s = sub.add_parser("bench", help="time and peak memory per model, sparse vs dense, cost vs occupancy",
                       description="Benchmark models on full-size inputs (a uboone Y plane and 3-plane event, a pilarnet "
                                   "volume, a full ROI plane, 3 x 500 x 500 CVN views), each in a fresh process: median time "
                                   "after a warm-up and peak memory above a no-model baseline (sparse rows use the shipped "
                                   "weights). Also: dense/sparse ratios on the same Y plane, FLOP/s against a torch.mm peak, "
                                   "sparse time vs occupancy, and the performance targets met or not.")
    s.add_argument("--models", help="comma-separated subset (default: all); names: uresnet2d (inference engine, "
                                     "fp32), uresnet2d-bf16 (engine, bf16, with its agreement), uresnet2d-graph (the "
                                     "training graph), uresnet2d-dense, uresnet3d, uresnet3d-bf16, roi-unet, roi-mobilenetv2, "
                                     "roi-mobilenetv3, roi-transformer, cvn")
    s.add_argument("--threads", type=int, default=0, help="CPU threads, 1 or more (default: 0, torch's choice)")
    s.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up (default: 5)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--no-scaling", action="store_true", help="skip the occupancy scan")
    s.add_argument("--train", action="store_true",
                   help="benchmark training instead: the 2D UResNet on the same simulated 512 x 512 batches through "
                        "spconv's rulebooks (graph, fp32), the engine at train's default precision and the engine in "
                        "fp32; images/s, time per step (data, forward, backward, optimizer), peak RSS, and the speedup "
                        "(JSON: train.graph.images_per_s, train.engine.images_per_s, train.engine_fp32.images_per_s, "
                        "train.speedup)")
    s.add_argument("--train-steps", type=int, default=10, help="timed training steps per variant (default: 10)")
    s.add_argument("--train-batch", type=int, default=8, help="images per training step (default: 8)")
    s.add_argument("--json", help="write all figures as JSON here")
    s.add_argument("--markdown", help="write the tables as Markdown here")
    s.add_argument("--plot", help="write the occupancy-scaling plot (PNG) here")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("weights", help="list the shipped weights (file, sha256, training data, model card)",
                       description="The shipped weights: what each does, what it was trained on, what inputs it "
                                   "expects, its file, sha256 and model card.")
    s.add_argument("--verify", action="store_true", help="check every file's sha256 (exit 2 if one differs)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_weights)

    s = sub.add_parser("config", help="print a shipped training config to start from",
                       description="Without NAME: list the shipped training configs. With NAME: print it, e.g. "
                                   "`sparseseg config uresnet2d > my.yaml`.")
    s.add_argument("name", nargs="?", help="config name (e.g. uresnet2d)")
    s.set_defaults(func=cmd_config)
    return p


def _stopped_message(command: str, stop: Stopped) -> str:
    import signal

    from .io.format import PARTIAL_SUFFIX
    from .io.writer import partial_events

    name = signal.Signals(stop.signum).name
    out = stop.output
    if out is None:
        return f"sparseseg {command}: stopped by {name}: 0 images saved; rerun the same command to resume"
    if not os.path.isdir(out + PARTIAL_SUFFIX) and os.path.exists(out):
        return f"sparseseg {command}: stopped by {name} after {out} was complete"
    n = partial_events(out)
    return (f"sparseseg {command}: stopped by {name}: {n} images saved in {out}{PARTIAL_SUFFIX}; "
            "rerun the same command to resume")


def _os_error_text(err: OSError) -> str:
    import errno as errno_mod

    if type(err).__str__ is not OSError.__str__:
        return " ".join(str(err).split())
    if err.strerror:
        code = errno_mod.errorcode.get(err.errno or -1, "")
        cause = f"{err.strerror} ({code})" if code else err.strerror
        return f"{err.filename}: {cause}" if err.filename else cause
    return " ".join(str(err).split())


def _stdout_gone() -> int:
    """stdout's reader went away (``sparseseg evaluate p.h5 | head -1``): point stdout at
    /dev/null, so that Python's flush at exit does not fail again, and exit quietly with
    status 1 (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced stdout without a file descriptor
        pass
    return 1


def raised_on_purpose(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` statement in sparseseg's own code -- a check
    of the input, with a message written for the user -- rather than by a failing operation
    (an index out of range, a shape mismatch inside torch or numpy), which is a bug."""
    import linecache

    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if PACKAGE_DIR not in path.parents:
        return False
    return linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise")


PACKAGE_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            sys.stdout.flush()
            return 0
    except SystemExit:  # --help, --version, usage errors: flush here, where a closed pipe can be caught
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_gone()
        raise
    except BrokenPipeError:
        return _stdout_gone()
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_arguments(args)
        args.func(args)
        sys.stdout.flush()  # inside the try: a reader gone before the end is a BrokenPipeError here
    except BrokenPipeError:
        return _stdout_gone()
    except Stopped as stop:
        print(_stopped_message(args.command, stop), file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("sparseseg: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, IndexError) as err:
        if args.debug:
            raise
        if not isinstance(err, (UsageError, FileNotFoundError, FileExistsError)) and not raised_on_purpose(err):
            print(f"sparseseg {args.command}: internal error: {type(err).__name__}: {' '.join(str(err).split())}\n"
                  f"This is a bug in sparseseg, not a problem with your input: please report it with the output "
                  f"of the same command run with --debug (which shows the traceback).", file=sys.stderr)
            return 70
        print(f"sparseseg {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        if args.debug:
            raise
        print(f"sparseseg {args.command}: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
