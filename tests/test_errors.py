"""Configuration and OS errors are one-line messages (exit status 2), predict batches a file
without event ids a few images at a time, and a resumed training run checks its config."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from sparseseg import Event, checkpoint
from sparseseg import infer as infer_mod
from sparseseg.cli import UsageError, main
from sparseseg.config import resolve
from sparseseg.infer import MAX_GROUP_IMAGES, Predictor, predict_file
from sparseseg.io import EventFile, write_events
from sparseseg.models import build_model
from sparseseg.train import train

from conftest import random_event

TINY = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}


def cli(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(argv, capsys):
    """Run the CLI, expecting exit status 2 and a single stderr line; returns that line."""
    code, out, err = cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def make_weights(path, seed=0):
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in TINY.items() if k != "name"}
    model = build_model("uresnet", **kwargs)
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": dict(TINY)},
                           "classes": ["HIP", "MIP", "shower", "delta", "Michel"], "version": "test"})
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    events = [random_event((64, 48), 120, seed=s) for s in range(3)]
    write_events(str(d / "events.h5"), events)
    return {"dir": d, "events": str(d / "events.h5"), "weights": make_weights(d / "w.pt")}


# ---------------------------------------------------------------------------- config types
@pytest.mark.parametrize("user, message", [
    ({"train": {"lr": "fast"}}, "config: train.lr must be a number (float or int), got 'fast' (str)"),
    ({"train": {"lr": "1e-3"}}, "config: train.lr must be a number (float or int), got '1e-3' (str); YAML reads "
                                "1e-3 as a string, write it with a decimal point (e.g. 1.0e-3)"),
    ({"train": {"batch_size": True}}, "config: train.batch_size must be an integer (int), got True (bool)"),
    ({"train": {"max_steps": 10.0}}, "config: train.max_steps must be an integer (int), got 10.0 (float)"),
    ({"data": {"seed": 1.5}}, "config: data.seed must be an integer (int), got 1.5 (float)"),
    ({"weights": {"vertex_boost": "x"}}, "config: weights.vertex_boost must be a number (float or int), got 'x' (str)"),
    ({"weights": {"cluster": 1}}, "config: weights.cluster must be true or false (bool), got 1 (int)"),
    ({"weights": {"class_mode": 2}}, "config: weights.class_mode must be a string (str), got 2 (int)"),
    ({"train": {"optimizer": None}}, "config: train.optimizer must be a string (str), got None (NoneType)"),
    ({"model": {"name": 3}}, "config: model.name must be a string (str), got 3 (int)"),
    ({"data": {"augment": {"probability": "high"}}},
     "config: data.augment.probability must be a number (float or int), got 'high' (str)"),
    ({"data": {"augment": {"gain": [1.0]}}}, "config: data.augment.gain must be a list of two numbers [low, high], got [1.0]"),
    ({"weights": {"cluster_clip": [1, "a"]}},
     "config: weights.cluster_clip must be a list of two numbers [low, high], got [1, 'a']"),
    ({"train": {"seed": 2**64}}, f"config: train.seed must be an integer from 0 to 2**63 - 1, got {2**64}"),
    ({"data": {"val_seed": -1}}, "config: data.val_seed must be an integer from 0 to 2**63 - 1, got -1"),
    ({"train": {"threads": -2}}, "config: train.threads must be 0 or more, got -2"),
    ({"data": {"planes": "Y"}}, "config: data.planes must be a list of plane names (e.g. [Y]) or null, got 'Y'"),
    ({"data": {"train": 5, "simulate": None}},
     "config: data.train must be a file name, a list of file names or null, got 5"),
])
def test_config_values_of_the_wrong_type(user, message):
    with pytest.raises(ValueError) as e:
        resolve(user)
    assert str(e.value) == message


def test_config_accepts_ints_for_floats_and_the_shipped_configs():
    cfg = resolve({"train": {"lr": 1, "min_lr_ratio": 0}, "weights": {"vertex_radius": 3}})
    assert cfg["train"]["lr"] == 1 and cfg["weights"]["vertex_radius"] == 3
    from sparseseg import config

    for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml")):
        config.load(path)


def test_config_error_through_the_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": "fast"}}))
    line = error_line(["train", "--config", str(path), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert line == (f"sparseseg train: error: {path}: config: train.lr must be a number (float or int), "
                    "got 'fast' (str)")
    path.write_text(yaml.safe_dump({"train": {"batch_size": True}}))
    line = error_line(["train", "--config", str(path), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert line.endswith("config: train.batch_size must be an integer (int), got True (bool)")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv", [
    ["predict", "EVENTS", "-o", "OUT/p.h5", "--threads", "-1"],
    ["demo", "--out", "OUT/demo", "--threads", "-1"],
    ["roi-eval", "--out", "OUT/roi", "--threads", "-1"],
    ["robustness", "--threads", "-1"],
    ["bench", "--threads", "-1"],
])
def test_negative_threads(argv, files, tmp_path, capsys):
    argv = [a.replace("EVENTS", files["events"]).replace("OUT", str(tmp_path)) for a in argv]
    line = error_line(argv, capsys)
    assert line == f"sparseseg {argv[0]}: error: --threads -1: must be at least 1, or 0 for torch's default"
    assert list(tmp_path.iterdir()) == []


def test_devices(files, tmp_path, capsys, monkeypatch):
    base = ["predict", files["events"], "-o", str(tmp_path / "p.h5"), "--weights", files["weights"], "-q"]
    assert error_line(base + ["--device", "tpu"], capsys) == \
        "sparseseg predict: error: --device tpu: unknown device; expected cpu, cuda or cuda:N"
    assert error_line(base + ["--device", "mps"], capsys) == \
        "sparseseg predict: error: --device mps: device type 'mps' is not supported; expected cpu, cuda or cuda:N"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert error_line(base + ["--device", "cuda"], capsys) == (
        "sparseseg predict: error: --device cuda: this torch has no usable CUDA (torch.cuda.is_available() is False); "
        "use --device cpu")
    assert error_line(["bench", "--device", "cuda:1"], capsys).startswith("sparseseg bench: error: --device cuda:1: "
                                                                         "this torch has no usable CUDA")
    with pytest.raises(ValueError, match="device tpu: unknown device"):
        Predictor(device="tpu")
    with pytest.raises(ValueError, match=r"device cuda: this torch has no usable CUDA .* use device='cpu'"):
        Predictor(weights=files["weights"], device="cuda", precision="fp32").model(2)
    assert not (tmp_path / "p.h5").exists()


def test_huge_or_negative_seeds(tmp_path, capsys):
    for seed in (str(2**64 + 5), "-1"):
        line = error_line(["simulate", "--preset", "crop512", "-n", "1", "-q", "--seed", seed,
                           "-o", str(tmp_path / "s.h5")], capsys)
        assert line == f"sparseseg simulate: error: --seed {seed}: must be an integer from 0 to 2**63 - 1"
    line = error_line(["roi-eval", "--seed", str(2**63), "--out", str(tmp_path / "r")], capsys)
    assert line == f"sparseseg roi-eval: error: --seed {2**63}: must be an integer from 0 to 2**63 - 1"
    assert list(tmp_path.iterdir()) == []


def test_folders_given_as_files(files, tmp_path, capsys, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    assert error_line(["evaluate", files["events"], "--json", str(d)], capsys) == \
        f"sparseseg evaluate: error: --json {d}: is a directory; give a file name"
    assert error_line(["evaluate", files["events"], "--plot", str(tmp_path / "new") + "/"], capsys) == \
        f"sparseseg evaluate: error: --plot {tmp_path / 'new'}/: is a directory; give a file name"
    assert error_line(["evaluate", files["events"], "--json", str(tmp_path / "none" / "m.json")], capsys) == \
        f"sparseseg evaluate: error: --json {tmp_path / 'none' / 'm.json'}: folder {tmp_path / 'none'} does not exist"
    # show takes a folder (writing <folder>/event<ID>.png, see test_display_html), but not a missing one
    assert error_line(["show", files["events"], "-o", str(tmp_path / "none") + "/"], capsys) == \
        f"sparseseg show: error: -o {tmp_path / 'none'}/: folder {tmp_path / 'none'} does not exist"
    assert "is a directory" in error_line(["simulate", "--preset", "crop512", "-n", "1", "-q", "-o", str(d)], capsys)
    # a read-only folder (root ignores permission bits, so the check itself is faked)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(d) else real(p, mode))
    assert error_line(["bench", "--markdown", str(d / "b.md")], capsys) == \
        f"sparseseg bench: error: --markdown {d / 'b.md'}: folder {d} is not writable (read-only or no permission)"
    assert list(d.iterdir()) == []


def test_predict_into_a_folder_with_one_input(files, tmp_path, capsys):
    """One input and -o naming a folder (existing, or ending in /): <stem>.pred.h5 in it."""
    code, out, err = cli(["predict", files["events"], "-o", str(tmp_path / "new") + "/", "--weights", files["weights"],
                          "--precision", "fp32", "-q"], capsys)
    assert code == 0 and (tmp_path / "new" / "events.pred.h5").exists(), err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "x.h5", "-o", "y.h5", "--threads", "many"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == "sparseseg predict: error: argument --threads: invalid int value: 'many' (see sparseseg predict --help)\n"
    with pytest.raises(SystemExit):
        main(["nonsense"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparseseg: error: argument COMMAND: invalid choice: 'nonsense'")


def test_debug_keeps_the_traceback(files, tmp_path):
    with pytest.raises(UsageError, match="--threads -3"):
        main(["--debug", "predict", files["events"], "-o", str(tmp_path / "p.h5"), "--threads", "-3"])


def test_hdf5_read_errors_are_one_line_naming_the_file(files, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(Path(files["events"]).read_bytes())
    with h5py.File(bad, "r") as f:
        info = f["features"].id.get_chunk_info(0)
    with open(bad, "r+b") as fh:  # damage the compressed chunk of /features
        fh.seek(info.byte_offset + 16)
        fh.write(b"\xff" * max(1, info.size - 32))
    line = error_line(["info", str(bad)], capsys)
    assert line.startswith(f"sparseseg info: error: file {bad}: dataset '/features' rows ") and \
        "could not be read (" in line
    line = error_line(["predict", str(bad), "-o", str(tmp_path / "p.h5"), "--weights", files["weights"], "-q"], capsys)
    assert line.startswith(f"sparseseg predict: error: file {bad}: dataset '/features'")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(Path(files["events"]).read_bytes()[:3000])
    line = error_line(["info", str(cut)], capsys)
    assert line.startswith(f"sparseseg info: error: file {cut}: not a readable HDF5 file (corrupt or truncated?)")


# ---------------------------------------------------------------------------- batches without event ids
def test_file_without_event_ids_is_predicted_in_bounded_groups(tmp_path, monkeypatch, files):
    events = []
    for s in range(20):
        ev = random_event((64, 48), 100 + 5 * s, seed=100 + s)
        events.append(Event(ev.coords, ev.features, ev.shape, labels=ev.labels, meta={"plane": "Y"}))
    path = tmp_path / "noids.h5"
    write_events(str(path), events)
    with EventFile(str(path)) as f:
        assert len(set(f.event_ids.tolist())) == 1  # no ids: all entries look like one event
    sizes = []
    real = Predictor.predict

    def recording(self, batch):
        sizes.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Predictor, "predict", recording)
    predictor = Predictor(weights=files["weights"], precision="fp32")
    predict_file(str(path), str(tmp_path / "p.h5"), predictor, progress=False)
    assert max(sizes) <= MAX_GROUP_IMAGES == 8 and sum(sizes) == 20 and sizes == [8, 8, 4]
    monkeypatch.setattr(Predictor, "predict", real)
    single = Predictor(weights=files["weights"], precision="fp32")
    with EventFile(str(tmp_path / "p.h5")) as p:
        for i, ev in enumerate(events):
            (pred, scores), = single.predict([ev])
            assert np.array_equal(p.read_extra(i, "pred"), pred), i
            np.testing.assert_allclose(p.read_extra(i, "scores").astype(np.float32), scores, atol=1e-3)
    # the planes of one interaction still go together; a long run of one id is split too
    ids = np.array([5, 5, 5, 6, 6, 6] + [7] * 19)
    assert infer_mod._groups(ids, 0) == [[0, 1, 2], [3, 4, 5], list(range(6, 14)), list(range(14, 22)), [22, 23, 24]]
    assert infer_mod._groups(ids, 4, cap=2) == [[4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15], [16, 17],
                                                [18, 19], [20, 21], [22, 23], [24]]


# ---------------------------------------------------------------------------- training resume
@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "train.h5"
    write_events(str(path), [random_event((32, 32), 60, seed=s) for s in range(6)])
    return path


def tiny_config(train_file, **train):
    t = {"batch_size": 2, "max_steps": 2, "lr": 0.01, "warmup_steps": 1, "val_every": 2, "log_every": 1,
         "checkpoint_every": 2, "threads": 1, "precision": "fp32"}
    t.update(train)
    return {"model": {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1},
            "data": {"simulate": None, "train": str(train_file), "val": str(train_file), "val_images": 2,
                     "num_workers": 0},
            "train": t}


def test_resume_refuses_model_and_optimizer_changes(tmp_path, train_file, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(train_file)
    train(cfg, run, progress=False)
    ckpt = run / "checkpoint.pt"
    before = ckpt.read_bytes()
    changed = tiny_config(train_file, max_steps=3)
    changed["model"]["filters"] = 8
    with pytest.raises(ValueError) as e:
        train(changed, run, resume=True, progress=False)
    assert str(e.value) == (f"--resume: {ckpt} cannot continue with changed model.filters 4 -> 8: its model weights "
                            "and optimizer state do not fit them; train into a new --out")
    with pytest.raises(ValueError) as e:
        train(tiny_config(train_file, optimizer="sgd", weight_decay=0.001), run, resume=True, progress=False)
    assert str(e.value) == (f"--resume: {ckpt} cannot continue with changed train.optimizer \"adam\" -> \"sgd\", "
                            "train.weight_decay 0.0 -> 0.001: its model weights and optimizer state do not fit them; "
                            f"train into a new --out (train.init: {ckpt} starts a new run from these weights)")
    assert ckpt.read_bytes() == before
    # through the CLI: one line, exit 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    line = error_line(["train", "--config", str(path), "--out", str(run), "--resume", "-q"], capsys)
    assert line.startswith(f"sparseseg train: error: --resume: {ckpt} cannot continue with changed model.filters 4 -> 8")


def test_resume_records_and_warns_about_other_changes(tmp_path, train_file, capsys):
    run = tmp_path / "run"
    train(tiny_config(train_file), run, progress=False)
    capsys.readouterr()
    train(tiny_config(train_file, lr=0.005, batch_size=1, momentum=0.5), run, resume=True, max_steps=3,
          progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resuming at step 2 of 3 from {run / 'checkpoint.pt'}",
                   "sparseseg train: warning: resuming with changed train.batch_size 2 -> 1, train.lr 0.01 -> 0.005, "
                   f"train.max_steps 2 -> 3, train.momentum 0.9 -> 0.5 (recorded in {run / 'metrics.jsonl'})"]
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in log if "resume_changed" in r]
    assert records == [{"step": 2, "resume_changed": {"train.batch_size": [2, 1], "train.lr": [0.01, 0.005],
                                                      "train.max_steps": [2, 3], "train.momentum": [0.9, 0.5]}}]
    saved = checkpoint.load(run / "checkpoint.pt")
    assert saved["step"] == 3 and saved["config"]["train"]["lr"] == 0.005 and saved["config"]["train"]["max_steps"] == 3
    # resuming again with the now saved settings: nothing changed, nothing recorded
    train(tiny_config(train_file, lr=0.005, batch_size=1, momentum=0.5, max_steps=4), run, resume=True,
          progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"resuming at step 3 of 4 from {run / 'checkpoint.pt'}"
    assert err[1] == ("sparseseg train: warning: resuming with changed train.max_steps 3 -> 4 "
                      f"(recorded in {run / 'metrics.jsonl'})")
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["resume_changed"] for r in log if "resume_changed" in r] == [
        records[0]["resume_changed"], {"train.max_steps": [3, 4]}]
    with pytest.raises(ValueError, match="--max-steps 0: must be a positive integer"):
        train(tiny_config(train_file), run, resume=True, max_steps=0, progress=False)


def test_internal_errors_are_reported_as_bugs_not_as_bad_input(tmp_path, monkeypatch, capsys):
    import sparseseg.cli as cli_mod

    path = tmp_path / "ev.h5"
    write_events(path, [random_event((32, 32), 40, seed=1)])

    def broken(file):  # an operation that fails inside the package: a bug, not the user's input
        return [][1]

    monkeypatch.setattr(cli_mod, "file_info", broken)
    code, out, err = cli(["info", str(path)], capsys)
    assert code == 70 and out == ""
    assert err.splitlines()[0] == "sparseseg info: internal error: IndexError: list index out of range"
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(IndexError):
        main(["--debug", "info", str(path)])

    def refuses(file):  # a check inside the package, raised with a message for the user
        from sparseseg.metrics import confusion_matrix

        return confusion_matrix([0], [0, 1])

    monkeypatch.setattr(cli_mod, "file_info", refuses)
    line = error_line(["info", str(path)], capsys)
    assert line.startswith("sparseseg info: error: confusion_matrix: truth has 1 pixels but pred has 2")


def test_resume_records_a_simulator_version_change(tmp_path, capsys):
    """Same config, other physics: a run on a simulated stream resumed by another simulator
    version says so (checkpoints record the version; one without it is 'unrecorded')."""
    import torch

    from sparseseg.simulate import SIMULATOR_VERSION

    cfg = {"model": {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1},
           "data": {"simulate": "crop512", "seed": 2, "val_images": 1, "num_workers": 0, "planes": ["Y"]},
           "train": {"batch_size": 1, "max_steps": 1, "val_every": 1, "log_every": 1, "checkpoint_every": 1,
                     "threads": 1, "warmup_steps": 1}}
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["simulator_version"] == SIMULATOR_VERSION
    del ckpt["simulator_version"]  # as written before checkpoints recorded it
    torch.save(ckpt, run / "checkpoint.pt")
    capsys.readouterr()
    train(cfg, run, resume=True, max_steps=2, progress=False)
    err = capsys.readouterr().err
    assert f'simulator_version "unrecorded" -> "{SIMULATOR_VERSION}"' in err
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["resume_changed"] for r in log if "resume_changed" in r] == [
        {"simulator_version": ["unrecorded", SIMULATOR_VERSION], "train.max_steps": [1, 2]}]


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_empty_config_file_is_an_error_not_the_defaults(tmp_path, capsys, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    line = error_line(["train", "--config", str(path), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert line == (f"sparseseg train: error: config {path}: the file is empty (write at least one section, "
                    "e.g. 'model: {name: uresnet}'; configs/*.yaml are complete examples)")
    assert not (tmp_path / "run").exists()
