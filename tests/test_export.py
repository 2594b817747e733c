"""TorchScript / ONNX export of the dense models, checked against PyTorch to 1e-4."""
import numpy as np
import pytest
import torch

from sparseseg.export import export_model, load_dense_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

try:  # ONNX tests need both the exporter's onnx package and onnxruntime
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    HAVE_ONNX = True
except ImportError:  # pragma: no cover
    HAVE_ONNX = False

CASES = {
    "roi-unet": ((1, 3, 37, 53), {"base": 4}),
    "roi-mobilenetv2": ((1, 3, 37, 53), {"width_mult": 0.5}),
    "roi-mobilenetv3": ((1, 3, 37, 53), {"width_mult": 0.5}),
    "roi-transformer": ((1, 3, 37, 53), {"base": 4}),
    "cvn": ((2, 3, 64, 64), {"widths": (8, 16), "blocks": (1, 1)}),
    "uresnet-dense": ((1, 1, 21, 30), {"depth": 3, "filters": 8, "reps": 1}),
}
FORMATS = ["torchscript", pytest.param("onnx", marks=pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime not installed"))]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_round_trip(name, fmt, tmp_path):
    shape, kw = CASES[name]
    out = tmp_path / f"{name}.{fmt}"
    r = export_model(name, None, fmt, out, shape, model_kwargs=kw)
    assert out.exists() and out.stat().st_size > 0
    assert r["max_abs_diff"] <= 1e-4
    assert r["input_shape"] == list(shape)
    assert r["output_shape"] == ([shape[0], 3] if name == "cvn" else [shape[0], 1 if name.startswith("roi") else 5, *shape[2:]])


def test_exported_models_take_other_sizes(tmp_path):
    """Spatial axes stay dynamic: the exported ROI UNet pads/crops like the PyTorch one."""
    torch.manual_seed(0)
    r = export_model("roi-unet", None, "torchscript", tmp_path / "u.pt", (1, 3, 32, 32), model_kwargs={"base": 4})
    loaded = torch.jit.load(r["path"])
    x = torch.rand(2, 2, 45, 29)
    y = loaded(x)
    assert y.shape == (2, 1, 45, 29) and float(y.min()) > 0 and float(y.max()) < 1
    if HAVE_ONNX:
        import onnxruntime as ort

        r = export_model("roi-unet", None, "onnx", tmp_path / "u.onnx", (1, 3, 32, 32), model_kwargs={"base": 4})
        sess = ort.InferenceSession(r["path"], providers=["CPUExecutionProvider"])
        z = sess.run(None, {"input": np.random.rand(2, 3, 45, 29).astype(np.float32)})[0]
        assert z.shape == (2, 1, 45, 29)


def test_export_with_checkpoint_weights(tmp_path):
    from sparseseg.train import train

    cfg = {"model": {"name": "roi-unet", "base": 4}, "data": {"val_images": 2, "num_workers": 0},
           "train": {"batch_size": 1, "max_steps": 1, "val_every": 1}}
    train(cfg, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    model, _ = load_dense_checkpoint(ckpt, "roi-unet")
    x = torch.rand(2, 3, 32, 32).numpy()
    loaded, ck = load_dense_checkpoint(ckpt)
    assert ck["classes"] == ["signal"] and ck["step"] == 1
    r = export_model("roi-unet", ckpt, "torchscript", tmp_path / "roi.ts", (1, 3, 32, 32))
    ts = torch.jit.load(r["path"])
    xt = torch.from_numpy(x[:1])
    with torch.no_grad():
        assert torch.allclose(ts(xt), model(xt), atol=1e-5)
    with pytest.raises(ValueError, match="holds model 'roi-unet'"):
        export_model("roi-mobilenetv2", ckpt, "torchscript", tmp_path / "x.ts")


def test_sparse_model_cannot_be_exported(tmp_path):
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(ValueError, match="spconv") as err:
            export_model("uresnet", None, fmt, tmp_path / "u.onnx")
        msg = str(err.value)
        assert "rulebook" in msg and "uresnet-dense" in msg and "Python" in msg
    assert not (tmp_path / "u.onnx").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model("roi-unet", None, "tflite", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown model"):
        export_model("nope", None, "onnx", tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        export_model("roi-unet", tmp_path / "missing.pt", "torchscript", tmp_path / "x")
