"""Faults while writing: kill -9 at several instants (also inside a segment write), a full disk,
eviction signals, resumes with other inputs or settings, two writers, partial outputs given to
readers, outputs that would overwrite an input, and bad numbers at predict's boundary."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from sparseseg import checkpoint
from sparseseg.cli import main
from sparseseg.infer import Predictor, predict_file
from sparseseg.io import EventFile, EventWriter, write_events
from sparseseg.io import writer as h5mod
from sparseseg.models import build_model
from sparseseg.simulate import simulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}


# ---------------------------------------------------------------------------- helpers
def file_contents(path):
    """Every dataset and every root attribute of an HDF5 file."""
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: data.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return data, attrs


def _without_command(attrs):
    """Root attributes less the recorded command line (it names the output file, which differs
    between the runs compared here)."""
    out = {k: v for k, v in attrs.items() if k != "command"}
    if "attrs_json" in out:
        out["attrs_json"] = json.dumps({k: v for k, v in json.loads(out["attrs_json"]).items() if k != "command"})
    return out


def assert_identical(p, q, *, same_command=False):
    (a, aa), (b, ba) = file_contents(p), file_contents(q)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name
    assert aa == ba if same_command else _without_command(aa) == _without_command(ba)


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    e.pop("SPARSESEG_FAULT", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run_cli(args, **extra):
    return subprocess.run([sys.executable, "-m", "sparseseg.cli", *args], capture_output=True, text=True,
                          env=env(**extra), timeout=300)


def cli(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def weights(path, seed=0):
    torch.manual_seed(seed)
    cfg = dict(TINY)
    cfg.pop("name")
    model = build_model("uresnet", **cfg)
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": dict(TINY)},
                           "classes": ["HIP", "MIP", "shower", "delta", "Michel"], "version": "test"})
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    events = list(simulate("crop512", 3, 11))  # 9 images
    write_events(str(d / "events.h5"), events, attrs={"preset": "crop512", "adc_max": 300.0})
    return {"dir": d, "events": str(d / "events.h5"), "weights": weights(d / "w.pt"),
            "weights2": weights(d / "w2.pt", seed=1), "n": len(events)}


# ---------------------------------------------------------------------------- kill -9
WRITER = """
import sys
import numpy as np
from sparseseg import Event
from sparseseg.io import EventWriter
out = sys.argv[1]
with EventWriter(out, extras={"pred": ("uint8", ())}, attrs={"k": 1}, resume=True, identity={"run": "a"}) as w:
    for i in range(w.n_done, 11):
        n = 5 + 7 * i
        c = np.stack([np.arange(n), np.full(n, i)], 1).astype(np.int32)
        ev = Event(coords=c, features=np.full((n, 1), float(i), np.float32), shape=(300, 40),
                   labels=np.full(n, i % 5, np.uint8), meta={"event_id": i, "plane": "Y"})
        w.append(ev, extras={"pred": np.full(n, (i + 1) % 5, np.uint8)})
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "straight.h5"
    p = subprocess.run([sys.executable, "-c", WRITER, str(out)], env=env(SPARSESEG_BUFFER_EVENTS=3),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return str(out)


@pytest.mark.parametrize("point", ["segment-write:1", "segment-write:3", "segment-renamed:2", "segment-done:2",
                                   "assemble:1", "final-renamed:1"])
def test_kill9_then_resume_is_bit_identical(straight, tmp_path, point):
    out = tmp_path / "out.h5"
    p = subprocess.run([sys.executable, "-c", WRITER, str(out)], capture_output=True, text=True, timeout=120,
                       env=env(SPARSESEG_BUFFER_EVENTS=3, SPARSESEG_FAULT=point))
    assert p.returncode == -9, p.stderr
    if not point.startswith("final-renamed"):
        assert not out.exists()  # nothing under the final name before the end
        with pytest.raises(ValueError, match="unfinished output"):
            EventFile(str(out) + ".partial")
    p = subprocess.run([sys.executable, "-c", WRITER, str(out)], capture_output=True, text=True, timeout=120,
                       env=env(SPARSESEG_BUFFER_EVENTS=3))
    assert p.returncode == 0, p.stderr
    assert not os.path.exists(str(out) + ".partial")
    assert_identical(straight, str(out))


def test_kill9_simulate_mid_interaction_then_resume(tmp_path):
    args = ["simulate", "--preset", "crop512", "-n", "3", "--seed", "4", "-q"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run_cli(args + ["-o", str(a)]).returncode == 0
    p = run_cli(args + ["-o", str(b)], SPARSESEG_BUFFER_EVENTS=2, SPARSESEG_FAULT="segment-write:3")
    assert p.returncode == -9 and not b.exists()
    assert h5mod.partial_events(str(b)) == 4  # two segments of 2 images: inside the second interaction
    p = run_cli(args + ["-o", str(b)], SPARSESEG_BUFFER_EVENTS=2)
    assert p.returncode == 0 and "resumed after 4 images" in p.stdout, p.stderr
    assert_identical(str(a), str(b))


# ---------------------------------------------------------------------------- write errors
def test_disk_full_is_one_line_then_resume(tmp_path, capsys, monkeypatch):
    args = ["simulate", "--preset", "crop512", "-n", "3", "--seed", "2", "-q"]
    clean, out = tmp_path / "clean.h5", tmp_path / "out.h5"
    assert main(args + ["-o", str(clean)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(h5mod, "BUFFER_EVENTS", 2)
    real = h5mod._write_durable
    calls = []

    def full_after_two_segments(directory, name, data, fault=None):
        if name.startswith("seg-") and name.endswith(".h5"):
            calls.append(name)
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(directory, name, data, fault)

    monkeypatch.setattr(h5mod, "_write_durable", full_after_two_segments)
    code, text, err = cli(args + ["-o", str(out)], capsys)
    line = one_line(err)
    assert code == 2 and text == ""  # no success line
    assert "No space left on device (ENOSPC)" in line and "out.h5.partial/seg-000002.h5" in line, line
    assert not out.exists()
    # the disk is freed: the same command resumes
    monkeypatch.setattr(h5mod, "_write_durable", real)
    code, text, err = cli(args + ["-o", str(out)], capsys)
    assert code == 0 and "resumed after 4 images" in text, err
    assert_identical(str(clean), str(out))


def test_write_error_while_assembling_leaves_no_final_file(tmp_path, capsys, monkeypatch):
    args = ["simulate", "--preset", "crop512", "-n", "2", "--seed", "2", "-q", "-o", str(tmp_path / "out.h5")]
    real = h5mod._fsync_file

    def eio(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(h5mod, "_fsync_file", eio)
    code, text, err = cli(args, capsys)
    assert code == 2 and text == "" and "Input/output error (EIO)" in one_line(err)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.h5.partial"]  # no final file, no temp file
    monkeypatch.setattr(h5mod, "_fsync_file", real)
    code, text, err = cli(args, capsys)
    assert code == 0 and "resumed after 6 images" in text


def test_read_only_or_forbidden_folder_is_one_line(tmp_path, capsys, monkeypatch):
    argv = ["simulate", "--preset", "crop512", "-n", "1", "-q", "-o"]
    if os.geteuid() != 0:  # root ignores folder permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            code, text, err = cli(argv + [str(ro / "x.h5")], capsys)
        finally:
            ro.chmod(0o755)
        assert code == 2 and "Permission denied (EACCES)" in one_line(err) and str(ro / "x.h5") in err
    real = os.makedirs

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path / "rofs")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(h5mod.os, "makedirs", read_only)
    code, text, err = cli(argv + [str(tmp_path / "rofs" / "x.h5")], capsys)
    line = one_line(err)
    assert code == 2 and text == "" and "Read-only file system (EROFS)" in line and "rofs/x.h5.partial" in line, line
    monkeypatch.setattr(h5mod.os, "makedirs", real)
    code, text, err = cli(argv + [str(tmp_path)], capsys)  # a folder given as the output file
    assert code == 2 and "is a directory" in one_line(err)


# ---------------------------------------------------------------------------- eviction
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_during_segment_write_saves_and_says_how_to_resume(tmp_path, sig):
    args = ["simulate", "--preset", "crop512", "-n", "3", "--seed", "9", "-q"]
    out = tmp_path / "out.h5"
    p = run_cli(args + ["-o", str(out)], SPARSESEG_BUFFER_EVENTS=2, SPARSESEG_FAULT=f"segment-write:2:{sig}")
    signum = getattr(signal, sig)
    assert p.returncode == 128 + signum, p.stderr
    line = one_line(p.stderr)
    assert line == (f"sparseseg simulate: stopped by {sig}: 4 images saved in {out}.partial; "
                    "rerun the same command to resume")
    assert p.stdout == "" and not out.exists()
    assert h5mod.partial_events(str(out)) == 4  # the segment being written when the signal came was finished
    p = run_cli(args + ["-o", str(out)], SPARSESEG_BUFFER_EVENTS=2)
    assert p.returncode == 0 and "resumed after 4 images" in p.stdout
    assert run_cli(args + ["-o", str(tmp_path / "clean.h5")]).returncode == 0
    assert_identical(str(tmp_path / "clean.h5"), str(out))


def test_sigterm_from_outside_during_predict(data, tmp_path):
    out = tmp_path / "p.h5"
    argv = ["predict", data["events"], "-o", str(out), "--weights", data["weights"], "--threads", "1", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "sparseseg.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(SPARSESEG_BUFFER_EVENTS=1))
    partial = str(out) + ".partial"
    deadline = time.time() + 120
    while time.time() < deadline and h5mod.partial_events(str(out)) < 1 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 143, stderr
    line = one_line(stderr)
    assert line.startswith("sparseseg predict: stopped by SIGTERM: ") and line.endswith(
        f"images saved in {partial}; rerun the same command to resume")
    saved = int(line.split(": ")[2].split()[0])
    assert saved == h5mod.partial_events(str(out)) >= 1
    p = run_cli(argv)
    assert p.returncode == 0 and f"resumed after {saved} images" in p.stdout, p.stderr
    whole = tmp_path / "whole.h5"
    predict_file(data["events"], str(whole), Predictor(weights=data["weights"]), progress=False)
    assert_identical(str(whole), str(out))


# ---------------------------------------------------------------------------- resume checks
class Boom(RuntimeError):
    pass


def _crash_after_first_group(data, out, monkeypatch):
    monkeypatch.setattr(h5mod, "BUFFER_EVENTS", 2)
    real = Predictor.predict
    calls = []

    def predict(self, events):
        calls.append(1)
        if len(calls) == 2:
            raise Boom()
        return real(self, events)

    monkeypatch.setattr(Predictor, "predict", predict)
    with pytest.raises(Boom):
        predict_file(data["events"], str(out), Predictor(weights=data["weights"]), progress=False)
    monkeypatch.setattr(Predictor, "predict", real)
    assert h5mod.partial_events(str(out)) == 3  # the first interaction's three planes were saved


def test_resume_with_other_weights_or_input_is_refused(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.h5"
    _crash_after_first_group(data, out, monkeypatch)
    base = ["predict", data["events"], "-o", str(out), "-q"]
    code, _, err = cli(base + ["--weights", data["weights2"]], capsys)
    line = one_line(err)
    assert code == 2 and "cannot resume" in line and '"weights_sha256"' in line and "--restart" in line, line
    code, _, err = cli(base + ["--weights", data["weights"], "--min-score", "delta=0.5"], capsys)
    assert code == 2 and '"min_scores": ""' in one_line(err)
    # an input of the same name with other contents
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = other_dir / "events.h5"
    write_events(str(other), list(simulate("crop512", 3, 12)), attrs={"preset": "crop512", "adc_max": 300.0})
    code, _, err = cli(["predict", str(other), "-o", str(out), "-q", "--weights", data["weights"]], capsys)
    assert code == 2 and '"input"' in one_line(err)
    # the same input touched
    os.utime(data["events"], ns=(time.time_ns(), time.time_ns()))
    code, _, err = cli(base + ["--weights", data["weights"]], capsys)
    assert code == 2 and '"input"' in one_line(err) and "mtime_ns" in err
    assert h5mod.partial_events(str(out)) == 3  # the refusals left the partial alone
    code, text, err = cli(base + ["--weights", data["weights2"], "--restart"], capsys)
    assert code == 0 and "resumed" not in text, err
    whole = tmp_path / "whole.h5"
    predict_file(data["events"], str(whole), Predictor(weights=data["weights2"]), progress=False)
    assert_identical(str(whole), str(out))


def test_simulate_resume_checks_its_settings(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.h5"
    monkeypatch.setattr(h5mod, "BUFFER_EVENTS", 2)
    monkeypatch.setattr(h5mod, "FAULT_ENV", "SPARSESEG_TEST_NO_FAULT")
    real = h5mod.EventWriter.close

    def crash(self):
        self.abort()
        raise Boom()

    monkeypatch.setattr(h5mod.EventWriter, "close", crash)
    with pytest.raises(Boom):
        main(["simulate", "--preset", "crop512", "-n", "2", "--seed", "1", "-q", "-o", str(out)])
    monkeypatch.setattr(h5mod.EventWriter, "close", real)
    capsys.readouterr()
    for change, key in ((["--seed", "2"], "seed"), (["--label-rule", "legacy"], "label_rule"),
                        (["--start", "1"], "start"), (["-n", "3"], '"n"')):
        argv = ["simulate", "--preset", "crop512", "-n", "2", "--seed", "1", "-q", "-o", str(out)]
        for opt, value in zip(change[::2], change[1::2]):
            if opt in argv:
                argv[argv.index(opt) + 1] = value
            else:
                argv += [opt, value]
        code, _, err = cli(argv, capsys)
        assert code == 2 and key in one_line(err) and "--restart" in err, (change, err)
    code, text, _ = cli(["simulate", "--preset", "crop512", "-n", "2", "--seed", "1", "-q", "-o", str(out)], capsys)
    assert code == 0 and "resumed after 6 images" in text


# ---------------------------------------------------------------------------- one writer
def test_second_writer_is_refused(tmp_path, capsys):
    out = tmp_path / "x.h5"
    with EventWriter(out, attrs={"a": 1}) as w:
        with pytest.raises(ValueError, match=rf"another process \(pid {os.getpid()}\b.*\) is writing this output"):
            EventWriter(out, attrs={"a": 1})
        code, text, err = cli(["simulate", "--preset", "crop512", "-n", "1", "-q", "-o", str(out)], capsys)
        assert code == 2 and f"another process (pid {os.getpid()}" in one_line(err)
        assert w.n_written == 0
    with EventFile(out) as f:
        assert len(f) == 0 and f.attrs["a"] == 1  # the first writer's file, untouched by the second
    # a writer that died (kill -9) leaves its lock free
    p = subprocess.run([sys.executable, "-c", "import os, sys; from sparseseg.io import EventWriter; "
                        "w = EventWriter(sys.argv[1]); os.kill(os.getpid(), 9)", str(out)], env=env(), timeout=60)
    assert p.returncode == -9
    with EventWriter(out, resume=True) as w:
        assert w.n_done == 0


# ---------------------------------------------------------------------------- readers and inputs
def test_readers_refuse_partial_outputs(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.h5"
    _crash_after_first_group(data, out, monkeypatch)
    partial = str(out) + ".partial"
    for argv in (["info", partial], ["evaluate", partial], ["info", partial + "/seg-000000.h5"],
                 ["show", data["events"], "--pred", partial, "-o", str(tmp_path / "e.png")]):
        code, _, err = cli(argv, capsys)
        line = one_line(err)
        assert code == 2 and ("unfinished output" in line or "not an event file" in line), (argv, line)
    code, _, err = cli(["info", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in one_line(err)


def test_outputs_never_overwrite_an_input(data, tmp_path, capsys):
    before = open(data["events"], "rb").read()
    for argv in (["predict", data["events"], "-o", data["events"], "--weights", data["weights"], "-q"],
                 ["predict", data["events"], "-o", os.path.join(os.path.dirname(data["events"]), ".", "events.h5"),
                  "--weights", data["weights"], "-q"],
                 ["evaluate", data["events"], "--json", data["events"]],
                 ["evaluate", data["events"], "--plot", data["events"]]):
        code, _, err = cli(argv, capsys)
        assert code == 2 and "is the input file" in one_line(err), argv
    assert open(data["events"], "rb").read() == before


# ---------------------------------------------------------------------------- numbers
def _with_features(src, dst, fn):
    import shutil

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as h:
        feats = h["features"][()]
        fn(feats, h["offsets"][()])
        h["features"][...] = feats
    return str(dst)


def test_bad_features_refused_and_large_ones_clipped(data, tmp_path, capsys):
    w = ["--weights", data["weights"], "-q"]

    def nan(f, off):
        f[off[4] + 3, 0] = np.nan

    def neg(f, off):
        f[off[2] + 1, 0] = -5.0

    bad = _with_features(data["events"], tmp_path / "nan.h5", nan)
    code, text, err = cli(["predict", bad, "-o", str(tmp_path / "o1.h5"), *w], capsys)
    assert code == 2 and "event 4" in one_line(err) and "NaN or inf" in err and bad in err
    bad = _with_features(data["events"], tmp_path / "neg.h5", neg)
    code, text, err = cli(["predict", bad, "-o", str(tmp_path / "o2.h5"), *w], capsys)
    assert code == 2 and f"{bad}: event 2" in one_line(err) and "negative" in err
    assert not (tmp_path / "o1.h5").exists() and not (tmp_path / "o2.h5").exists()

    def huge(f, off):
        f[off[1] : off[1] + 10, 0] = 3e38

    def at_clip(f, off):
        f[off[1] : off[1] + 10, 0] = 300.0

    big = _with_features(data["events"], tmp_path / "big.h5", huge)
    ref = _with_features(data["events"], tmp_path / "ref.h5", at_clip)
    code, text, err = cli(["predict", big, "-o", str(tmp_path / "big.pred.h5"), *w], capsys)
    assert code == 0 and "10 feature values clipped to 300" in text
    line = one_line(err)
    assert line.startswith("sparseseg predict: warning: ") and "event 1" in line and "above 300" in line
    assert cli(["predict", ref, "-o", str(tmp_path / "ref.pred.h5"), *w], capsys)[0] == 0
    with EventFile(str(tmp_path / "big.pred.h5")) as a, EventFile(str(tmp_path / "ref.pred.h5")) as b:
        for i in range(len(a)):
            assert np.isfinite(a.read_extra(i, "scores")).all()
            np.testing.assert_array_equal(a.read_extra(i, "pred"), b.read_extra(i, "pred"))
        assert a[1].features.max() == np.float32(3e38)  # the input's values are kept in the output


def test_nan_scores_are_an_error(data, tmp_path, capsys, monkeypatch):
    def nan_scores(self, events):
        out = [np.full((len(ev), 5), 0.2, np.float32) for ev in events]
        out[0][0, 2] = np.nan
        return out

    monkeypatch.setattr(Predictor, "scores", nan_scores)
    out = tmp_path / "o.h5"
    code, text, err = cli(["predict", data["events"], "-o", str(out), "--weights", data["weights"], "-q"], capsys)
    assert code == 2 and "non-finite scores" in one_line(err) and "event 0" in err
    assert not out.exists() and h5mod.partial_events(str(out)) == 0


def test_report_write_on_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """Reports (metrics.json, roi tables, pages, training logs) are written whole or not at all."""
    from sparseseg import atomic

    path = tmp_path / "metrics.json"
    atomic.write_text(path, '{"accuracy": 0.9}')
    real = os.fsync

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", enospc)
    with pytest.raises(OSError, match="No space left on device"):
        atomic.write_text(path, '{"accuracy": 0.1}')
    monkeypatch.setattr(atomic.os, "fsync", real)
    assert path.read_text() == '{"accuracy": 0.9}'
    assert [q.name for q in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left
