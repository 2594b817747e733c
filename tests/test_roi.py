"""ROI data from the simulator, the traditional threshold ROI and the seed-000 charge metrics."""
import json

import numpy as np
import pytest
import torch

from sparseseg.roi import (
    ROIConfig,
    charge_metrics,
    charge_profile,
    prob_to_mask,
    rebin_time,
    roi_charge,
    roi_evaluate,
    simulate_roi_sample,
    threshold_roi,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ROIConfig(n_wires=48, n_ticks=400, vertex_wire=8, vertex_tick=40)


def test_charge_metrics_hand_computed():
    q_truth = np.array([100.0, 100.0, 100.0, 100.0, 10.0])  # last: below min_truth, not valid
    q_reco = np.array([110.0, 90.0, 120.0, 0.0, 5.0])
    m = charge_metrics(q_reco, q_truth, min_truth=30.0, bad_ratio=0.2)
    # valid ratios 1.1, 0.9, 1.2, 0.0; the 0.0 channel is bad
    assert m["n_valid"] == 4 and m["n_bad"] == 1
    assert m["inefficiency"] == pytest.approx(25.0)
    mean = (1.1 + 0.9 + 1.2) / 3
    std = np.sqrt(((1.1 - mean) ** 2 + (0.9 - mean) ** 2 + (1.2 - mean) ** 2) / 3)
    assert m["bias"] == pytest.approx(100 * (mean - 1))  # 6.667
    assert m["bias"] == pytest.approx(6.6667, abs=1e-3)
    assert m["resolution"] == pytest.approx(100 * std / mean)  # 11.69
    assert m["resolution"] == pytest.approx(11.693, abs=1e-3)
    empty = charge_metrics([1.0], [1.0], min_truth=30.0)
    assert empty["n_valid"] == 0 and np.isnan(empty["bias"]) and np.isnan(empty["inefficiency"])
    with pytest.raises(ValueError):
        charge_metrics([1.0, 2.0], [1.0])


def test_charge_profile():
    qt = np.arange(100, dtype=float) + 1
    qr = 0.5 * qt
    assert charge_profile(qr, qt, vertex_wire=10) == pytest.approx(0.5)
    qr2 = qt.copy()
    qr2[60:] = 0  # charge beyond wire 10 + 42 does not count
    assert charge_profile(qr2, qt, vertex_wire=10, n_wires=42) == pytest.approx(1.0)
    assert charge_profile(qr2, qt, vertex_wire=10, n_wires=60) == pytest.approx(qt[10:60].sum() / qt[10:70].sum())
    assert charge_profile(qr, qt, vertex_wire=5, direction=-1) == pytest.approx(0.5)  # clipped at wire 0


def test_roi_charge_with_and_without_baseline():
    s = np.full((2, 10), 2.0)
    s[0, 3:6] += [5.0, 10.0, 5.0]
    mask = np.zeros((2, 10), bool)
    mask[0, 2:7] = True  # one ROI of 5 ticks, ends on pure baseline
    mask[1, 0:2] = True
    mask[1, 5:8] = True  # two ROIs on wire 1
    q = roi_charge(s, mask, baseline=True)
    assert q == pytest.approx([20.0, 0.0])  # the constant 2 is removed
    q0 = roi_charge(s, mask, baseline=False)
    assert q0 == pytest.approx([30.0, 10.0])


def test_threshold_roi_on_constructed_waveforms():
    t = np.arange(1000)
    s = np.zeros((4, 1000))
    s[0] = 20 * np.exp(-0.5 * ((t - 100) / 3.0) ** 2)  # sharp pulse: found
    s[2, 300:700] = 5.0  # prolonged signal (large theta_xz): lost by the LF filter in its middle
    s[3] = 3 * np.exp(-0.5 * ((t - 500) / 3.0) ** 2)  # above loose (2.5) but below tight (4): not kept
    r = threshold_roi(s, noise_rms=1.0, lf_window=61, tight_sigma=4, loose_sigma=2.5, tight_pad=5, loose_pad=10)
    roi = r["roi"]
    assert roi[0, 100] and roi[0, 90] and not roi[0, 150]
    on = np.flatnonzero(roi[0])
    assert on.min() >= 100 - 6 - 10 - 1 and on.max() <= 100 + 6 + 10 + 1  # pulse +- pads
    assert not roi[1].any()  # empty wire
    assert not roi[2].any()  # plateau of 5 sigma: the LF filter leaves at most ~2.5 sigma at its edges
    assert r["loose"][3, 500] and not r["tight"][3].any() and not roi[3].any()
    r_nolf = threshold_roi(s, noise_rms=1.0, lf_window=1)
    assert r_nolf["roi"][2, 300:700].all()
    # the robust RMS estimate works on noise
    rng = np.random.default_rng(0)
    noisy = s + rng.normal(0, 1.0, s.shape)
    rn = threshold_roi(noisy)
    assert rn["roi"][0, 100] and rn["roi"][1].mean() < 0.02


def test_rebin_and_mask_expansion():
    a = np.arange(12, dtype=float).reshape(1, 12)
    np.testing.assert_allclose(rebin_time(a, 5, "sum"), [[10, 35, 21]])
    np.testing.assert_allclose(rebin_time(a, 5, "max"), [[4, 9, 11]])
    m = prob_to_mask(np.array([[0.2, 0.7, 0.9]]), rebin=5, n_ticks=12)
    assert m.shape == (1, 12) and m[0].tolist() == [False] * 5 + [True] * 7


def test_simulated_roi_sample():
    s = simulate_roi_sample("track", 30.0, None, seed=1, index=0, config=SMALL)
    W, T, Tb = 48, 400, 40
    assert s.signal.shape == s.truth.shape == s.mask.shape == (W, T)
    assert s.inputs.shape == (3, W, Tb) and s.target.shape == (1, W, Tb)
    assert set(np.unique(s.inputs[1])) <= {0.0, 1.0} and set(np.unique(s.inputs[2])) <= {0.0, 1.0}
    np.testing.assert_array_equal(s.target[0], rebin_time(s.mask.astype(np.float32), 10, "max"))
    assert s.q_truth.sum() == pytest.approx(s.truth.sum(), rel=0.02)  # time smearing keeps the charge
    assert s.mask[8, 40:60].any()  # signal at the vertex
    assert 0.001 < s.target.mean() < 0.3
    again = simulate_roi_sample("track", 30.0, None, seed=1, index=0, config=SMALL)
    np.testing.assert_array_equal(s.signal, again.signal)
    sh = simulate_roi_sample("shower", None, 500.0, seed=1, index=0, config=SMALL)
    assert sh.meta["theta_xz"] == SMALL.shower_theta_xz and sh.q_truth.sum() > 0
    with pytest.raises(ValueError):
        simulate_roi_sample("cosmic", config=SMALL)


def test_roi_evaluate_tables_and_plots(tmp_path):
    from sparseseg.models import build_model

    torch.manual_seed(0)
    models = {"unet": build_model("roi-unet", base=4)}
    res = roi_evaluate(models, angles=(0, 80), energies=(500,), n_events=2, seed=0, config=SMALL, out_dir=tmp_path)
    assert res["methods"] == ["traditional", "unet"]
    for name in ("roi_metrics.json", "roi_tables.txt", "roi_tracks.png", "roi_showers.png"):
        assert (tmp_path / name).stat().st_size > 0
    trad = res["tracks"]["traditional"]
    assert set(trad) == {"0", "80"} and trad["0"]["n_valid"] > 0
    # the LF-filtered threshold finder loses prolonged tracks: less charge at 80 deg than at 0
    assert trad["80"]["mean_ratio"] < trad["0"]["mean_ratio"] or trad["80"]["inefficiency"] > trad["0"]["inefficiency"]
    assert abs(trad["0"]["bias"]) < 20
    assert np.isfinite(res["showers"]["traditional"]["500"]["profile"])
    data = json.loads((tmp_path / "roi_metrics.json").read_text())
    assert data["tracks"]["unet"]["0"]["n_valid"] == trad["0"]["n_valid"]
    text = (tmp_path / "roi_tables.txt").read_text()
    assert "tracks: bias (%)" in text and "showers: profile (ratio)" in text


def test_roi_summary_rows_by_hand():
    from sparseseg.roi import format_roi_summary, roi_summary

    def m(bias, res, ineff=0.0, profile=None):
        d = {"bias": bias, "resolution": res, "inefficiency": ineff}
        if profile is not None:
            d["profile"] = profile
        return d

    res = {"methods": ["traditional", "UNet"],
           "tracks": {"traditional": {"0": m(-1.0, 10.0), "40": m(-8.0, 20.0), "80": m(-50.0, 30.0, ineff=40.0)},
                      "UNet": {"0": m(-3.0, 12.0), "40": m(4.0, 14.0), "80": m(-20.0, 16.0, ineff=5.0)}},
           "showers": {"traditional": {"100": m(-4.0, 20.0, profile=0.9), "500": m(-10.0, 30.0, profile=0.95)},
                       "UNet": {"100": m(-6.0, 11.0, profile=0.93), "500": m(-8.0, 13.0, profile=0.97)}}}
    cost = {"UNet": {"time_s_median": 1.5, "peak_mem_mb": 1010.4}}
    rows = roi_summary(res, cost)
    assert rows[0] == {"method": "traditional", "bias_0": -1.0, "bias_40": -8.0, "bias_80": -50.0,
                       "mean_abs_bias": 59.0 / 3, "mean_resolution": 20.0, "inefficiency_80": 40.0,
                       "shower_bias": -7.0, "shower_resolution": 25.0, "shower_profile": pytest.approx(0.925)}
    assert rows[1]["mean_abs_bias"] == 9.0 and rows[1]["time_s"] == 1.5 and rows[1]["peak_mem_mb"] == 1010.4
    assert rows[1]["shower_profile"] == pytest.approx(0.95)
    text = format_roi_summary(rows).splitlines()
    assert text[0].split("  ")[0] == "method" and "bias 80 deg %" in text[0] and "peak MB" in text[0]
    assert text[1].split()[:4] == ["traditional", "-1.0", "-8.0", "-50.0"] and text[1].split()[-2:] == ["-", "-"]
    assert text[2].split()[-2:] == ["1.500", "1010"]
    md = format_roi_summary(rows, markdown=True).splitlines()
    assert md[0].startswith("| method | bias 0 deg % |") and md[2].startswith("| traditional | -1.0 | -8.0 | -50.0 | 19.7 |")
