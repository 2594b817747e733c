"""Dense fallbacks: ROI networks, the CVN classifier and the dense UResNet twin."""
import numpy as np
import pytest
import torch

from sparseseg import Event
from sparseseg.models import FAMILIES, build_model, family, names
from sparseseg.metrics import classification_table, format_classification_table
from sparseseg.models.cvn import CVN_CLASSES, SEResBlock
from sparseseg.models.dense_uresnet import convert_sparse_state_dict, densify, predict_events
from sparseseg.models.roi_nets import SqueezeExcite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROI = {"roi-unet": 16, "roi-mobilenetv2": 32, "roi-mobilenetv3": 32, "roi-transformer": 16}


@pytest.mark.parametrize("name", sorted(ROI))
def test_roi_model_shapes_on_odd_inputs(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert model.stride == ROI[name]
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        y = model(x)
        y1 = model(x[:, :1])  # fewer maps than in_channels: missing ones are zeros
    assert y.shape == (2, 1, 37, 53) and y1.shape == (2, 1, 37, 53)
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0
    assert torch.allclose(y1, model(torch.cat([x[:, :1], torch.zeros(2, 2, 37, 53)], 1)).detach())
    with pytest.raises(ValueError, match=r"ROI model: input has 4 channels, more than the model's in_channels = 3"):
        model(torch.rand(1, 4, 16, 16))


def test_roi_model_crop_is_independent_of_padding():
    """A pixel's output does not depend on how far the input is padded (pad then crop)."""
    torch.manual_seed(0)
    model = build_model("roi-unet", base=4).eval()
    x = torch.rand(1, 3, 33, 47)
    with torch.no_grad():
        a = model(x)
        b = model(torch.nn.functional.pad(x, [0, 1, 0, 15]))[..., :33, :47]  # padded to 48 x 48 by hand
    assert torch.allclose(a, b, atol=1e-6)


def test_bce_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("roi-unet", base=4)
    x = torch.rand(4, 3, 32, 48)
    y = (x[:, :1] > 0.7).float()  # learnable: signal where channel 0 is large
    loss_fn = torch.nn.BCELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    first = float(loss_fn(model(x), y).detach())
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    last = float(loss_fn(model(x), y).detach())
    assert last < 0.8 * first


def test_cvn_output_and_views():
    torch.manual_seed(0)
    model = build_model("cvn", widths=(8, 16), blocks=(1, 1)).eval()
    assert len(model.branches) == 3
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 100)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"cvn: expected views as a \(B, 3, H, W\) tensor, got shape \[2, 2, 64, 64\]"):
        model(torch.rand(2, 2, 64, 64))
    # each branch sees only its own view: changing view 2 leaves branch 0's output alone
    x = torch.rand(1, 3, 64, 64)
    x2 = x.clone()
    x2[:, 2] += 5
    with torch.no_grad():
        assert torch.equal(model.branches[0](x[:, :1]), model.branches[0](x2[:, :1]))
        assert not torch.equal(model(x), model(x2))


def test_squeeze_excite_scales_channels():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=2)
    x = torch.rand(2, 8, 5, 7)
    with torch.no_grad():
        se.fc2.weight.zero_()
        se.fc2.bias.copy_(torch.linspace(-2, 2, 8))
        out = se(x)
        expected = x * torch.sigmoid(torch.linspace(-2, 2, 8)).view(1, 8, 1, 1)
        assert torch.allclose(out, expected, atol=1e-6)
        se.fc2.bias.fill_(30.0)  # gate ~ 1: identity
        assert torch.allclose(se(x), x, atol=1e-6)
        se.fc2.bias.fill_(-30.0)  # gate ~ 0: channels switched off
        assert float(se(x).abs().max()) < 1e-6
    # scale is one gate per (sample, channel), and the block is the input times its gate
    torch.manual_seed(1)
    se2 = SqueezeExcite(8)
    x2 = torch.rand(3, 8, 4, 4)
    with torch.no_grad():
        s = se2.scale(x2)
        assert s.shape == (3, 8, 1, 1)
        torch.testing.assert_close(se2(x2), x2 * s)
    blk = SEResBlock(4, 8, stride=2)
    assert blk(torch.rand(1, 4, 9, 9)).shape == (1, 8, 5, 5)


def test_classification_table_hand_example():
    t = classification_table([0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 2, 2, 2, 0], 3, CVN_CLASSES)
    assert t["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    np.testing.assert_allclose(t["efficiency"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(t["purity"], [2 / 3, 1 / 2, 2 / 3])
    assert t["accuracy"] == pytest.approx(5 / 8)
    text = format_classification_table(t)
    assert "nu_mu CC" in text and "purity" in text
    with pytest.raises(ValueError):
        classification_table([0, 3], [0, 1], 3, CVN_CLASSES)


def test_family_table():
    assert names() == ("uresnet", "uresnet-dense", "roi-unet", "roi-mobilenetv2", "roi-mobilenetv3",
                       "roi-transformer", "cvn", "patch-cnn")
    assert names("roi") == ("roi-unet", "roi-mobilenetv2", "roi-mobilenetv3", "roi-transformer")
    assert names(sparse=True) == ("uresnet",)
    assert [FAMILIES[n].label for n in names("roi")] == ["UNet", "MobileNetV2", "MobileNetV3", "Transformer"]
    assert family("cvn").classes == ("nu_mu CC", "nu_e CC", "NC")
    assert family("roi-unet").classes == ("signal",)
    assert family("uresnet-dense").classes == family("uresnet").classes == ("HIP", "MIP", "shower", "delta", "Michel")
    with pytest.raises(ValueError, match=r"^unknown model 'nope'; available: cvn, patch-cnn, roi-mobilenetv2, "):
        family("nope")
    # every dense family runs on its example input and outputs one channel per class
    torch.manual_seed(0)
    for name in names(sparse=False):
        spec = family(name)
        with torch.no_grad():
            out = build_model(name).eval()(torch.rand(spec.example_input))
        b, h, w = spec.example_input[0], spec.example_input[2], spec.example_input[3]
        per_pixel = spec.task in ("roi", "segment")
        assert tuple(out.shape) == ((b, len(spec.classes), h, w) if per_pixel else (b, len(spec.classes))), name
    with pytest.raises(ValueError, match="unknown option"):
        build_model("roi-unet", nonsense=1)


# --------------------------------------------------------------------------- dense twin
def test_dense_twin_parameter_shapes_follow_sparse_widths():
    model = build_model("uresnet-dense")  # defaults: depth 5, filters 32
    widths = [32, 64, 96, 128, 160]
    sd = model.state_dict()
    assert sd["stem.weight"].shape == (32, 1, 3, 3)
    for i, w in enumerate(widths):
        assert sd[f"encoder.{i}.0.conv1.weight"].shape == (w, w, 3, 3)
        assert sd[f"encoder.{i}.1.conv2.weight"].shape == (w, w, 3, 3)
    for i in range(4):
        assert sd[f"down.{i}.1.weight"].shape == (widths[i + 1], widths[i], 2, 2)
        j = 3 - i  # decoder runs from the deepest level up
        assert sd[f"up.{i}.1.weight"].shape == (widths[j + 1], widths[j], 2, 2)  # ConvTranspose: (in, out, k, k)
        assert sd[f"decoder.{i}.0.conv1.weight"].shape == (widths[j], 2 * widths[j], 3, 3)
        assert sd[f"decoder.{i}.0.shortcut.weight"].shape == (widths[j], 2 * widths[j], 1, 1)
    assert sd["head.weight"].shape == (5, 32, 1, 1)
    x = torch.rand(1, 1, 21, 30)
    assert model.eval()(x).shape == (1, 5, 21, 30)
    m3 = build_model("uresnet-dense", dim=3, depth=2, filters=4, reps=1).eval()
    assert m3(torch.rand(1, 1, 5, 6, 7)).shape == (1, 5, 5, 6, 7)


def _full_event(shape, seed=0):
    coords = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1).astype(np.int32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(coords))
    return Event(coords[perm], rng.uniform(10, 300, (len(coords), 1)).astype(np.float32), shape)


def test_dense_twin_events_helper_order(make_event):
    torch.manual_seed(0)
    model = build_model("uresnet-dense", depth=3, filters=4, reps=1).eval()
    a = make_event((19, 23), 40, seed=1)
    b = make_event((12, 30), 25, seed=2)
    with torch.no_grad():
        out = predict_events(model, [a, b])
        dense = model(densify([a, b], 1, model.stride))
        rev = predict_events(model, [a.subset(np.arange(len(a))[::-1]), b])  # same padded batch shape
    assert out.shape == (len(a) + len(b), 5)
    # row i of event a is the dense logit at a.coords[i]
    for i in (0, 7, len(a) - 1):
        r, c = a.coords[i]
        assert torch.allclose(out[i], dense[0, :, r, c])
    r, c = b.coords[3]
    assert torch.allclose(out[len(a) + 3], dense[1, :, r, c])
    assert torch.allclose(rev[: len(a)], out[: len(a)].flip(0), atol=1e-6)


def test_dense_twin_matches_sparse_model_on_a_full_image():
    pytest.importorskip("spconv")
    for dim, shape in ((2, (16, 16)), (3, (8, 8, 8))):
        kw = dict(dim=dim, depth=3, filters=4, reps=1, leakiness=0.1)
        torch.manual_seed(0)
        sparse = build_model("uresnet", **kw)
        for m in sparse.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        sparse.eval()
        dense = build_model("uresnet-dense", **kw).eval()
        state = convert_sparse_state_dict(sparse.state_dict(), dim)
        assert set(state) == set(dense.state_dict())
        dense.load_state_dict(state)
        ev = _full_event(shape)
        with torch.no_grad():
            a = sparse([ev])
            b = predict_events(dense, [ev])
        assert a.shape == b.shape == (len(ev), 5)
        assert torch.allclose(a, b, atol=1e-5)


def test_cvn_dataset_from_simulated_interactions():
    from sparseseg.tasks.cvn import cvn_dataset

    x, y = cvn_dataset(3, seed=3)  # 500 x 500 views, as the DUNE CVN
    assert x.shape == (3, 3, 500, 500) and x.dtype == np.float32
    assert y.shape == (3,) and set(y.tolist()) <= {0, 1, 2}
    assert (x.reshape(3, 3, -1).max(axis=2) >= 10).all()  # every view holds charge
    assert x.max() <= 300.0  # saturation as in the Events
    x2, y2 = cvn_dataset(3, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
