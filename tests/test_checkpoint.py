"""Weight files: every way a checkpoint can be wrong gives a one-line error naming the file."""
import pytest
import torch

from sparseseg import checkpoint
from sparseseg.cli import main
from sparseseg.models import build_model

TINY = {"name": "uresnet", "dim": 2, "depth": 2, "filters": 4, "reps": 1}
CLASSES = ["HIP", "MIP", "shower", "delta", "Michel"]


def _save(path, model_cfg=TINY, classes=CLASSES, state=None):
    cfg = dict(model_cfg)
    if state is None:
        state = build_model(cfg.pop("name"), **cfg).state_dict()
    checkpoint.save(path, {"model": state, "config": {"model": dict(model_cfg)}, "classes": classes, "version": "t"})
    return path


def _err(path, **kw):
    with pytest.raises(ValueError) as e:
        checkpoint.load_model(path, **kw)
    return str(e.value)


def test_round_trip_and_fp16_slim(tmp_path):
    p = _save(tmp_path / "w.pt")
    model, ckpt = checkpoint.load_model(p, dim=2)
    slim = checkpoint.slim(ckpt)
    assert all(v.dtype == torch.float16 for v in slim["model"].values() if v.is_floating_point())
    half = checkpoint.build_from(slim)
    for (k, a), b in zip(model.state_dict().items(), half.state_dict().values()):
        assert b.dtype == a.dtype  # loaded back as float32 (integer buffers untouched)
        torch.testing.assert_close(b, a.half().float() if a.is_floating_point() else a, msg=k)


def test_build_from_holds_one_copy_of_the_weights(tmp_path):
    """The module is built without storage and takes the checkpoint's float32 tensors (no
    random initialisation, no second copy), and loading a model with missing keys still fails."""
    p = _save(tmp_path / "w.pt")
    ckpt = checkpoint.load(p)
    model = checkpoint.build_from(ckpt)
    for k, v in model.state_dict().items():
        assert not v.is_meta, k
        assert v.data_ptr() == ckpt["model"][k].data_ptr(), k
    ckpt["model"].pop(next(iter(ckpt["model"])))
    with pytest.raises(ValueError, match="weights do not fit model 'uresnet'"):
        checkpoint.build_from(ckpt)


def test_predictor_keeps_no_training_modules(tmp_path):
    """The inference engine replaces the network's modules; spconv's layers sit in reference
    cycles, so the predictor frees them at once rather than at the next garbage collection."""
    import gc

    from sparseseg.infer import Predictor
    from sparseseg.models.uresnet import cpu_path

    def alive():
        return sum(isinstance(o, torch.nn.Module) and type(o).__name__ == "SubMConv2d" for o in gc.get_objects())

    gc.collect()
    before = alive()
    pred = Predictor(weights=str(_save(tmp_path / "w.pt")), precision="fp32")
    pred.model(2)
    if cpu_path(pred.device, 2, pred.precision, grad=False) != "infer":
        pytest.skip("this device keeps the modules (no inference engine)")
    assert alive() == before


def test_average_states_is_the_uniform_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(7), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, -2.0]), "bn.num_batches_tracked": torch.tensor(9), "h": torch.tensor([2.0], dtype=torch.float16)}
    c = {"w": torch.tensor([5.0, 3.0]), "bn.num_batches_tracked": torch.tensor(1), "h": torch.tensor([6.0], dtype=torch.float16)}
    soup = checkpoint.average_states([a, b, c])
    assert soup["w"].tolist() == [3.0, 1.0]
    assert soup["bn.num_batches_tracked"].item() == 7  # counters: the first state's
    assert soup["h"].dtype == torch.float16 and soup["h"].item() == 3.0
    assert checkpoint.average_states([a])["w"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"^average_states: state 1 has other keys than state 0 \(x \.\.\.\)"):
        checkpoint.average_states([a, dict(b, x=torch.zeros(1))])
    with pytest.raises(ValueError, match=r"^average_states: w is \(3,\) in state 1, \(2,\) in state 0$"):
        checkpoint.average_states([a, dict(b, w=torch.zeros(3))])
    with pytest.raises(ValueError, match="no state dicts"):
        checkpoint.average_states([])


def test_bad_weight_files(tmp_path):
    p = tmp_path / "w.pt"
    assert _err(_save(p, classes=["track", "shower"])) == \
        f"weights file {p}: trained for classes ('track', 'shower'), this sparseseg's 'uresnet' outputs {tuple(CLASSES)}"
    assert _err(_save(p, dict(TINY, name="nope"), state={})).startswith("unknown model 'nope'; available: cvn, patch-cnn, roi-mobilenetv2")
    assert _err(_save(p), dim=3) == f"weights file {p}: model is 2D but the input events are 3D"
    other = build_model("uresnet", dim=2, depth=2, filters=8, reps=1).state_dict()
    assert _err(_save(p, state=other)).startswith(f"weights file {p}: weights do not fit model 'uresnet' (")
    torch.save([1, 2], p)
    assert _err(p) == f"weights file {p}: expected a checkpoint dict, got list"
    torch.save({"model": {}}, p)
    assert _err(p) == f"weights file {p}: not a sparseseg checkpoint (missing config, classes, version)"
    p.write_bytes(b"\x00garbage" * 10)
    assert _err(p).startswith(f"weights file {p}: cannot be read as a checkpoint (")
    good = _save(tmp_path / "g.pt").read_bytes()
    p.write_bytes(good[: len(good) // 2])  # truncated
    assert _err(p).startswith(f"weights file {p}: cannot be read as a checkpoint (")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load_model(tmp_path / "missing.pt")


def test_train_config_errors_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_sise: 4\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "config: unknown key train.batch_sise" in err and len(err.strip().splitlines()) == 1
    cfg.write_text("model:\n  name: resnet\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    assert "unknown model 'resnet'" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "checkpoint.pt").exists()


def test_ship_weights_soup(tmp_path, capsys):
    """scripts/ship_weights.py --soup: the shipped weights are fp16 of the mean of the runs'."""
    from conftest import load_script

    ship = load_script("ship_weights")
    cfg = dict(TINY)
    torch.manual_seed(1)
    a = build_model(cfg.pop("name"), **cfg).state_dict()
    torch.manual_seed(2)
    b = build_model("uresnet", **cfg).state_dict()
    pa, pb = _save(tmp_path / "a.pt", state=a), _save(tmp_path / "b.pt", state=b)
    out = tmp_path / "w.pt"
    assert ship.main([str(pa), str(out), "--soup", str(pb), "--check-images", "1"]) == 0
    shipped = checkpoint.load(out)
    for k, v in shipped["model"].items():
        if v.is_floating_point():
            assert v.dtype == torch.float16
            torch.testing.assert_close(v, ((a[k] + b[k]) / 2).half(), msg=k)
    assert shipped["source"].endswith("uniform soup of 2")
    other = _save(tmp_path / "c.pt", model_cfg=dict(TINY, filters=8))
    assert ship.main([str(pa), str(tmp_path / "x.pt"), "--soup", str(other)]) == 1
    assert "--soup: " + str(other) + " has another model config than " in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert ship.main([str(pa), str(tmp_path / "x.pt"), "--average"]) == 1
    assert "holds no weight average" in capsys.readouterr().err
