"""evaluate: per-image rows, 2D and 3D kept apart, plane selection; predict --planes and its
resume identity; explicit names for images without a plane; train --threads/--device; a
closed stdout; export of the sparse UResNet's weights into its dense twin."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparseseg import Event, checkpoint
from sparseseg.cli import main
from sparseseg.infer import EXTRAS, Predictor, evaluate_files, predict_file
from sparseseg.io import EventFile, EventWriter, write_events
from sparseseg.io import writer as h5mod
from sparseseg.models import build_model

from conftest import random_event

CLASSES = ["HIP", "MIP", "shower", "delta", "Michel"]
TINY = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}


from test_errors import cli, error_line  # noqa: E402  (the CLI helpers of the error tests)


def _named(ev, meta):
    return Event(ev.coords, ev.features, ev.shape, labels=ev.labels, clusters=ev.clusters, vertices=ev.vertices,
                 meta=meta)


def _pred_of(labels, k):
    """A prediction that is the truth except every 4th pixel (shifted by one class, rotating with k)."""
    pred = np.where(labels == 255, 0, labels).astype(np.uint8)
    pred[k % 4::4] = (pred[k % 4::4] + 1) % 5
    return pred


def _write_preds(path, events):
    preds = [_pred_of(ev.labels, k) for k, ev in enumerate(events)]
    with EventWriter(str(path), extras=EXTRAS) as w:
        for ev, pred in zip(events, preds):
            scores = np.eye(5, dtype=np.float16)[pred]
            w.append(ev, extras={"pred": pred, "scores": scores})
    return preds


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    """Hand-made prediction files: 2D (event ids 10, 11 x planes U, V, Y) and 3D (2 volumes)."""
    d = tmp_path_factory.mktemp("evaluate")
    ev2 = []
    for k, (eid, plane) in enumerate([(e, p) for e in (10, 11) for p in "UVY"]):
        ev2.append(_named(random_event((24, 20), 60, seed=k), {"plane": plane, "event_id": eid}))
    labels0 = ev2[0].labels.copy()
    labels0[labels0 == 4] = 3  # image 0 has no Michel truth: its Michel efficiency is undefined
    ev2[0] = Event(ev2[0].coords, ev2[0].features, ev2[0].shape, labels=labels0, clusters=ev2[0].clusters,
                   vertices=ev2[0].vertices, meta=ev2[0].meta)
    ev3 = [_named(random_event((8, 8, 8), 50, seed=20 + k), {"plane": "3D", "event_id": 30 + k}) for k in range(2)]
    p2, p3 = d / "p2.h5", d / "p3.h5"
    return {"dir": d, "p2": str(p2), "p3": str(p3), "ev2": ev2, "ev3": ev3,
            "pred2": _write_preds(p2, ev2), "pred3": _write_preds(p3, ev3)}


def _expected_row(ev, pred):
    valid = ev.labels != 255
    t, p = ev.labels[valid].astype(int), pred[valid].astype(int)
    row = {"pixels": len(ev), "scored_pixels": int(valid.sum()), "accuracy": float((t == p).mean()),
           "track_shower_accuracy": float(((t <= 1) == (p <= 1)).mean())}
    for c, name in enumerate(CLASSES):
        row[f"efficiency_{name}"] = float(((t == c) & (p == c)).sum() / (t == c).sum()) if (t == c).any() else None
    return row


# ---------------------------------------------------------------------------- evaluate --per-event
def test_per_event_csv_and_jsonl(preds, tmp_path, capsys):
    out_csv, out_jsonl = tmp_path / "rows.csv", tmp_path / "rows.jsonl"
    code, text, _ = cli(["evaluate", preds["p2"], "--per-event", str(out_csv)], capsys)
    assert code == 0 and f"wrote 6 per-image rows to {out_csv}" in text
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "entry", "event_id", "plane", "dim", "pixels", "scored_pixels", "accuracy",
                             "track_shower_accuracy"] + [f"efficiency_{n}" for n in CLASSES]
    assert [(r["event_id"], r["plane"]) for r in rows] == [(str(e), p) for e in (10, 11) for p in "UVY"]
    for k, (r, ev, pred) in enumerate(zip(rows, preds["ev2"], preds["pred2"])):
        want = _expected_row(ev, pred)
        assert r["file"] == preds["p2"] and r["entry"] == str(k) and r["dim"] == "2"
        assert int(r["pixels"]) == want["pixels"] == 60 and int(r["scored_pixels"]) == want["scored_pixels"]
        for key in ["accuracy", "track_shower_accuracy"] + [f"efficiency_{n}" for n in CLASSES]:
            if want[key] is None:
                assert r[key] == ""
            else:
                assert float(r[key]) == pytest.approx(want[key], abs=1e-12), (k, key)
    assert rows[0]["efficiency_Michel"] == ""  # no Michel truth in image 0
    assert 0.6 < float(rows[0]["accuracy"]) < 0.9  # every 4th pixel is wrong

    code, text, _ = cli(["evaluate", preds["p2"], preds["p3"], "--per-event", str(out_jsonl)], capsys)
    assert code == 0
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(lines) == 8 and [r["dim"] for r in lines] == [2] * 6 + [3] * 2
    assert lines[0]["efficiency_Michel"] is None and lines[0]["event_id"] == 10 and lines[0]["plane"] == "U"
    assert lines[6]["plane"] == "3D" and lines[6]["event_id"] == 30 and lines[6]["file"] == preds["p3"]
    want = _expected_row(preds["ev3"][1], preds["pred3"][1])
    assert lines[7]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert lines[7]["scored_pixels"] == want["scored_pixels"]


def test_per_event_needs_a_known_extension(preds, tmp_path, capsys):
    target = tmp_path / "rows.txt"
    assert error_line(["evaluate", preds["p2"], "--per-event", str(target)], capsys) == \
        f"sparseseg evaluate: error: --per-event {target}: unknown format; name the file *.csv or *.jsonl"
    assert error_line(["evaluate", preds["p2"], "--per-event", preds["p2"] + ".csv", "--json", preds["p2"] + ".csv"],
                      capsys) == f"sparseseg evaluate: error: --json and --per-event are the same file {preds['p2']}.csv; give two names"
    assert not target.exists()


# ---------------------------------------------------------------------------- 2D and 3D apart
def test_2d_and_3d_are_separate_tables(preds, tmp_path, capsys):
    js, png = tmp_path / "m.json", tmp_path / "cm.png"
    code, text, _ = cli(["evaluate", preds["p2"], preds["p3"], "--json", str(js), "--plot", str(png)], capsys)
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == "2D: 6 images" and "3D: 2 images" in lines
    m = json.loads(js.read_text())
    assert set(m) == {"2D", "3D"} and m["2D"]["dim"] == 2 and m["3D"]["dim"] == 3
    for key, evs, prs in (("2D", preds["ev2"], preds["pred2"]), ("3D", preds["ev3"], preds["pred3"])):
        lab = np.concatenate([e.labels for e in evs])
        pr = np.concatenate(prs)
        valid = lab != 255
        assert m[key]["pixels"] == int(valid.sum())
        assert m[key]["accuracy"] == pytest.approx(float((lab[valid] == pr[valid]).mean()), abs=1e-12)
    assert list(m["2D"]["per_plane"]) == ["U", "V", "Y"] and list(m["3D"]["per_plane"]) == ["3D"]
    assert (tmp_path / "cm.2D.png").stat().st_size > 1000 and (tmp_path / "cm.3D.png").stat().st_size > 1000
    assert not png.exists()
    # one dimension: the flat summary as before, with its dimension
    code, text, _ = cli(["evaluate", preds["p3"], "--json", str(js)], capsys)
    m3 = json.loads(js.read_text())
    assert code == 0 and m3["dim"] == 3 and m3["pixels"] == m["3D"]["pixels"] and text.startswith("pixels")
    with pytest.raises(ValueError, match="hold both 2D and 3D images; their pixels are not pooled"):
        evaluate_files([preds["p2"], preds["p3"]])


# ---------------------------------------------------------------------------- evaluate --planes
def test_evaluate_planes(preds, tmp_path, capsys):
    js = tmp_path / "m.json"
    code, text, _ = cli(["evaluate", preds["p2"], "--planes", "U,V", "--json", str(js),
                         "--per-event", str(tmp_path / "r.jsonl")], capsys)
    assert code == 0 and "scored planes U, V only; skipped 2 images of planes Y" in text
    m = json.loads(js.read_text())
    assert list(m["per_plane"]) == ["U", "V"] and m["planes"] == ["U", "V"] and m["events"] == 4
    keep = [k for k, ev in enumerate(preds["ev2"]) if ev.meta["plane"] in "UV"]
    assert m["pixels"] == sum(int((preds["ev2"][k].labels != 255).sum()) for k in keep)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["entry"] for r in rows] == keep
    assert error_line(["evaluate", preds["p2"], "--planes", "U,W"], capsys) == \
        f"sparseseg evaluate: error: --planes U,W: no image of plane W in {preds['p2']} (planes there: U, V, Y)"
    assert error_line(["evaluate", preds["p2"], "--planes", "U,"], capsys) == \
        "sparseseg evaluate: error: --planes 'U,': expected comma-separated plane names, e.g. U,V or Y"


# ---------------------------------------------------------------------------- images without a plane name
def test_images_without_a_plane_name_are_named_by_dimension(tmp_path, capsys):
    ev = random_event((12, 10), 20, seed=1)
    bare = Event(ev.coords, ev.features, ev.shape, labels=ev.labels, clusters=ev.clusters)
    assert bare.plane == "2D" and "plane=2D" in repr(bare)
    assert Event(ev.coords, ev.features, ev.shape, meta={"plane": ""}).plane == "2D"
    assert Event(ev.coords, ev.features, ev.shape, meta={"plane": None}).plane == "2D"
    v = random_event((4, 4, 4), 10, seed=2)
    assert Event(v.coords, v.features, v.shape).plane == "3D"
    long_name = "collection-plane-Y-long"  # longer than the plane column: kept in the JSON meta
    events = [bare, _named(random_event((12, 10), 20, seed=3), {"plane": long_name, "event_id": 1})]
    path = tmp_path / "p.h5"
    _write_preds(path, events)
    js = tmp_path / "m.json"
    code, text, _ = cli(["evaluate", str(path), "--json", str(js)], capsys)
    assert code == 0 and "?" not in text
    assert list(json.loads(js.read_text())["per_plane"]) == ["2D", long_name]
    code, text, _ = cli(["evaluate", str(path), "--planes", long_name, "--json", str(js)], capsys)
    assert code == 0 and "skipped 1 images of planes 2D" in text
    assert json.loads(js.read_text())["events"] == 1


# ---------------------------------------------------------------------------- predict --planes
def make_weights(path, seed=0):
    torch.manual_seed(seed)
    model = build_model("uresnet", **{k: v for k, v in TINY.items() if k != "name"})
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": dict(TINY)}, "classes": CLASSES,
                           "version": "test"})
    return str(path)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    evs = [_named(random_event((48, 40), 80, seed=k), {"plane": "UVY"[k % 3], "event_id": k // 3}) for k in range(9)]
    write_events(str(d / "events.h5"), evs)
    return {"events": str(d / "events.h5"), "weights": make_weights(d / "w.pt")}


def _read(path):
    with EventFile(path) as f:
        return {"planes": f.planes.tolist(), "ids": f.event_ids.tolist(), "attrs": dict(f.attrs),
                "pred": [f.read_extra(i, "pred") for i in range(len(f))]}


def test_predict_planes(events, tmp_path, capsys):
    out, full = tmp_path / "y.h5", tmp_path / "all.h5"
    base = ["predict", events["events"], "--weights", events["weights"], "-q"]
    code, text, _ = cli(base + ["-o", str(out), "--planes", "Y"], capsys)
    assert code == 0 and f"-> {out}: 3 images of planes Y, skipped 6 images of other planes," in text
    got = _read(str(out))
    assert got["planes"] == ["Y", "Y", "Y"] and got["ids"] == [0, 1, 2] and got["attrs"]["planes"] == "Y"
    code, text, _ = cli(base + ["-o", str(full)], capsys)
    assert code == 0 and "skipped" not in text
    every = _read(str(full))
    assert "planes" not in every["attrs"]
    for k in range(3):  # a plane segmented alone gives the classes it gets within its interaction
        np.testing.assert_array_equal(got["pred"][k], every["pred"][3 * k + 2])
    assert error_line(base + ["-o", str(tmp_path / "w.h5"), "--planes", "Y,W"], capsys) == \
        f"sparseseg predict: error: {events['events']}: --planes Y,W: no image of plane W (the file holds planes U, V, Y)"
    assert not (tmp_path / "w.h5").exists()


class Boom(Exception):
    pass


def test_predict_planes_are_part_of_the_resume_identity(events, tmp_path, capsys, monkeypatch):
    whole, out = tmp_path / "whole.h5", tmp_path / "p.h5"
    predict_file(events["events"], str(whole), Predictor(weights=events["weights"]), progress=False, planes=("y",))
    monkeypatch.setattr(h5mod, "BUFFER_EVENTS", 1)
    real, calls = Predictor.predict, []

    def predict(self, evs):
        calls.append(1)
        if len(calls) == 2:
            raise Boom()
        return real(self, evs)

    monkeypatch.setattr(Predictor, "predict", predict)
    with pytest.raises(Boom):
        predict_file(events["events"], str(out), Predictor(weights=events["weights"]), progress=False, planes=("Y",))
    monkeypatch.setattr(Predictor, "predict", real)
    assert h5mod.partial_events(str(out)) == 1
    base = ["predict", events["events"], "-o", str(out), "--weights", events["weights"], "-q"]
    line = error_line(base + ["--planes", "U"], capsys)
    assert 'cannot resume: it was written with {"planes": "Y"}, this run has {"planes": "U"}' in line and "--restart" in line
    line = error_line(base, capsys)
    assert 'cannot resume: it was written with {"planes": "Y"}, this run has {"planes": null}' in line
    code, text, _ = cli(base + ["--planes", "y"], capsys)  # the same selection, spelled otherwise
    assert code == 0 and "3 images of planes Y (resumed after 1 images), skipped 6 images" in text
    a, b = _read(str(out)), _read(str(whole))
    assert a["planes"] == b["planes"] == ["Y"] * 3
    for x, y in zip(a["pred"], b["pred"]):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------- train --threads / --device
def test_train_threads_and_device_override_the_config(tmp_path, capsys, monkeypatch):
    import sparseseg.train as train_mod

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"train": {"threads": 2, "device": "cpu"}}))
    seen = []

    def fake_train(cfg, out, **kw):
        seen.append(cfg["train"])
        return {"step": 0}

    monkeypatch.setattr(train_mod, "train", fake_train)
    base = ["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "-q"]
    assert cli(base + ["--threads", "5", "--device", "cpu"], capsys)[0] == 0
    assert cli(base, capsys)[0] == 0
    assert (seen[0]["threads"], seen[0]["device"]) == (5, "cpu")
    assert (seen[1]["threads"], seen[1]["device"]) == (2, "cpu")
    assert error_line(base + ["--device", "tpu"], capsys) == \
        "sparseseg train: error: --device tpu: unknown device; expected cpu, cuda or cuda:N"
    assert error_line(base + ["--threads", "-1"], capsys) == \
        "sparseseg train: error: --threads -1: must be at least 1, or 0 for torch's default"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert error_line(base + ["--device", "cuda"], capsys).startswith(
        "sparseseg train: error: --device cuda: this torch has no usable CUDA")
    assert len(seen) == 2


def test_train_data_seed_overrides_the_stream(tmp_path, capsys, monkeypatch):
    import sparseseg.train as train_mod

    seen = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, out, **kw: seen.append(cfg["data"]) or {"step": 0})
    sim = tmp_path / "sim.yaml"
    sim.write_text(yaml.safe_dump({"data": {"simulate": "pilarnet", "seed": 8}}))
    files = tmp_path / "files.yaml"
    files.write_text(yaml.safe_dump({"data": {"simulate": None, "train": "x.h5"}}))
    base = ["train", "--out", str(tmp_path / "run"), "-q", "--config"]
    assert cli(base + [str(sim), "--data-seed", "10"], capsys)[0] == 0
    assert cli(base + [str(sim)], capsys)[0] == 0
    assert [d["seed"] for d in seen] == [10, 8]
    assert error_line(base + [str(sim), "--data-seed", "-3"], capsys) == \
        "sparseseg train: error: --data-seed -3: must be >= 0"
    assert error_line(base + [str(files), "--data-seed", "3"], capsys) == (
        f"sparseseg train: error: --data-seed 3: {files} trains on files (data.train), not on simulated views; "
        "the seed of a simulated stream only applies with data.simulate")
    assert len(seen) == 2


# ---------------------------------------------------------------------------- closed stdout
def test_a_closed_stdout_exits_quietly(preds):
    """`sparseseg evaluate p.h5 | head -1`: the reader is gone before the table is written."""
    code = "import sys; from sparseseg.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "evaluate", preds["p2"]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                            cwd=str(Path(__file__).resolve().parent.parent))
    proc.stdout.close()  # no reader: the table's write fails with EPIPE
    err = proc.stderr.read().decode()
    rc = proc.wait()
    assert rc == 1 and "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    shell = subprocess.run(f"'{sys.executable}' -c '{code}' evaluate '{preds['p2']}' | head -1", shell=True,
                           capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    assert shell.stdout.startswith("pixels") and len(shell.stdout.splitlines()) == 1 and shell.stderr == ""


# ---------------------------------------------------------------------------- export the dense twin
def _full_event(shape, seed=0):
    coords = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1).astype(np.int32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(coords))
    return Event(coords[perm], rng.uniform(10, 300, (len(coords), 1)).astype(np.float32), shape)


def _sparse_checkpoint(path, **kw):
    pytest.importorskip("spconv")
    torch.manual_seed(0)
    sparse = build_model("uresnet", **kw)
    for m in sparse.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    checkpoint.save(path, {"model": sparse.state_dict(), "config": {"model": {"name": "uresnet", **kw}},
                           "classes": CLASSES, "version": "test"})
    return sparse.eval()


def _twin_matches(sparse, exported, shape, normalize):
    from sparseseg.models.dense_uresnet import densify

    ev = _full_event(shape)
    stride = 2 ** (sparse.config.depth - 1)
    with torch.no_grad():
        a = sparse([ev])
        y = exported(densify([ev], 1, stride, normalize=normalize))
    b = y[0][(slice(None), *torch.from_numpy(ev.coords.astype(np.int64)).T)].T
    assert a.shape == b.shape == (len(ev), 5)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("input_norm", ["none", "mip"])
def test_export_converts_sparse_uresnet_weights_to_the_dense_twin(input_norm, tmp_path, capsys):
    kw = dict(dim=2, depth=3, filters=4, reps=1, leakiness=0.1, input_norm=input_norm)
    ckpt = tmp_path / "sparse.pt"
    sparse = _sparse_checkpoint(ckpt, **kw)
    out = tmp_path / "x.pt"
    code, text, err = cli(["export", "--model", "uresnet-dense", "--weights", str(ckpt), "-o", str(out)], capsys)
    assert code == 0, err
    assert f"exported uresnet-dense ({ckpt}, uresnet weights converted to the dense twin) as torchscript -> {out}" in text
    assert ("input_norm mip" in text) == (input_norm == "mip")
    _twin_matches(sparse, torch.jit.load(str(out)), (16, 16), input_norm == "mip")
    # a dense checkpoint of another model is still refused, and --format must be told when -o does not say it
    assert error_line(["export", "--model", "uresnet-dense", "--weights", str(ckpt), "-o", str(tmp_path / "x.bin")],
                      capsys) == (f"sparseseg export: error: -o {tmp_path / 'x.bin'}: cannot tell the format from the "
                                  "extension (.pt, .ts, .torchscript, .jit, .onnx); pass --format torchscript or --format onnx")
    assert "holds model 'uresnet', not 'roi-unet'" in error_line(
        ["export", "--model", "roi-unet", "--weights", str(ckpt), "-o", str(tmp_path / "r.pt")], capsys)


def test_export_the_shipped_2d_weights_as_the_dense_twin(tmp_path, capsys):
    shipped = Path(__file__).resolve().parent.parent / "weights" / "uresnet2d.pt"
    if not shipped.exists():
        pytest.skip("no shipped 2D weights")
    pytest.importorskip("spconv")
    out = tmp_path / "x.pt"
    code, text, err = cli(["export", "--model", "uresnet-dense", "--weights", str(shipped), "-o", str(out),
                           "--input-shape", "1,1,32,32"], capsys)
    assert code == 0, err
    assert "uresnet weights converted to the dense twin" in text
    sparse, ck = checkpoint.load_model(shipped)
    side = 2 ** (sparse.config.depth - 1)  # one full tile of the coarsest level: the twin equals the sparse model without padding
    _twin_matches(sparse.eval(), torch.jit.load(str(out)), (side, side), ck["config"]["model"].get("input_norm") == "mip")
