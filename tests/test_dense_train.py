"""Dense models train through the same loop and command: ROI networks and the CVN."""
import json

import numpy as np
import pytest
import torch
import yaml

from sparseseg.cli import main
from sparseseg.config import resolve
from sparseseg.export import export_model, load_dense_checkpoint
from sparseseg.tasks import ROITask
from sparseseg.train import train

from conftest import train_stopped_then_resumed

ROI = {"model": {"name": "roi-mobilenetv3", "width_mult": 0.25},
       "data": {"val_images": 4, "num_workers": 0},
       "train": {"batch_size": 2, "max_steps": 4, "optimizer": "sgd", "lr": 0.05, "warmup_steps": 1,
                 "val_every": 2, "log_every": 1, "checkpoint_every": 2, "threads": 1}}


def test_roi_training_resume_and_export(tmp_path):
    train(ROI, tmp_path / "a", progress=False)
    train_stopped_then_resumed(ROI, tmp_path / "b", stop_at=3)
    a, _ = load_dense_checkpoint(tmp_path / "a" / "checkpoint.pt", "roi-mobilenetv3")
    b, ckpt = load_dense_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert ckpt["step"] == 4 and ckpt["classes"] == ["signal"]
    log = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_iou" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(0 <= r["val_iou"] <= 1 and 0 <= r["val_accuracy"] <= 1 for r in val)
    r = export_model("roi-mobilenetv3", tmp_path / "b" / "best.pt", "torchscript", tmp_path / "roi.ts")
    assert r["max_abs_diff"] <= 1e-4


def test_roi_metrics_by_hand():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x[:, :1]

    task = ROITask(resolve(ROI))
    y = np.zeros((1, 1, 2, 2), np.float32)
    y[0, 0, 0] = 1  # two signal pixels
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0] = [[0.9, 0.2], [0.7, 0.1]]  # predicts (0,0) and (1,0): 1 TP, 1 FP, 1 FN, 1 TN
    m = task.evaluate(Fixed(), (x, y))
    assert m["accuracy"] == 0.5 and m["iou"] == pytest.approx(1 / 3)
    assert m["efficiency"] == 0.5 and m["purity"] == 0.5


@pytest.mark.slow
def test_cvn_trains_from_the_command_line(tmp_path, capsys):
    cfg = {"model": {"name": "cvn", "widths": [4, 8], "blocks": [1, 1]},
           "data": {"val_images": 3, "num_workers": 0},
           "train": {"batch_size": 2, "max_steps": 2, "val_every": 2, "log_every": 1, "checkpoint_every": 2,
                     "threads": 1, "warmup_steps": 1}}
    path = tmp_path / "cvn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0
    model, ckpt = load_dense_checkpoint(tmp_path / "run" / "best.pt", "cvn")
    assert ckpt["classes"] == ["nu_mu CC", "nu_e CC", "NC"]
    m = ckpt["metrics"]
    assert np.asarray(m["confusion"]).sum() == 3 and set(m["efficiency"]) == set(ckpt["classes"])


def test_shipped_dense_configs_resolve():
    from pathlib import Path

    from sparseseg.models import build_model

    root = Path(__file__).resolve().parent.parent
    names = {}
    for path in sorted((root / "configs").glob("*.yaml")):
        cfg = resolve(yaml.safe_load(path.read_text()))
        mcfg = dict(cfg["model"])
        name = mcfg.pop("name")
        build_model(name, **mcfg)  # every option is one the model knows
        names[path.stem] = name
    # every trainable model has a config
    assert set(names.values()) >= {"uresnet", "roi-unet", "roi-mobilenetv2", "roi-mobilenetv3",
                                   "roi-transformer", "cvn", "patch-cnn"}
