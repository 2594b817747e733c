"""The inference engine: same outputs as the training graph, hand-checked tables, FLOPs, bf16."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseseg.models import build_model
from sparseseg.models.sparse_infer import FastUResNet, _coarsen, _keys, _Level
from sparseseg.models.uresnet import collate

from conftest import RulebookFlops, random_event

ROOT = Path(__file__).resolve().parents[1]


def _trained_looking(dim, **kw):
    """A small UResNet whose BatchNorms hold non-trivial statistics (so folding is tested)."""
    torch.manual_seed(0)
    m = build_model("uresnet", dim=dim, depth=3, filters=8, reps=2, **kw)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return m.eval()


@pytest.mark.parametrize("dim,shape,leak", [(2, (50, 61), 0.0), (2, (33, 40), 0.1), (3, (20, 24, 29), 0.0)])
def test_matches_training_graph(dim, shape, leak):
    m = _trained_looking(dim, leakiness=leak)
    m.backend = "graph"  # spconv's rulebooks: the reference
    events = [random_event(shape, 300, seed=s) for s in (1, 2, 3)]
    idx, feats, sp, _ = collate(events, dim)
    with torch.no_grad():
        ref = m(idx, feats, sp)
    out = FastUResNet(m)(idx, feats, sp)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), float((out - ref).abs().max())


def test_rows_follow_input_rows():
    m = _trained_looking(2)
    ev = random_event((40, 40), 250, seed=4)
    idx, feats, sp, _ = collate([ev], 2)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(ev)))
    fast = FastUResNet(m)
    assert torch.allclose(fast(idx[perm], feats[perm], sp), fast(idx, feats, sp)[perm], atol=1e-5)


def test_neighbour_table_by_hand():
    # 3 x 4 image; sites (0,3) and (1,0) are neighbours in a flat index but not in the image
    coords = torch.tensor([[0, 0, 3], [0, 1, 0], [0, 1, 1], [0, 2, 1], [1, 1, 1]])
    shape = [3, 4]
    keys, order = torch.sort(_keys(coords, shape))
    lv = _Level(coords[order], keys, shape)
    rows = {tuple(c.tolist()): i for i, c in enumerate(lv.coords)}
    nbr = lv.neighbours()
    n = lv.n

    def at(site, dy, dx):  # neighbour row of `site` at offset (dy, dx)
        return int(nbr[rows[site], (dy + 1) * 3 + (dx + 1)])

    assert at((0, 1, 1), 0, 0) == rows[(0, 1, 1)]
    assert at((0, 1, 1), 0, -1) == rows[(0, 1, 0)]
    assert at((0, 1, 1), 1, 0) == rows[(0, 2, 1)]
    assert at((0, 1, 0), -1, -1) == n  # would be (0, 3) of the row above in a flat index
    assert at((0, 0, 3), 1, 1) == n  # past the right edge
    assert at((0, 1, 1), 0, 0) != rows[(1, 1, 1)] and at((1, 1, 1), 0, -1) == n  # batches apart
    assert int((nbr < n).sum()) == 5 + 2 * 3  # centres + three neighbour pairs


@pytest.mark.parametrize("dim", [2, 3])
def test_neighbour_table_against_a_lookup(dim):
    # every slot of every site's row checked against a dictionary of the coordinates
    import itertools

    g = torch.Generator().manual_seed(dim)
    for size, n in ((9, 120), (4, 40), (3, 1)):
        shape = [size] * dim
        coords = torch.unique(torch.cat([torch.randint(0, 2, (n, 1), generator=g),
                                         torch.randint(0, size, (n, dim), generator=g)], 1), dim=0)
        keys, order = torch.sort(_keys(coords, shape))
        lv = _Level(coords[order], keys, shape)
        rows = {tuple(c.tolist()): i for i, c in enumerate(lv.coords)}
        offsets = list(itertools.product((-1, 0, 1), repeat=dim))
        want = torch.tensor([[rows.get((c[0], *(a + o for a, o in zip(c[1:], off))), lv.n) for off in offsets]
                             for c in lv.coords.tolist()])
        assert torch.equal(lv.neighbours(), want)


def test_coarsen_by_hand():
    coords = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 2, 3], [0, 3, 2]])
    shape = [4, 4]
    keys, order = torch.sort(_keys(coords, shape))
    coarse, parent, slot, children = _coarsen(_Level(coords[order], keys, shape))
    assert coarse.coords.tolist() == [[0, 0, 0], [0, 1, 1]]
    assert parent.tolist() == [0, 0, 1, 1]
    assert slot.tolist() == [0, 3, 1, 2]  # (y & 1) * 2 + (x & 1)
    assert children.tolist() == [[0, 4, 4, 1], [4, 2, 3, 4]]


def test_flop_count_matches_rulebooks():
    from sparseseg import Event

    m = _trained_looking(2)
    ev = random_event((40, 44), 300, seed=5)
    fast = FastUResNet(m)
    m.backend = "graph"  # the rulebook path, where the FLOP counter listens
    flops = fast.count_flops(*collate([ev], 2)[:3])
    with torch.no_grad(), RulebookFlops() as fc:
        m([ev])
    assert flops == fc.flops and fast.flops is None
    # hand case: two adjacent pixels and one alone; the stem (1 -> 8 channels) sees 5 pairs
    tiny = Event(np.array([[1, 1], [1, 2], [5, 5]], np.int32), np.ones((3, 1), np.float32), (8, 8))
    flops = fast.count_flops(*collate([tiny], 2)[:3])
    with torch.no_grad(), RulebookFlops() as fc:
        m([tiny])
    assert flops == fc.flops
    stem_flops = 2 * 5 * 1 * 8
    assert flops > stem_flops


def test_few_gemm_shapes_over_many_event_sizes(monkeypatch):
    """oneDNN caches a primitive per bfloat16 GEMM shape: row counts must not follow event sizes."""
    m = _trained_looking(2)
    fast = FastUResNet(m, "bf16", chunk_bytes=1 << 16)
    shapes = set()
    real_mm = torch.mm

    def mm(a, b, **kw):
        if a.dtype == torch.bfloat16:
            shapes.add((a.shape[0], a.shape[1], b.shape[1]))
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", mm)
    for n in range(100, 1400, 97):
        fast(*collate([random_event((64, 64), n, seed=n)], 2)[:3])
    monkeypatch.undo()
    per_filter = {}
    for rows, k, c in shapes:
        per_filter.setdefault((k, c), set()).add(rows)
    assert max(len(v) for v in per_filter.values()) <= 17, per_filter


def test_chunk_plan_pads_less_than_a_quantum():
    from sparseseg.models.sparse_infer import chunk_plan

    # by hand: 2 chunks of 996 rows, rounded up to 11 quanta of 1456 // 16 = 91 rows
    assert chunk_plan(1992, 1456) == (1001, 91)
    assert chunk_plan(100, 256) == (112, 16)  # quantum at least 16 rows
    assert chunk_plan(29788, 7281) == (6370, 455)  # 5 chunks of <= 5958 rows -> 14 quanta
    for n in range(1, 5000, 37):
        for step in (256, 1000, 1456):
            size, q = chunk_plan(n, step)
            last = n - (-(-n // size) - 1) * size
            assert size % q == 0 and size < step + q
            assert -(-last // q) * q - last < q  # the only padded chunk is the last


def test_empty_and_bad_input():
    fast = FastUResNet(_trained_looking(2))
    out = fast(torch.zeros((0, 3), dtype=torch.int32), torch.zeros((0, 1)), [10, 10])
    assert out.shape == (0, 5)
    with pytest.raises(ValueError, match=r"uresnet: expected 1 feature channel\(s\), got 2"):
        fast(torch.zeros((2, 3), dtype=torch.int32), torch.zeros((2, 2)), [10, 10])
    with pytest.raises(ValueError, match="precision 'fp16' unknown; expected fp32 or bf16"):
        FastUResNet(_trained_looking(2), precision="fp16")


def test_bf16_agrees_with_fp32_on_shipped_weights():
    from sparseseg.checkpoint import load_model
    from sparseseg.simulate import simulate_interaction

    model, _ = load_model(ROOT / "weights" / "uresnet2d.pt")
    events = simulate_interaction("crop512", 7, 0)
    idx, feats, sp, _ = collate(events, 2)
    a = FastUResNet(model, "fp32")(idx, feats, sp)
    b = FastUResNet(model, "bf16")(idx, feats, sp)
    agree = float((a.argmax(1) == b.argmax(1)).float().mean())
    assert agree >= 0.999
    assert 0 < float((a - b).abs().max()) < 0.5  # bf16 really ran
