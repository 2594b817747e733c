"""Benchmark plumbing: the rulebook FLOP cross-check, inputs, worker rows, report text."""
import numpy as np
import pytest
import torch

from sparseseg import bench

from conftest import RulebookFlops


def test_flop_count_hand_case():
    import spconv.pytorch as spconv

    from sparseseg.models.uresnet import _algo, guard_cpu_backward

    guard_cpu_backward()
    # two horizontally adjacent pixels and one isolated pixel; 3x3 submanifold conv, 1 -> 2 channels:
    # pairs = 3 (centre) + 2 (the adjacent pair sees each other) = 5 -> 2 * 5 * 1 * 2 = 20 FLOPs
    idx = torch.tensor([[0, 1, 1], [0, 1, 2], [0, 5, 5]], dtype=torch.int32)
    x = spconv.SparseConvTensor(torch.ones(3, 1), idx, [8, 8], 1)
    conv = spconv.SubMConv2d(1, 2, 3, bias=False, algo=_algo("cpu"))
    with torch.no_grad(), RulebookFlops() as fc:
        conv(x)
    assert fc.flops == 20
    # strided 2x2 conv, 1 -> 4 channels: every site has exactly one pair -> 2 * 3 * 1 * 4 = 24
    down = spconv.SparseConv2d(1, 4, 2, 2, bias=False, algo=_algo("cpu"))
    with torch.no_grad(), RulebookFlops() as fc:
        down(x)
    assert fc.flops == 24


def test_occupancy_plane_is_exact_below_one_event():
    ev = bench.occupancy_plane(0.001)
    assert ev.shape == (1008, 3456)
    assert len(ev) == int(0.001 * 1008 * 3456)
    assert len(np.unique(ev.coords, axis=0)) == len(ev)


def test_worker_row_and_error_row():
    row = bench.run_worker({"model": "cvn", "threads": 1, "reps": 1})
    assert row["model"] == "cvn" and row["input"] == "3 views x 500 x 500"
    assert row["time_s_median"] > 0 and row["peak_mem_mb"] > 0
    # the default CVN on its 3 x 500 x 500 input: 2.036 GFLOP (a change of the network shows here)
    assert row["gflops"] == pytest.approx(2.036294784, rel=1e-9)
    bad = bench.run_worker({"model": "nope"})
    assert bad["model"] == "nope" and bad["error"].startswith("exit 1")
    with pytest.raises(ValueError, match="bench: unknown model"):
        bench.run(["nope"])
    # bf16 rows measure the CPU engine: on a GPU they are skipped, not mislabelled
    skipped = bench.worker({"model": "uresnet3d-bf16", "device": "cuda"})
    assert skipped["error"] == "bf16 rows measure the CPU inference engine: skipped on cuda"


def test_summary_derived_from_rows_and_targets():
    rows = [{"model": "uresnet2d", "input": "Y", "time_s_median": 0.1, "peak_mem_mb": 100.0,
             "gflops": 5.0, "gflops_per_s": 50.0, "event_time_s": 0.25, "event_peak_mem_mb": 140.0},
            {"model": "uresnet2d-graph", "input": "Y graph", "time_s_median": 0.2, "peak_mem_mb": 90.0,
             "event_time_s": 0.5},
            {"model": "uresnet2d-bf16", "input": "Y bf16", "time_s_median": 0.05, "peak_mem_mb": 80.0,
             "gflops": 5.0, "gflops_per_s": 100.0, "event_time_s": 0.08, "event_peak_mem_mb": 120.0},
            {"model": "uresnet2d-dense", "input": "Y dense", "time_s_median": 40.0, "peak_mem_mb": 4000.0},
            {"model": "cvn", "error": "exit 1: boom"}]
    peaks = {"sgemm_fp32_gflops_per_s": 100.0, "sgemm_bf16_gflops_per_s": 400.0}
    # without bf16 the fp32 engine is what predict runs
    res = bench.summarize(rows, False, peaks)
    assert res["deployed"] == "uresnet2d"
    assert (res["event_time_s"], res["event_peak_mem_mb"]) == (0.25, 140.0)
    assert res["speedup_over_graph"] == pytest.approx(0.5 / 0.25)
    assert res["ratios"] == pytest.approx({"dense_over_sparse_time": 400.0, "dense_over_sparse_mem": 40.0,
                                           "dense_over_sparse_time_deployed": 400.0,
                                           "dense_over_sparse_mem_deployed": 40.0})
    assert res["sparse_efficiency"] == pytest.approx(0.5) and res["sparse_efficiency_bf16"] == pytest.approx(0.25)
    met = {t["target"]: (t["value"], t["met"]) for t in res["targets"]}
    assert met == {"event_time_s": (0.25, False), "event_peak_mem_mb": (140.0, True),
                   "dense_over_sparse_time": (pytest.approx(400.0), True),
                   "dense_over_sparse_mem": (pytest.approx(40.0), True), "efficiency": (pytest.approx(0.5), True)}
    # with bf16 the bf16 engine is deployed: its event figures, ratios and efficiency are the targets
    res = bench.summarize(rows, True, peaks)
    assert res["deployed"] == "uresnet2d-bf16" and res["event_time_s"] == 0.08
    assert res["speedup_over_graph"] == pytest.approx(0.5 / 0.08)
    assert res["ratios"]["dense_over_sparse_time_deployed"] == pytest.approx(800.0)
    assert res["ratios"]["dense_over_sparse_mem_deployed"] == pytest.approx(50.0)
    met = {t["target"]: (t["value"], t["met"]) for t in res["targets"]}
    assert met["event_time_s"] == (0.08, True) and met["efficiency"] == (pytest.approx(0.25), False)
    # no dense row, no deployed row: those targets are absent, not guessed
    assert [t["target"] for t in bench.summarize(rows[4:], False, {})["targets"]] == []


def test_markdown_report():
    rows = [{"model": "uresnet2d", "input": "Y", "time_s_median": 0.1, "peak_mem_mb": 100.0,
             "gflops": 5.0, "gflops_per_s": 50.0, "event_time_s": 0.25, "event_peak_mem_mb": 140.0},
            {"model": "uresnet2d-graph", "input": "Y graph", "time_s_median": 0.2, "peak_mem_mb": 90.0,
             "event_time_s": 0.5},
            {"model": "uresnet2d-dense", "input": "Y dense", "time_s_median": 40.0, "peak_mem_mb": 4000.0},
            {"model": "cvn", "error": "exit 1: boom"}]
    res = {"device": "cpu", "threads": 2, "torch": "x", "cpu_bf16": False, "rows": rows}
    res.update(bench.summarize(rows, False, {"sgemm_fp32_gflops_per_s": 100.0}))
    text = bench.format_markdown(res)
    assert "| uresnet2d | Y | 0.100 | 100 | 5.0 | 50.0 |" in text
    assert "| cvn | - | error: exit 1: boom | | | |" in text
    assert "| uresnet2d (what `predict` runs here) | 0.250 | 140 |" in text
    assert "| uresnet2d-graph | 0.500 | - |" in text
    assert "Inference engine over the training graph, whole event: x2.0." in text
    assert "Dense / sparse fp32 on the same Y plane: time x400.0, memory x40.0." in text
    assert "reaches 50% of the fp32 peak" in text
    assert "| 3-plane uboone event, median time (s) | 0.25 | <= 0.1 | no |" in text


def test_tensor_peak_is_the_live_bytes_not_the_allocations():
    from sparseseg.memory import tensor_peak_mb

    def work():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 19)  # 2 MiB: 6 MiB held
        del a, b
        c = torch.ones(1 << 20)  # 4 MiB after both were freed: the peak stays 6
        return float(c[0])

    assert tensor_peak_mb(work) == pytest.approx(6.0, abs=0.01)


def test_training_worker_row_on_a_tiny_batch(tmp_path):
    import pickle

    from conftest import random_event

    path = tmp_path / "b.pkl"
    with open(path, "wb") as fh:
        pickle.dump([[random_event((40, 44), 120, seed=s) for s in (i, i + 10)] for i in range(3)], fh)
    row = bench.train_worker({"train": "engine_fp32", "threads": 1, "input_file": str(path), "warmup": 1})
    assert (row["variant"], row["precision"], row["batch"], row["steps"]) == ("engine_fp32", "fp32", 2, 2)
    assert 0 < row["peak_tensor_mb"] < 200 and row["images_per_s"] > 0
    text = bench.format_train({"engine_fp32": row})
    assert text.splitlines()[0].endswith("| peak RSS (MB) | peak tensors (MB) |")
    assert f"| {row['peak_tensor_mb']:.0f} |" in text.splitlines()[2]
