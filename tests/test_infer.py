"""Full-image prediction: output layout, resume after a hard kill, shards, score thresholds,
and the command line's exit status on bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparseseg import checkpoint
from sparseseg.cli import main
from sparseseg.infer import (Predictor, apply_min_scores, output_paths, parse_min_scores, parse_shard,
                             predict_file)
from sparseseg.io import EventFile, write_events
from sparseseg.models import build_model
from sparseseg.simulate import simulate

TINY = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}


def _weights(path, **over):
    torch.manual_seed(0)
    cfg = dict(TINY, **over)
    name = cfg.pop("name")
    model = build_model(name, **cfg)
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval differs from train
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": dict(TINY, **over)},
                           "classes": ["HIP", "MIP", "shower", "delta", "Michel"], "version": "test"})
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("infer")
    events = list(simulate("crop512", 3, 5))  # 3 interactions x 3 planes
    write_events(str(d / "events.h5"), events)
    return {"dir": d, "events": str(d / "events.h5"), "weights": _weights(d / "w.pt"), "n": len(events)}


def _read_all(path):
    with EventFile(path) as f:
        out = {"ids": f.event_ids.copy(), "planes": list(f.planes)}
        out["pred"] = [f.read_extra(i, "pred") for i in range(len(f))]
        out["scores"] = [f.read_extra(i, "scores") for i in range(len(f))]
        evs = [f[i] for i in range(len(f))]
        out["coords"] = [e.coords for e in evs]
        out["labels"] = [e.labels for e in evs]
        out["attrs"] = dict(f.attrs)
    return out


def test_output_layout_matches_direct_prediction(files, tmp_path):
    out = tmp_path / "pred.h5"
    r = predict_file(files["events"], str(out), Predictor(weights=files["weights"]), progress=False)
    assert r["images"] == files["n"] and r["events"] == 3 and r["resumed_from"] == 0
    got = _read_all(str(out))
    assert got["attrs"]["precision"] == Predictor().precision  # the resolved choice, for provenance
    with EventFile(files["events"]) as f:
        events = [f[i] for i in range(len(f))]
    direct = Predictor(weights=files["weights"]).predict(events[:3])  # first interaction, one batch
    for i in range(3):
        np.testing.assert_array_equal(got["coords"][i], events[i].coords)
        np.testing.assert_array_equal(got["labels"][i], events[i].labels)
        np.testing.assert_array_equal(got["pred"][i], direct[i][0])
        np.testing.assert_allclose(got["scores"][i].astype(np.float32), direct[i][1], atol=1e-3)
        np.testing.assert_allclose(got["scores"][i].astype(np.float32).sum(1), 1.0, atol=5e-3)
    # a plane predicted alone gives the same classes as within its 3-plane batch
    alone = Predictor(weights=files["weights"]).predict([events[1]])[0][0]
    np.testing.assert_array_equal(alone, direct[1][0])


KILLER = """
import os, signal, sys
from sparseseg import infer
from sparseseg.io import writer as h5
h5.BUFFER_EVENTS = 4  # flush every 4 images, so the kill lands after one flush, mid-interaction
calls = [0]
real = infer.Predictor.predict
def predict(self, events):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, events)
infer.Predictor.predict = predict
sys.exit(infer.predict_file(sys.argv[1], sys.argv[2], infer.Predictor(weights=sys.argv[3]), progress=False) and 0)
"""


def test_hard_kill_then_rerun_equals_uninterrupted(files, tmp_path):
    whole, killed = tmp_path / "whole.h5", tmp_path / "killed.h5"
    predict_file(files["events"], str(whole), Predictor(weights=files["weights"]), progress=False)
    p = subprocess.run([sys.executable, "-c", KILLER, files["events"], str(killed), files["weights"]],
                       capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    assert not killed.exists()  # nothing half-written under the final name
    partial = [q for q in tmp_path.iterdir() if q.name.startswith("killed.h5")]
    assert partial, "the interrupted run left no partial file to resume"
    other = "fp32" if Predictor().precision == "bf16" else "bf16"
    with pytest.raises(ValueError, match=f'cannot resume: it was written with .*"precision": "{Predictor().precision}"'):
        predict_file(files["events"], str(killed), Predictor(weights=files["weights"], precision=other), progress=False)
    assert [q for q in tmp_path.iterdir() if q.name.startswith("killed.h5")] == partial  # left as it was
    r = predict_file(files["events"], str(killed), Predictor(weights=files["weights"]), progress=False)
    assert r["resumed_from"] == 4  # one flushed buffer survived; resumes inside the second interaction
    a, b = _read_all(str(whole)), _read_all(str(killed))
    assert a["planes"] == b["planes"]
    np.testing.assert_array_equal(a["ids"], b["ids"])
    for key in ("pred", "scores", "coords", "labels"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)
    assert a["attrs"] == b["attrs"]


def test_min_scores_hand_case():
    scores = np.array([[0.1, 0.2, 0.1, 0.45, 0.15],   # delta 0.45 < 0.5 -> next best MIP
                       [0.0, 0.1, 0.1, 0.6, 0.2],     # delta 0.6 stays
                       [0.5, 0.3, 0.1, 0.05, 0.05],   # HIP, not thresholded
                       [0.1, 0.1, 0.2, 0.2, 0.4]],    # Michel 0.4 < 0.5 -> shower (first of the tie)
                      np.float32)
    np.testing.assert_array_equal(apply_min_scores(scores, {}), [3, 3, 0, 4])
    np.testing.assert_array_equal(apply_min_scores(scores, parse_min_scores(["delta=0.5", "Michel=0.5"])), [1, 3, 0, 2])
    assert parse_min_scores(["delta=0.5", "michel=0.25"]) == {3: 0.5, 4: 0.25}


@pytest.mark.parametrize("item,message", [
    ("delta", "--min-score 'delta': expected CLASS=SCORE, e.g. delta=0.5"),
    ("delta=x", "--min-score 'delta=x': 'x' is not a number"),
    ("delta=1.5", "--min-score 'delta=1.5': score must be within 0..1"),
])
def test_min_score_errors(item, message):
    with pytest.raises(ValueError) as e:
        parse_min_scores([item])
    assert str(e.value) == message


def test_shards(tmp_path):
    inputs = []
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.h5").write_bytes(b"")
        inputs.append(str(tmp_path / f"{name}.h5"))
    out = tmp_path / "out"
    all_pairs = output_paths(inputs, str(out), (0, 1))
    assert [p[1] for p in all_pairs] == [str(out / f"{n}.pred.h5") for n in "abcde"]
    shards = [output_paths(inputs, str(out), parse_shard(f"{k}/2")) for k in range(2)]
    assert [p[0] for p in shards[0]] == [inputs[0], inputs[2], inputs[4]]
    assert [p[0] for p in shards[1]] == [inputs[1], inputs[3]]
    assert output_paths(inputs[:1], str(tmp_path / "x.h5"), parse_shard("1/2")) == []
    for bad, msg in (("2/2", "--shard '2/2': expected K/N with 0 <= K < N"),
                     ("a/b", "--shard 'a/b': expected K/N with integers, e.g. 0/4"),
                     ("3", "--shard '3': expected K/N with integers, e.g. 0/4")):
        with pytest.raises(ValueError) as e:
            parse_shard(bad)
        assert str(e.value) == msg


def _cli(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_predict_and_evaluate(files, tmp_path, capsys):
    out = tmp_path / "p.h5"
    code, text, _ = _cli(["predict", files["events"], "-o", str(out), "--weights", files["weights"], "-q"], capsys)
    assert code == 0 and "9 images" in text
    js = tmp_path / "m.json"
    code, text, _ = _cli(["evaluate", str(out), "--json", str(js), "--plot", str(tmp_path / "cm.png")], capsys)
    assert code == 0 and (tmp_path / "cm.png").stat().st_size > 10_000
    m = json.loads(js.read_text())
    pred = np.concatenate(_read_all(str(out))["pred"])
    labels = np.concatenate(_read_all(str(out))["labels"])
    valid = labels != 255
    assert m["accuracy"] == pytest.approx(float((pred[valid] == labels[valid]).mean()))
    assert np.asarray(m["confusion"]).sum() == valid.sum()
    assert set(m["per_plane"]) == {"U", "V", "Y"}


def test_cli_errors_exit_2_with_one_line(files, tmp_path, capsys):
    cases = [
        (["predict", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "o.h5")],
         f"input file {tmp_path / 'missing.h5'} does not exist"),
        (["predict", files["events"], "-o", str(tmp_path / "o.h5"), "--weights", files["weights"], "--min-score", "delta"],
         "expected CLASS=SCORE"),
        (["predict", files["events"], "-o", str(tmp_path / "o.h5"), "--weights", str(tmp_path / "nope.pt")],
         "does not exist"),
        (["evaluate", files["events"]], "holds no predictions"),
        (["predict", files["events"], "-o", str(tmp_path / "o.h5"), "--weights", _weights(tmp_path / "w3.pt", dim=3)],
         "model is 3D but the input events are 2D"),
    ]
    for argv, needle in cases:
        code, _, err = _cli(argv, capsys)
        assert code == 2, argv
        assert needle in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.h5").exists()


def test_precisions_agree_and_auto_follows_the_cpu(files):
    from sparseseg.io import EventFile
    from sparseseg.models.sparse_infer import FastUResNet, cpu_has_bf16

    with EventFile(files["events"]) as f:
        events = [f[i] for i in range(3)]
    a = Predictor(weights=files["weights"], precision="fp32").predict(events)
    b = Predictor(weights=files["weights"], precision="bf16").predict(events)
    pa = np.concatenate([p for p, _ in a])
    pb = np.concatenate([p for p, _ in b])
    assert (pa == pb).mean() > 0.98
    diff = max(float(np.abs(x[1] - y[1]).max()) for x, y in zip(a, b))
    assert 0 < diff < 0.1  # bf16 really ran, and stayed close
    # precision auto gives exactly the scores of bf16 on a CPU with bf16 instructions, else fp32's
    auto = Predictor(weights=files["weights"])
    same = b if cpu_has_bf16() else a
    for (p, sc), (q, sd) in zip(auto.predict(events), same):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(sc, sd)
    assert isinstance(auto.model(2), FastUResNet)  # CPU inference runs the engine
    with pytest.raises(ValueError, match="precision 'fp16' unknown; expected auto, fp32 or bf16"):
        Predictor(precision="fp16")
    assert Predictor(device="cuda").precision == "fp32"  # auto: the GPU runs the training graph
    with pytest.raises(ValueError, match="precision bf16 is for CPU inference; on cuda use fp32"):
        Predictor(device="cuda", precision="bf16")


def test_class_bias_by_hand_and_choice():
    import numpy as np

    from sparseseg.infer import apply_min_scores, biased_argmax, choose_class_bias

    scores = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.05, 0.5, 0.05, 0.05, 0.35]], np.float32)
    assert biased_argmax(scores).tolist() == [1, 1]
    bias = np.array([0, 0, 0, 0, 0.5], np.float32)  # log(0.35) + 0.5 = -0.55 > log(0.5) = -0.69
    assert biased_argmax(scores, bias).tolist() == [1, 4]
    assert apply_min_scores(scores, {4: 0.4}, bias).tolist() == [1, 1]  # min score still applies
    # a class the plain argmax never picks: the chosen offset recovers it without hurting the rest
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    s = np.full((2000, 5), 0.1)
    s[np.arange(2000), labels] = 0.5
    s[labels == 4, 4], s[labels == 4, 1] = 0.3, 0.4  # Michel always second to MIP
    s /= s.sum(1, keepdims=True)
    b, f1 = choose_class_bias(s, labels)
    assert b[1] == 0 and b[4] > np.log(0.4 / 0.3)
    assert (biased_argmax(s, b) == labels).all() and f1 == 1.0



def test_class_bias_accuracy_objective_keeps_accuracy_and_purity():
    import numpy as np
    import pytest

    from sparseseg.infer import choose_class_bias

    # 100 Michel and 300 MIP pixels with the same scores (Michel 0.3 < MIP 0.4), 600 clean MIP:
    # boosting Michel finds all 100 Michel at the cost of 300 MIP pixels
    s = np.tile(np.array([0.1, 0.4, 0.1, 0.1, 0.3]), (1000, 1))
    labels = np.ones(1000, np.int64)
    labels[:100] = 4
    s[400:] = [0.05, 0.8, 0.05, 0.05, 0.05]
    b_f1, f1 = choose_class_bias(s, labels)
    assert b_f1[4] > np.log(0.4 / 0.3) and f1 > 0.5  # macro F1 buys Michel recall ...
    assert ((np.log(s) + b_f1).argmax(1) == labels).mean() == 0.7  # ... at 0.2 of the accuracy (0.9 without)
    b_acc, acc = choose_class_bias(s, labels, objective="accuracy")
    assert b_acc.tolist() == [0.0] * 5 and acc == 0.9
    # a boost that gains accuracy (+10 pixels) but makes the class only 100/190 pure is refused
    s2 = np.tile(np.array([0.05, 0.45, 0.4, 0.05, 0.05]), (1000, 1))
    labels2 = np.ones(1000, np.int64)
    labels2[:100] = 2
    s2[190:] = [0.05, 0.8, 0.05, 0.05, 0.05]
    assert choose_class_bias(s2, labels2, objective="accuracy")[0].tolist() == [0.0] * 5
    b_low, acc_low = choose_class_bias(s2, labels2, objective="accuracy", min_purity=0.5)
    assert b_low[2] > np.log(0.45 / 0.4) and acc_low == 0.91
    with pytest.raises(ValueError, match="objective 'f1' unknown; expected one of macro-f1, accuracy"):
        choose_class_bias(s, labels, objective="f1")

def _mirror(ev, axes):
    from sparseseg import Event

    coords = ev.coords.copy()
    for a in axes:
        coords[:, a] = ev.shape[a] - 1 - coords[:, a]
    return Event(coords, ev.features, ev.shape, labels=ev.labels)


def test_flips_average_the_mirror_images(files, tmp_path):
    with EventFile(files["events"]) as f:
        events = [f[i] for i in range(2)]
    plain = Predictor(weights=files["weights"], precision="fp32")
    flipped = Predictor(weights=files["weights"], precision="fp32", flips=True)
    for ev in events:
        # by hand: the normalised geometric mean of the four mirror images' scores
        logs = [np.log(plain.scores([_mirror(ev, axes)])[0]) for axes in ((), (0,), (1,), (0, 1))]
        mean = np.mean(logs, axis=0)
        expect = np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True)
        got = flipped.scores([ev])[0]
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)
        assert np.abs(got - plain.scores([ev])[0]).max() > 1e-3  # the average is not the plain forward
        # and the averaged predictor is mirror symmetric: a mirrored event gets the same scores
        np.testing.assert_allclose(flipped.scores([_mirror(ev, (1,))])[0], got, rtol=1e-4, atol=1e-6)
    out = tmp_path / "pred.h5"
    predict_file(files["events"], str(out), flipped, progress=False)
    assert _read_all(str(out))["attrs"]["flips"] == "yes"
