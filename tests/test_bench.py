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
    assert row["gflops"] == pytest.approx(row["gflops_per_s"] * row["time_s_median"])
    bad = bench.run_worker({"model": "nope"})
    assert bad["model"] == "nope" and bad["error"].startswith("exit 1")
    with pytest.raises(ValueError, match="bench: unknown model"):
        bench.run(["nope"])
    # bf16 rows measure the CPU engine: on a GPU they are skipped, not mislabelled
    skipped = bench.worker({"model": "uresnet3d-bf16", "device": "cuda"})
    assert skipped["error"] == "bf16 rows measure the CPU inference engine: skipped on cuda"


def test_markdown_report_and_targets():
    res = {"device": "cpu", "threads": 2, "torch": "x", "cpu_bf16": False,
           "rows": [{"model": "uresnet2d", "input": "Y", "time_s_median": 0.1, "peak_mem_mb": 100.0,
                     "gflops": 5.0, "gflops_per_s": 50.0, "event_time_s": 0.25, "event_peak_mem_mb": 140.0},
                    {"model": "uresnet2d-graph", "input": "Y graph", "time_s_median": 0.2, "peak_mem_mb": 90.0,
                     "event_time_s": 0.5},
                    {"model": "uresnet2d-dense", "input": "Y dense", "time_s_median": 40.0, "peak_mem_mb": 4000.0},
                    {"model": "cvn", "error": "exit 1: boom"}],
           "sgemm_fp32_gflops_per_s": 100.0, "sparse_efficiency": 0.5}
    # the summary _run derives from the rows
    by = {r["model"]: r for r in res["rows"] if "error" not in r}
    res.update(deployed="uresnet2d", event_time_s=0.25, event_peak_mem_mb=140.0, speedup_over_graph=2.0,
               ratios={"dense_over_sparse_time": 400.0, "dense_over_sparse_mem": 40.0,
                       "dense_over_sparse_time_deployed": 400.0, "dense_over_sparse_mem_deployed": 40.0})
    assert by["uresnet2d"]["event_time_s"] == 0.25
    res["targets"] = bench._targets(res)
    met = {t["target"]: t["met"] for t in res["targets"]}
    assert met == {"event_time_s": False, "event_peak_mem_mb": True, "dense_over_sparse_time": True,
                   "dense_over_sparse_mem": True, "efficiency": True}
    text = bench.format_markdown(res)
    assert "| uresnet2d | Y | 0.100 | 100 | 5.0 | 50.0 |" in text
    assert "| cvn | - | error: exit 1: boom | | | |" in text
    assert "| uresnet2d (what `predict` runs here) | 0.250 | 140 |" in text
    assert "| uresnet2d-graph | 0.500 | - |" in text
    assert "Inference engine over the training graph, whole event: x2.0." in text
    assert "Dense / sparse fp32 on the same Y plane: time x400.0, memory x40.0." in text
    assert "reaches 50% of the fp32 peak" in text
    assert "| 3-plane uboone event, median time (s) | 0.25 | <= 0.1 | no |" in text
