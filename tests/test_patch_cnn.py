"""Per-hit patch classifier: patches, targets, sampling, training, predict layout, export."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseseg import Event
from sparseseg.cli import main
from sparseseg.export import export_model
from sparseseg.io import EventFile, write_events
from sparseseg.models import build_model
from sparseseg.patches import extract_patches, patch_targets, sample_hits, score_event, to_class_scores
from sparseseg.train import train

ROOT = Path(__file__).resolve().parents[1]


def _event():
    coords = np.array([[0, 0], [5, 7], [9, 9]], np.int32)
    return Event(coords, np.array([[11.0], [22.0], [33.0]], np.float32), (10, 10),
                 labels=np.array([0, 4, 255], np.uint8))


def test_patches_are_centred_and_zero_padded():
    p = extract_patches(_event(), size=10)
    assert p.shape == (3, 1, 10, 10)
    assert p[0, 0, 5, 5] == 11.0 and p[1, 0, 5, 5] == 22.0 and p[2, 0, 5, 5] == 33.0
    assert p[0].sum() == 11.0  # (0, 0): the other hits are outside its patch, the border is 0
    assert p[2, 0, 5 - 4, 5 - 2] == 22.0  # (5, 7) seen from (9, 9): 4 rows up, 2 columns left
    assert p[2].sum() == 22.0 + 33.0
    assert p[1, 0, 5 + 4, 5 + 2] == 33.0  # and (9, 9) seen from (5, 7)
    assert extract_patches(_event(), np.array([1]), size=10).shape == (1, 1, 10, 10)


def test_targets_and_balanced_sampling():
    cls, mich = patch_targets(np.array([0, 1, 2, 3, 4, 255], np.uint8))
    assert cls.tolist() == [1, 1, 0, 0, 0, 2]  # EM 0, track 1, none 2
    assert mich.tolist() == [0, 0, 0, 0, 1, 0]
    labels = np.array([1] * 970 + [2] * 20 + [4] * 5 + [255] * 5, np.uint8)
    rows = sample_hits(labels, 40000, np.random.default_rng(0))
    frac = np.bincount(np.array([0 if l == 1 else 1 if l == 2 else 2 if l == 4 else 3 for l in labels[rows]]),
                       minlength=4) / len(rows)
    np.testing.assert_allclose(frac, 0.25, atol=0.01)


def test_class_score_layout():
    probs = np.array([[0.6, 0.3, 0.1, 0.5], [0.1, 0.85, 0.05, 0.9]], np.float32)
    s = to_class_scores(probs)
    np.testing.assert_allclose(s, [[0, 0.3, 0.3, 0, 0.3], [0, 0.85, 0.01, 0, 0.09]], atol=1e-6)
    np.testing.assert_allclose(s.sum(1), 1 - probs[:, 2], atol=1e-6)


@pytest.mark.slow
def test_train_predict_evaluate_export(tmp_path, capsys):
    cfg = {"model": {"name": "patch-cnn", "filters": 4, "dense1": 8, "dense2": 4},
           "data": {"val_images": 8, "num_workers": 0},
           "train": {"batch_size": 32, "max_steps": 3, "val_every": 3, "log_every": 1, "checkpoint_every": 3,
                     "threads": 1, "warmup_steps": 1}}
    train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_michel_auc" in r][-1]
    # the logged figures are those of best.pt on the validation patches, recomputed here by hand
    from sparseseg.config import resolve
    from sparseseg.tasks.patch import PatchTask

    best = build_model("patch-cnn", filters=4, dense1=8, dense2=4)
    best.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=False)["model"])
    x, (cls, mich) = PatchTask(resolve(cfg)).validation()
    with torch.no_grad():
        raw = best.eval()(torch.from_numpy(x)).numpy()
    assert val["val_accuracy"] == pytest.approx(float((raw[:, :3].argmax(1) == cls).mean()))
    pos, neg = raw[mich > 0.5, 3], raw[mich <= 0.5, 3]
    auc = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert val["val_michel_auc"] == pytest.approx(auc, abs=1e-6)
    # predict writes the segmentation layout; evaluate reads it
    from sparseseg.simulate import simulate

    events = list(simulate("crop512", 1, 3))
    write_events(str(tmp_path / "ev.h5"), events)
    w = str(tmp_path / "run" / "best.pt")
    assert main(["predict", str(tmp_path / "ev.h5"), "-o", str(tmp_path / "p.h5"), "--model", "patch-cnn",
                 "--weights", w, "-q"]) == 0
    model = build_model("patch-cnn", filters=4, dense1=8, dense2=4)
    model.load_state_dict(torch.load(w, weights_only=False)["model"])
    model.eval()
    with EventFile(str(tmp_path / "p.h5")) as f:
        scores = f.read_extra(0, "scores").astype(np.float32)
        pred = f.read_extra(0, "pred")
    direct = to_class_scores(score_event(model, events[0]))
    np.testing.assert_allclose(scores, direct, atol=2e-3)
    assert set(np.unique(pred)) <= {1, 2, 4}
    assert main(["evaluate", str(tmp_path / "p.h5")]) == 0
    # the weights must hold what --model says
    assert main(["predict", str(tmp_path / "ev.h5"), "-o", str(tmp_path / "q.h5"), "--model", "uresnet",
                 "--weights", w, "-q"]) == 2
    assert "holds model 'patch-cnn', not 'uresnet'" in capsys.readouterr().err
    # weights of a family that does not segment events are refused by name
    roi = ROOT / "weights" / "roi_unet.pt"
    assert main(["predict", str(tmp_path / "ev.h5"), "-o", str(tmp_path / "r.h5"), "--weights", str(roi), "-q"]) == 2
    assert (f"weights file {roi}: holds model 'roi-unet', which does not segment events; predict takes uresnet "
            "(sparse) or patch-cnn weights") in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()
    r = export_model("patch-cnn", w, "onnx", tmp_path / "p.onnx")
    assert r["max_abs_diff"] <= 1e-4 and r["output_shape"] == [16, 4]
