"""Fault matrix for the writing commands: kill them, stop them, fill their disk, and check
that a rerun gives exactly the file of an uninterrupted run.

For ``sparseseg simulate`` (crop512, 30 interactions = 90 images) and ``sparseseg predict``
(10 interactions = 30 images, a tiny random UResNet, 1 thread), with a small segment size
(``SPARSESEG_BUFFER_EVENTS``) so that a run writes 15-30 segments:

* kill -9 and SIGTERM/SIGINT/SIGHUP at instants spread over the run: inside a segment write
  (half of its bytes written), between a segment and its checksum record, after a segment,
  halfway through assembling the final file, after the final rename (``SPARSESEG_FAULT``), and
  at fractions of the uninterrupted run's wall time (sent from outside); one case is killed
  again while resuming. Each rerun must exit 0 and give a file equal to the uninterrupted run
  (every dataset with ``numpy.array_equal``, every attribute); each signal must give exit
  status 128 + signal and a one-line "N images saved ...; rerun the same command" message.
* two writers on one output (the second is refused while the first runs, and the first
  finishes), resumes with other weights, settings, seed or input (refused, then ``--restart``),
  partial outputs given to readers, outputs equal to an input, NaN / negative / huge features,
  and, when run as root with tmpfs available, a full disk and the resume after space is freed.

* option, configuration and OS errors: a read-only output folder (root: a read-only tmpfs), a
  folder given as an output file, negative ``--threads``, an unknown ``--device``, CUDA asked
  for without CUDA, a huge ``--seed``, YAML values of the wrong type, a resume with another
  model section, and an argparse error: each one line, exit status 2.

Prints one line per failure and ``tried N, handled M``; exit status 0 when all are handled.
Usage: ``nice -n 19 python scripts/fault_matrix.py [--keep DIR] [--only errors]`` (all: a few
minutes on 1 core; ``--only errors``: the option and configuration cases, under a minute).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIM_N, SIM_BUFFER = 30, 3
PRED_N, PRED_BUFFER = 10, 2


class Matrix:
    def __init__(self) -> None:
        self.tried = 0
        self.handled = 0
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, why: str = "") -> bool:
        self.tried += 1
        if ok:
            self.handled += 1
        else:
            line = f"FAIL {name}: {why}"
            self.failures.append(line)
            print(line, flush=True)
        return ok


def env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("SPARSESEG_FAULT", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def sparseseg(args: list[str], **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparseseg.cli", *args], capture_output=True, text=True,
                          env=env(**extra), timeout=600)


def contents(path: str):
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return data, attrs


def differs(a: str, b: str) -> str:
    """'' when the two files hold the same datasets and attributes, else what differs."""
    if not os.path.isfile(b):
        return f"{b} does not exist"
    try:
        (da, aa), (db, ab) = contents(a), contents(b)
    except OSError as exc:
        return f"unreadable: {exc}"
    if sorted(da) != sorted(db):
        return f"datasets {sorted(set(da) ^ set(db))} differ"
    for name in da:
        if da[name].dtype != db[name].dtype or not np.array_equal(da[name], db[name]):
            return f"dataset /{name} differs"
    if _without_command(aa) != _without_command(ab):
        return "attributes differ"
    return ""


def _without_command(attrs: dict) -> dict:
    """Root attributes less the recorded command line, which names the output file."""
    out = {k: v for k, v in attrs.items() if k != "command"}
    if "attrs_json" in out:
        out["attrs_json"] = json.dumps({k: v for k, v in json.loads(out["attrs_json"]).items() if k != "command"})
    return out


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def stop_message_ok(stderr: str, sig: str, out: str) -> str:
    from sparseseg.io import partial_events

    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        return f"expected one line on stderr, got {len(lines)}: {stderr.strip()[-300:]!r}"
    line = lines[0]
    if "after" in line and "was complete" in line:
        return ""
    head = f"stopped by {sig}: "
    if head not in line or not line.endswith("rerun the same command to resume"):
        return f"unexpected message {line!r}"
    saved = int(line.split(head)[1].split()[0])
    if saved != partial_events(out):
        return f"message says {saved} images saved, the partial holds {partial_events(out)}"
    return ""


class Failed(Exception):
    pass


def need(ok: bool, why: str) -> None:
    if not ok:
        raise Failed(why)


def fault_case(m: Matrix, name: str, args: list[str], out: str, reference: str, buffer: int,
               fault: str | None = None, after_s: float | None = None, sig: str = "SIGKILL",
               second_fault: str | None = None) -> None:
    """Run ``args`` with a fault, rerun it, compare with ``reference``: one case of the matrix."""
    try:
        _fault_case(args, out, reference, buffer, fault, after_s, sig, second_fault)
    except Failed as exc:
        m.check(name, False, str(exc))
    else:
        m.check(name, True)


def _fault_case(args, out, reference, buffer, fault, after_s, sig, second_fault) -> None:
    for p in (out, out + ".partial"):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)
    extra = {"SPARSESEG_BUFFER_EVENTS": buffer}
    if fault:
        p = sparseseg(args, SPARSESEG_FAULT=fault, **extra)
        rc, stderr = p.returncode, p.stderr
    else:
        proc = subprocess.Popen([sys.executable, "-m", "sparseseg.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env(**extra))
        time.sleep(after_s)
        if proc.poll() is None:
            proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=600)
        rc = proc.returncode
    signum = getattr(signal, sig)
    # a timed signal can come after the end: the success line is printed (the output is then
    # complete, checked below) and the signal ends the exiting interpreter, or nothing happens
    finished = not fault and rc in (0, -signum) and bool(stdout.strip())
    expected = -9 if sig == "SIGKILL" else 128 + signum
    need(rc == expected or finished, f"first run: exit status {rc}, expected {expected}: {last_line(stderr)!r}")
    if finished:
        diff = differs(reference, out)
        need(not diff, f"run that printed its success line: {diff}")
    if sig != "SIGKILL" and not finished:
        problem = stop_message_ok(stderr, sig, out)
        need(not problem, f"first run: {problem}")
    torn = fault and not fault.startswith("final-renamed") and os.path.exists(out)
    need(not torn, f"{out} exists after the fault")
    if second_fault:
        p = sparseseg(args, SPARSESEG_FAULT=second_fault, **extra)
        need(p.returncode == -9, f"second run: exit status {p.returncode}: {last_line(p.stderr)!r}")
    p = sparseseg(args, **extra)
    need(p.returncode == 0, f"rerun: exit status {p.returncode}: {last_line(p.stderr)!r}")
    diff = differs(reference, out)
    need(not diff, f"rerun: {diff}")
    need(not os.path.exists(out + ".partial"), f"{out}.partial left behind")


def tiny_weights(path: str, seed: int) -> str:
    import torch

    from sparseseg import checkpoint
    from sparseseg.models import build_model

    cfg = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}
    torch.manual_seed(seed)
    model = build_model("uresnet", **{k: v for k, v in cfg.items() if k != "name"})
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": cfg},
                           "classes": ["HIP", "MIP", "shower", "delta", "Michel"], "version": "fault-matrix"})
    return path


def edit_features(src: str, dst: str, fn) -> str:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as h:
        feats = h["features"][()]
        fn(feats, h["offsets"][()])
        h["features"][...] = feats
    return dst


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> tuple[bool, str]:
    lines = p.stderr.strip().splitlines()
    ok = p.returncode == 2 and len(lines) == 1 and needle in p.stderr and "Traceback" not in p.stderr
    return ok, f"exit {p.returncode}, stderr {p.stderr.strip()[-300:]!r}"


def error_cases(m: Matrix, work: str, events: str, weights: str) -> None:
    """Option, configuration and OS errors: one line each, exit status 2, nothing written."""
    os.makedirs(work, exist_ok=True)
    j = lambda *p: os.path.join(work, *p)  # noqa: E731
    pred = ["predict", events, "--weights", weights, "-q"]

    def case(name: str, argv: list[str], needle: str, forbidden: str | None = None) -> None:
        ok, why = one_line_error(sparseseg(argv), needle)
        if forbidden and os.path.exists(forbidden):
            ok, why = False, f"{forbidden} was written; {why}"
        m.check(name, ok, why)

    ro = j("ro")
    os.makedirs(ro, exist_ok=True)
    if os.geteuid() == 0:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", ro],
                              capture_output=True).returncode == 0
    else:
        os.chmod(ro, 0o555)
        made = True
    if not made:
        print("read-only folder: skipped (needs a mountable tmpfs as root)", flush=True)
    else:
        try:
            case("simulate into a read-only folder", ["simulate", "--preset", "crop512", "-n", "1", "-q", "-o",
                                                      os.path.join(ro, "s.h5")], os.path.join(ro, "s.h5"))
            case("predict into a read-only folder", pred + ["-o", os.path.join(ro, "p.h5")], os.path.join(ro, "p.h5"))
            case("evaluate --json into a read-only folder", ["evaluate", events, "--json", os.path.join(ro, "m.json")],
                 f"folder {ro} is not writable")
        finally:
            if os.geteuid() == 0:
                subprocess.run(["umount", ro], capture_output=True)
            else:
                os.chmod(ro, 0o755)
    folder = j("a_folder")
    os.makedirs(folder, exist_ok=True)
    case("simulate -o an existing folder", ["simulate", "--preset", "crop512", "-n", "1", "-q", "-o", folder],
         "is a directory")
    case("evaluate --json an existing folder", ["evaluate", events, "--json", folder], "is a directory")
    shown = sparseseg(["show", events, "-o", folder])  # a folder receives event<ID>.png (README)
    pngs = [n for n in os.listdir(folder) if n.startswith("event") and n.endswith(".png")]
    m.check("show -o an existing folder writes event<ID>.png inside it", shown.returncode == 0 and len(pngs) == 1,
            f"exit {shown.returncode}, files {sorted(os.listdir(folder))}, stderr {last_line(shown.stderr)!r}")
    for argv in (pred + ["-o", j("t.h5"), "--threads", "-1"], ["demo", "--out", j("demo"), "--threads", "-1"],
                 ["robustness", "--threads", "-1"]):
        case(f"{argv[0]} --threads -1", argv, "--threads -1: must be at least 1", forbidden=j("t.h5"))
    case("predict --device tpu", pred + ["-o", j("t.h5"), "--device", "tpu"], "--device tpu: unknown device")
    import torch

    if not torch.cuda.is_available():
        case("predict --device cuda without CUDA", pred + ["-o", j("t.h5"), "--device", "cuda"],
             "use --device cpu")
    case("simulate --seed 2**70", ["simulate", "--preset", "crop512", "-n", "1", "-q", "--seed", str(2**70), "-o",
                                   j("seed.h5")], "must be an integer from 0 to 2**63 - 1", forbidden=j("seed.h5"))
    case("an argparse error", pred + ["-o", j("t.h5"), "--threads", "many"], "invalid int value: 'many'")
    base = {"model": {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1},
            "data": {"simulate": None, "train": events, "val": events, "val_images": 1, "num_workers": 0},
            "train": {"batch_size": 1, "max_steps": 1, "val_every": 1, "log_every": 1, "checkpoint_every": 1,
                      "warmup_steps": 0, "threads": 1, "precision": "fp32"}}
    for section, key, value, needle in (("train", "lr", "fast", "train.lr must be a number"),
                                        ("train", "batch_size", True, "train.batch_size must be an integer (int), got True"),
                                        ("data", "seed", 1.5, "data.seed must be an integer (int), got 1.5"),
                                        ("weights", "vertex_boost", "x", "weights.vertex_boost must be a number")):
        cfg = {k: dict(v) for k, v in base.items()}
        cfg.setdefault(section, {})[key] = value
        path = j(f"bad_{key}.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh)
        case(f"config {section}.{key}: {value!r}", ["train", "--config", path, "--out", j(f"run_{key}"), "-q"], needle,
             forbidden=j(f"run_{key}"))
    path = j("good.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(base, fh)
    p = sparseseg(["train", "--config", path, "--out", j("run"), "-q"])
    if m.check("a tiny training run", p.returncode == 0, last_line(p.stderr)):
        cfg = {k: dict(v) for k, v in base.items()}
        cfg["model"]["filters"] = 8
        cfg["train"]["max_steps"] = 2
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh)
        case("train --resume with another model section", ["train", "--config", path, "--out", j("run"), "--resume",
                                                           "-q"], "cannot continue with changed model.filters 4 -> 8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--only", choices=["all", "errors"], default="all",
                    help="errors: only the option, configuration and OS error cases (fast)")
    opts = ap.parse_args()
    work = opts.keep or tempfile.mkdtemp(prefix="sparseseg-faults-")
    os.makedirs(work, exist_ok=True)
    j = lambda *p: os.path.join(work, *p)  # noqa: E731
    m = Matrix()
    t_start = time.time()
    if opts.only == "errors":
        try:
            p = sparseseg(["simulate", "--preset", "crop512", "-n", "1", "--seed", "23", "-q", "-o", j("in.h5")])
            if p.returncode:
                print(f"cannot simulate the input: {p.stderr.strip()}")
                return 2
            error_cases(m, work, j("in.h5"), tiny_weights(j("w.pt"), 0))
        finally:
            if not opts.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(f"tried {m.tried}, handled {m.handled} ({time.time() - t_start:.0f} s)")
        return 0 if m.tried == m.handled else 1
    try:
        # ------------------------------------------------------------------ references
        sim = ["simulate", "--preset", "crop512", "-n", str(SIM_N), "--seed", "17", "-q"]
        t0 = time.perf_counter()
        p = sparseseg(sim + ["-o", j("sim_ref.h5")], SPARSESEG_BUFFER_EVENTS=SIM_BUFFER)
        sim_wall = time.perf_counter() - t0
        if p.returncode:
            print(f"cannot run the reference simulate: {p.stderr.strip()}")
            return 2
        p = sparseseg(["simulate", "--preset", "crop512", "-n", str(PRED_N), "--seed", "23", "-q", "-o", j("in.h5")])
        weights = tiny_weights(j("w.pt"), 0)
        weights2 = tiny_weights(j("w2.pt"), 1)
        pred = ["predict", j("in.h5"), "--weights", weights, "--threads", "1", "-q"]
        t0 = time.perf_counter()
        p = sparseseg(pred + ["-o", j("pred_ref.h5")], SPARSESEG_BUFFER_EVENTS=PRED_BUFFER)
        pred_wall = time.perf_counter() - t0
        if p.returncode:
            print(f"cannot run the reference predict: {p.stderr.strip()}")
            return 2
        print(f"references: simulate {SIM_N * 3} images in {sim_wall:.1f} s, predict {PRED_N * 3} images in "
              f"{pred_wall:.1f} s; segments of {SIM_BUFFER} and {PRED_BUFFER} images", flush=True)

        # ------------------------------------------------------------------ simulate: kills and signals
        n_seg = SIM_N * 3 // SIM_BUFFER
        sim_cases = [(f"segment-write:{k}", "SIGKILL") for k in (1, 8, 15, 22, n_seg)]
        sim_cases += [(f"segment-renamed:{k}", "SIGKILL") for k in (3, n_seg - 1)]
        sim_cases += [(f"segment-done:{k}", "SIGKILL") for k in (8, n_seg)]
        sim_cases += [("assemble:1", "SIGKILL"), ("final-renamed:1", "SIGKILL")]
        sim_cases += [(f"segment-write:{k}", "SIGTERM") for k in (2, 12, 27)]
        sim_cases += [("segment-done:6", "SIGTERM"), ("assemble:1", "SIGTERM"), ("segment-write:9", "SIGINT"),
                      ("segment-renamed:14", "SIGHUP")]
        for fault, sig in sim_cases:
            spec = fault if sig == "SIGKILL" else f"{fault}:{sig}"
            fault_case(m, f"simulate {sig} at {fault}", sim + ["-o", j("sim.h5")], j("sim.h5"), j("sim_ref.h5"),
                       SIM_BUFFER, fault=spec, sig=sig)
        for frac, sig in ((0.3, "SIGKILL"), (0.75, "SIGKILL"), (0.5, "SIGTERM")):
            fault_case(m, f"simulate {sig} at {int(frac * 100)} % of the run", sim + ["-o", j("sim.h5")], j("sim.h5"),
                       j("sim_ref.h5"), SIM_BUFFER, after_s=frac * sim_wall, sig=sig)
        fault_case(m, "simulate SIGKILL at segment-write:4, again while resuming", sim + ["-o", j("sim.h5")],
                   j("sim.h5"), j("sim_ref.h5"), SIM_BUFFER, fault="segment-write:4", second_fault="segment-write:6")

        # ------------------------------------------------------------------ predict: kills and signals
        n_seg = PRED_N * 3 // PRED_BUFFER
        pred_cases = [(f"segment-write:{k}", "SIGKILL") for k in (1, 6, n_seg)]
        pred_cases += [("segment-renamed:6", "SIGKILL"), ("segment-done:10", "SIGKILL"), ("assemble:1", "SIGKILL"),
                       ("final-renamed:1", "SIGKILL")]
        pred_cases += [("segment-write:3", "SIGTERM"), ("segment-done:7", "SIGTERM"), ("segment-write:5", "SIGINT"),
                       ("segment-write:9", "SIGHUP")]
        for fault, sig in pred_cases:
            spec = fault if sig == "SIGKILL" else f"{fault}:{sig}"
            fault_case(m, f"predict {sig} at {fault}", pred + ["-o", j("pred.h5")], j("pred.h5"), j("pred_ref.h5"),
                       PRED_BUFFER, fault=spec, sig=sig)
        for frac, sig in ((0.75, "SIGKILL"), (0.7, "SIGTERM")):
            fault_case(m, f"predict {sig} at {int(frac * 100)} % of the run", pred + ["-o", j("pred.h5")],
                       j("pred.h5"), j("pred_ref.h5"), PRED_BUFFER, after_s=frac * pred_wall, sig=sig)

        # ------------------------------------------------------------------ two writers
        out = j("two.h5")
        first = subprocess.Popen([sys.executable, "-m", "sparseseg.cli", *pred, "-o", out], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=env(SPARSESEG_BUFFER_EVENTS=PRED_BUFFER, SPARSESEG_FAULT="segment-done:2:SIGSTOP"))
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            with open(f"/proc/{first.pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "T":
                    break
            time.sleep(0.05)
        second = sparseseg(pred + ["-o", out], SPARSESEG_BUFFER_EVENTS=PRED_BUFFER)
        ok, why = one_line_error(second, f"another process (pid {first.pid}")
        m.check("two writers: the second is refused, naming the first", ok, why)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
        m.check("two writers: the first finishes its file", first.returncode == 0 and not differs(j("pred_ref.h5"), out),
                f"exit {first.returncode} {last_line(err)!r} {differs(j('pred_ref.h5'), out)}")

        # ------------------------------------------------------------------ resume mismatches
        out = j("mm.h5")
        p = sparseseg(pred + ["-o", out], SPARSESEG_BUFFER_EVENTS=PRED_BUFFER, SPARSESEG_FAULT="segment-done:4")
        base = [a for a in pred if a != weights]
        i_w = base.index("--weights")
        other_w = base[: i_w + 1] + [weights2] + base[i_w + 1:]
        same_w = base[: i_w + 1] + [weights] + base[i_w + 1:]
        ok, why = one_line_error(sparseseg(other_w + ["-o", out]), '"weights_sha256"')
        m.check("resume with other weights is refused", ok, why)
        ok, why = one_line_error(sparseseg(same_w + ["-o", out, "--min-score", "delta=0.5"]), '"min_scores"')
        m.check("resume with another --min-score is refused", ok, why)
        other_dir = j("other")
        os.makedirs(other_dir, exist_ok=True)
        sparseseg(["simulate", "--preset", "crop512", "-n", str(PRED_N), "--seed", "24", "-q", "-o",
                   os.path.join(other_dir, "in.h5")])
        other_in = [os.path.join(other_dir, "in.h5") if a == j("in.h5") else a for a in same_w]
        ok, why = one_line_error(sparseseg(other_in + ["-o", out]), '"input"')
        m.check("resume with another input of the same name is refused", ok, why)
        p = sparseseg(other_w + ["-o", out, "--restart"])
        ok = p.returncode == 0 and "resumed" not in p.stdout
        m.check("--restart discards the partial and starts over", ok, f"exit {p.returncode} {last_line(p.stderr)!r}")
        sim_out = j("mm_sim.h5")
        sparseseg(sim + ["-o", sim_out], SPARSESEG_BUFFER_EVENTS=SIM_BUFFER, SPARSESEG_FAULT="segment-done:5")
        ok, why = one_line_error(sparseseg([a if a != "17" else "18" for a in sim] + ["-o", sim_out]), "seed")
        m.check("simulate resume with another seed is refused", ok, why)
        p = sparseseg(sim + ["-o", sim_out], SPARSESEG_BUFFER_EVENTS=SIM_BUFFER)
        m.check("simulate resume with the same settings is bit-identical",
                p.returncode == 0 and not differs(j("sim_ref.h5"), sim_out), last_line(p.stderr))

        # ------------------------------------------------------------------ readers, inputs, numbers
        sparseseg(sim + ["-o", j("left.h5")], SPARSESEG_BUFFER_EVENTS=SIM_BUFFER, SPARSESEG_FAULT="segment-done:3")
        for argv in (["info", j("left.h5.partial")], ["evaluate", j("left.h5.partial")],
                     ["show", j("sim_ref.h5"), "--pred", j("left.h5.partial"), "-o", j("x.png")]):
            ok, why = one_line_error(sparseseg(argv), "unfinished output")
            m.check(f"{argv[0]} refuses a partial output", ok, why)
        before = open(j("in.h5"), "rb").read()
        for argv in (pred + ["-o", j("in.h5")], ["evaluate", j("pred_ref.h5"), "--json", j("pred_ref.h5")],
                     ["evaluate", j("pred_ref.h5"), "--plot", j("pred_ref.h5")]):
            ok, why = one_line_error(sparseseg(argv), "is the input file")
            m.check(f"{argv[0]} {' '.join(argv[-2:])} refuses to overwrite an input", ok, why)
        m.check("inputs unchanged", open(j("in.h5"), "rb").read() == before and contents(j("pred_ref.h5"))[0] != {},
                "an input changed")

        def put(value, rows=slice(0, 5)):
            def fn(f, off):
                f[off[4] + rows.start: off[4] + rows.stop, 0] = value
            return fn

        for label, value, needle in (("NaN", np.nan, "NaN or inf"), ("inf", np.inf, "NaN or inf"),
                                     ("negative", -3.0, "negative")):
            bad = edit_features(j("in.h5"), j(f"bad_{label}.h5"), put(value))
            p = sparseseg([bad if a == j("in.h5") else a for a in pred] + ["-o", j(f"bad_{label}.pred.h5")])
            ok, why = one_line_error(p, needle)
            m.check(f"{label} features are refused naming the event", ok and "event 4" in p.stderr
                    and not os.path.exists(j(f"bad_{label}.pred.h5")), why)
        big = edit_features(j("in.h5"), j("big.h5"), put(3e38, slice(0, 50)))
        p = sparseseg([big if a == j("in.h5") else a for a in pred] + ["-o", j("big.pred.h5")])
        ok = p.returncode == 0 and len(p.stderr.strip().splitlines()) == 1 and "warning" in p.stderr
        if ok:
            with h5py.File(j("big.pred.h5"), "r") as h:
                ok = bool(np.isfinite(h["extra/scores"][()].astype(np.float32)).all())
        m.check("features of 3e38 are clipped with a one-line warning, scores finite", ok,
                f"exit {p.returncode} {p.stderr.strip()[-300:]!r}")

        # ------------------------------------------------------------------ option, config and OS errors
        error_cases(m, j("errors"), j("in.h5"), weights)

        # ------------------------------------------------------------------ disk full (root + tmpfs)
        small = j("small")
        os.makedirs(small, exist_ok=True)
        mounted = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", small], capture_output=True).returncode == 0
        if not mounted:
            print("disk full: skipped (needs root and a mountable tmpfs)", flush=True)
        else:
            try:
                out = os.path.join(small, "pred.h5")
                p = sparseseg(pred + ["-o", out], SPARSESEG_BUFFER_EVENTS=PRED_BUFFER)
                ok, why = one_line_error(p, "No space left on device (ENOSPC)")
                m.check("disk full: one-line error, no success line, no final file",
                        ok and p.stdout == "" and not os.path.exists(out), why)
                subprocess.run(["mount", "-o", "remount,size=64m", small], check=True, capture_output=True)
                p = sparseseg(pred + ["-o", out], SPARSESEG_BUFFER_EVENTS=PRED_BUFFER)
                m.check("disk full: after space is freed the same command resumes, bit-identical",
                        p.returncode == 0 and "resumed after" in p.stdout and not differs(j("pred_ref.h5"), out),
                        f"exit {p.returncode} {last_line(p.stderr)!r} {p.stdout.strip()!r}")
            finally:
                subprocess.run(["umount", small], capture_output=True)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"tried {m.tried}, handled {m.handled} ({time.time() - t_start:.0f} s)")
    return 0 if m.tried == m.handled else 1


if __name__ == "__main__":
    sys.exit(main())
