"""Dense models train through the same loop and command: ROI networks and the CVN."""
import json

import numpy as np
import pytest
import torch
import yaml

from sparseseg.cli import main
from sparseseg.config import resolve
from sparseseg.export import export_model, load_dense_checkpoint
from sparseseg.tasks.roi import ROITask
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
    # the logged figures of the step best.pt was saved at are those weights' on the validation
    # images, recomputed here by hand (IoU = |ROI and signal| / |ROI or signal|)
    best, bck = load_dense_checkpoint(tmp_path / "b" / "best.pt")
    x, y = ROITask(resolve(ROI)).validation()
    with torch.no_grad():
        sel = best(torch.as_tensor(x)).numpy() > 0.5
    true = np.asarray(y) > 0.5
    row = next(r for r in val if r["step"] == bck["step"])
    assert row["val_iou"] == pytest.approx((sel & true).sum() / (sel | true).sum())
    assert row["val_accuracy"] == pytest.approx((sel == true).mean())
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


def test_weight_average_by_hand():
    from sparseseg.train import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    avg = WeightAverage(net, 0.5)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
        net[1].running_mean.fill_(2.0)
        net[1].num_batches_tracked.fill_(7)
    avg.update(net)  # d = min(0.5, 2/11): 1 * 2/11 + 3 * 9/11
    assert float(avg.model[0].weight) == pytest.approx(1 * 2 / 11 + 3 * 9 / 11)
    assert float(avg.model[1].running_mean) == pytest.approx(2 * 9 / 11)
    assert int(avg.model[1].num_batches_tracked) == 7
    for _ in range(20):
        avg.update(net)  # d reaches the decay 0.5: the distance to 3 halves each update
    assert float(avg.model[0].weight) == pytest.approx(3.0, abs=1e-5)
    assert float(net[0].weight.detach()) == 3.0 and not avg.model.training


def test_ema_is_validated_saved_as_best_and_resumed(tmp_path):
    cfg = {**ROI, "train": {**ROI["train"], "ema": 0.9, "val_every": 4}}  # one validation: best.pt = step 4
    train(cfg, tmp_path / "a", progress=False)
    train_stopped_then_resumed(cfg, tmp_path / "b", stop_at=3)
    from sparseseg import checkpoint

    a, b = checkpoint.load(tmp_path / "a" / "checkpoint.pt"), checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    for k, x in a["ema"]["model"].items():
        assert torch.equal(x, b["ema"]["model"][k]), k
    best = checkpoint.load(tmp_path / "a" / "best.pt")
    assert best["step"] == 4  # best.pt is the average, not the last weights
    key = next(k for k, v in a["model"].items() if v.dtype.is_floating_point and v.numel() > 1)
    assert torch.equal(best["model"][key], a["ema"]["model"][key])
    assert not torch.equal(best["model"][key], a["model"][key])
    with pytest.raises(ValueError, match="does not fit this model or optimizer \\(it holds no weight average"):
        train(ROI, tmp_path / "plain", progress=False)
        train(cfg, tmp_path / "plain", resume=True, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"train": {"ema": 1.0}}, "config: train.ema must be 0 (off) or a decay in (0, 1), e.g. 0.998, got 1.0"),
    ({"data": {"balance": True}}, "config: data.balance applies to the event classifier (model.name: cvn) only, "
                                  "not to 'roi-mobilenetv3'; remove it"),
])
def test_ema_and_balance_config_errors(change, message):
    cfg = {k: {**v, **change.get(k, {})} for k, v in ROI.items()}
    with pytest.raises(ValueError) as err:
        resolve(cfg)
    assert str(err.value) == message


def test_balanced_cvn_stream_without_simulating_its_rejects():
    from sparseseg.tasks.cvn import TOPOLOGY_CLASS, balanced_indices, cvn_dataset
    from sparseseg.simulate import interaction_topology, simulate_full

    for i in range(4):  # the topology is the first draw of the interaction's physics stream
        assert interaction_topology("crop512", 3, i) == simulate_full("crop512", 3, i)[1].topology
    with pytest.raises(ValueError, match="preset 'pilarnet' is 3D"):
        interaction_topology("pilarnet", 3, 0)
    idx = balanced_indices(7, 3, start=10, rotate=1)
    classes = [TOPOLOGY_CLASS[interaction_topology("crop512", 3, i)] for i in idx]
    assert np.bincount(classes, minlength=3).tolist() == [2, 3, 2]  # 7 // 3 each, the extra one to class 1
    assert idx == sorted(idx) and idx[0] >= 10
    _, y = cvn_dataset(2, 3, indices=idx[:2], size=64)
    assert y.tolist() == classes[:2]
    bomb = next(i for i in range(50) if interaction_topology("crop512", 3, i) == "bomb")
    with pytest.raises(ValueError, match=f"interaction {bomb} of \\(crop512, 3\\) is a bomb, not a neutrino"):
        cvn_dataset(1, 3, indices=[bomb], size=64)


def test_neutrino_indices_are_the_interactions_cvn_dataset_draws():
    from sparseseg.tasks.cvn import TOPOLOGY_CLASS, cvn_dataset, cvn_views, neutrino_indices
    from sparseseg.simulate import interaction_topology, simulate_full

    idx = neutrino_indices(4, 3, start=2)
    tops = [interaction_topology("crop512", 3, i) for i in range(2, idx[-1] + 1)]
    assert [i for i, t in zip(range(2, idx[-1] + 1), tops) if t in TOPOLOGY_CLASS] == idx  # every neutrino, in order
    x, y = cvn_dataset(4, 3, start=2, size=64)
    assert y.tolist() == [TOPOLOGY_CLASS[interaction_topology("crop512", 3, i)] for i in idx]
    events, _ = simulate_full("crop512", 3, idx[3])
    np.testing.assert_array_equal(cvn_views(events, 64), x[3])
    dense = events[2].to_dense()  # 512 x 512 view, centre 64 x 64 kept
    np.testing.assert_array_equal(x[3, 2], dense[224:288, 224:288])
    x_off, _ = cvn_dataset(4, 3, start=2, size=64, hadronic=False)  # the physics before simulator 0.5
    np.testing.assert_array_equal(x_off[3], cvn_views(simulate_full("crop512", 3, idx[3], hadronic=False)[0], 64))
    assert not all(np.array_equal(a, b) for a, b in zip(x, x_off))


def test_nue_selection_cut_chosen_on_tuning_set_by_hand():
    from sparseseg.tasks.cvn import nue_selection

    def probs(nue):  # P(nu_e CC) in column 1, the rest split between the others
        nue = np.asarray(nue)
        return np.stack([(1 - nue) / 2, nue, (1 - nue) / 2], 1)

    # tuning: nu_e scores 0.9, 0.8, 0.6 and NC 0.7, 0.2: cut 0.6 -> purity 3/4, 0.7 -> 2/3, 0.8 -> 2/2
    tune_p, tune_y = probs([0.9, 0.8, 0.7, 0.6, 0.2]), np.array([1, 1, 2, 1, 2])
    # held out: a nu_e CC above the cut, one below, an NC above: efficiency 1/2, purity 1/2
    sel = nue_selection(tune_p, tune_y, probs([0.85, 0.5, 0.81]), np.array([1, 1, 2]), min_purity=0.8)
    assert sel == {"cut": 0.8, "efficiency": 0.5, "purity": 0.5}
    assert nue_selection(tune_p, tune_y, probs([0.85]), np.array([1]), min_purity=1.01) == \
        {"cut": None, "efficiency": 0.0, "purity": 0.0}
