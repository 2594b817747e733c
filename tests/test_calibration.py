"""Gain calibration from the image (sparseseg.calibration), input_norm in the models, the
augmentation config and the robustness conditions."""
import dataclasses

import numpy as np
import pytest
import torch

from sparseseg.calibration import ALPHA, NOMINAL_MIP, mip_scale, normalize


def test_mip_scale_by_hand():
    # fixed point of s = median{v > s/2}: 100 values at 40 and 100 at 60 plus low edge pixels
    v = np.concatenate([np.full(100, 40.0), np.full(101, 60.0), np.full(150, 12.0)])
    assert mip_scale(v) == 60.0  # the 12s are below s/2 once s >= 24; median of {40 x100, 60 x101} is 60
    assert mip_scale(np.full(10, 99.0)) == NOMINAL_MIP  # too few pixels: no rescaling
    assert ALPHA == 0.5


def test_mip_scale_is_the_iterated_median():
    # the definition, written out: start at the median of all values, then the median of the
    # values above ALPHA times the scale, ITERATIONS times (torch.median: the lower middle value)
    from sparseseg.calibration import ITERATIONS, MIN_PIXELS

    def by_definition(v):
        v = torch.as_tensor(v, dtype=torch.float32)
        if v.numel() < MIN_PIXELS:
            return NOMINAL_MIP
        s = v.median()
        for _ in range(ITERATIONS):
            sel = v[v > ALPHA * s]
            if sel.numel() == 0:
                break
            s = sel.median()
        return float(s)

    rng = np.random.default_rng(5)
    for n in (0, 29, 30, 31, 64, 1000, 4001):
        for v in (rng.uniform(10, 300, n), rng.integers(10, 300, n).astype(float), np.full(n, 42.0),
                  np.concatenate([rng.normal(58, 5, n), rng.uniform(10, 300, n // 3)]).clip(10, 300)):
            assert mip_scale(v) == by_definition(v), (n, v[:5])


def test_mip_scale_follows_the_gain_through_the_threshold():
    from sparseseg.simulate import simulate_interaction
    from sparseseg.simulate.detector import default_conditions

    base = default_conditions("crop512")
    ratios = []
    for k in range(3):
        nominal = simulate_interaction("crop512", 77, k)
        for g in (0.5, 2.0):
            other = simulate_interaction("crop512", 77, k, conditions=dataclasses.replace(base, gain=g))
            for a, b in zip(nominal, other):
                if len(a) > 200:
                    ratios.append(mip_scale(b.features) / mip_scale(a.features) / g)
    ratios = np.array(ratios)
    assert abs(ratios.mean() - 1) < 0.02 and ratios.std() < 0.05, ratios
    # the plain median does not follow the gain (the threshold cuts the low tail differently)


def test_normalize_per_image_in_a_batch():
    idx = torch.tensor([[0, 0, 0]] * 40 + [[1, 0, 0]] * 40)
    feats = torch.cat([torch.full((40, 1), 29.0), torch.full((40, 1), 116.0)])
    out = normalize(idx, feats)
    assert torch.allclose(out, torch.full((80, 1), NOMINAL_MIP))


@pytest.mark.parametrize("dim", [2, 3])
def test_input_norm_makes_the_model_gain_free(dim):
    from sparseseg.models import build_model
    from sparseseg.models.sparse_infer import FastUResNet
    from sparseseg.models.uresnet import collate

    from conftest import random_event

    m = build_model("uresnet", dim=dim, depth=3, filters=8, input_norm="mip").eval()
    ev = [random_event((30, 31) if dim == 2 else (12, 13, 14), 200, seed=s) for s in (1, 2)]
    idx, f, sh, _ = collate(ev)
    scaled = f.clone()
    scaled[idx[:, 0] == 1] *= 1.7  # a different gain on the second image only
    with torch.no_grad():
        a = m(idx, f, sh)
        b = m(idx, scaled, sh)
        c = FastUResNet(m)(idx, scaled, sh)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-4)
    raw = build_model("uresnet", dim=dim, depth=3, filters=8).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(idx, f, sh), raw(idx, scaled, sh), atol=1e-3)
    with pytest.raises(ValueError, match="uresnet: input_norm must be one of none, mip, got 'adc'"):
        build_model("uresnet", dim=2, input_norm="adc")


def test_normalize_views_per_view_and_the_cvn_input():
    from sparseseg.calibration import normalize_views
    from sparseseg.models import build_model
    from sparseseg.models.cvn import model_input
    from sparseseg.tasks import forward_all
    from sparseseg.tasks.cvn import CVNTask, cvn_probabilities

    rng = np.random.default_rng(0)
    views = np.zeros((2, 3, 40, 40), np.float32)
    mask = rng.random((2, 3, 40, 40)) < 0.3
    views[mask] = 29.0  # every pixel at 29 ADC: half the nominal MIP scale
    views[1, 2][mask[1, 2]] = 116.0  # one view at twice it
    views[1, 1] = 0.0
    views[1, 1, 0, :5] = 300.0  # too few pixels to calibrate: left as it is
    out = normalize_views(torch.from_numpy(views))
    expect = torch.from_numpy(np.where(mask, NOMINAL_MIP, 0.0).astype(np.float32))
    expect[1, 1] = torch.from_numpy(views[1, 1])
    assert torch.equal(out, expect)
    with pytest.raises(ValueError, match=r"normalize_views: expected \(B, V, H, W\) views, got shape \[3, 40, 40\]"):
        normalize_views(torch.zeros(3, 40, 40))

    # a CVN with input_norm mip answers the same whatever the gain of each view
    torch.manual_seed(0)
    m = build_model("cvn", widths=[4, 8], blocks=[1, 1], input_norm="mip").eval()
    gains = np.array([0.6, 1.0, 1.8], np.float32)[None, :, None, None]
    assert np.allclose(cvn_probabilities(m, views), cvn_probabilities(m, views * gains), atol=1e-6)
    logits, _ = forward_all(m, views, 2)  # the network alone takes what it is given
    assert np.allclose(cvn_probabilities(m, views), torch.softmax(m(model_input(m, views)), 1).detach().numpy(),
                       atol=1e-6)
    assert not np.allclose(torch.softmax(logits, 1).numpy(), cvn_probabilities(m, views), atol=1e-4)
    # training feeds the same calibrated views
    from sparseseg.config import resolve

    cfg = resolve({"model": {"name": "cvn", "input_norm": "mip"}})
    x, y, _ = CVNTask(cfg).prepare((views, np.zeros(2, np.int64)), "cpu")
    assert torch.equal(x, out)
    with pytest.raises(ValueError, match="cvn: input_norm must be one of none, mip, got 'adc'"):
        build_model("cvn", input_norm="adc")


def test_augmentation_config_and_draws():
    from sparseseg.config import AUGMENT_DEFAULTS, resolve
    from sparseseg.tasks.segment import draw_conditions

    cfg = resolve({"data": {"augment": True}})
    assert cfg["data"]["augment"] == AUGMENT_DEFAULTS
    assert resolve({"data": {"augment": {"gain": [0.8, 1.25]}}})["data"]["augment"]["gain"] == [0.8, 1.25]
    assert resolve({})["data"]["augment"] is None and resolve({})["data"]["label_rule"] == "visible"
    with pytest.raises(ValueError, match="config: unknown key data.augment.gian"):
        resolve({"data": {"augment": {"gian": [1, 2]}}})
    with pytest.raises(ValueError, match="config: data.label_rule 'strict' unknown; expected visible or legacy"):
        resolve({"data": {"label_rule": "strict"}})
    aug = cfg["data"]["augment"]
    draws = [draw_conditions(aug, "crop512", 1, k) for k in range(200)]
    assert draws[:5] == [draw_conditions(aug, "crop512", 1, k) for k in range(5)]  # a pure function of (seed, k)
    drawn = [d for d in draws if d is not None]
    assert 0.7 < len(drawn) / len(draws) < 0.9
    gains = np.array([d.gain for d in drawn])
    assert gains.min() >= 0.5 and gains.max() <= 2.0 and (gains < 0.7).any() and (gains > 1.5).any()
    assert all(10.0 <= d.threshold <= 20.0 for d in drawn)
    assert sum(d.threshold == 10.0 for d in drawn) > 0.3 * len(drawn)
    assert draw_conditions(None, "crop512", 1, 0) is None
    assert draw_conditions(aug, "pilarnet", 1, 3) is None or draw_conditions(aug, "pilarnet", 1, 3).noise_adc is None


def test_robustness_conditions():
    from sparseseg.robustness import CONDITIONS, conditions_for
    from sparseseg.simulate.detector import default_conditions

    names = [n for n, _ in CONDITIONS]
    assert names == ["nominal", "gain 0.5", "gain 0.7", "gain 1.5", "gain 2.0", "noise 2.5", "noise 3.5", "noise 4.5",
                     "dead +10%", "threshold 15", "threshold 20"]
    assert conditions_for("uboone", {}) == default_conditions("uboone")
    assert conditions_for("uboone", {"gain": 0.5}).gain == 0.5
    assert conditions_for("uboone", {"dead_fraction_add": 0.1}).dead_fraction == pytest.approx(0.13)
