"""The differentiable CPU engine against spconv's rulebooks (the reference graph): forward,
every parameter gradient, a whole optimizer step, bf16, and checkpoints shared by both."""
import copy

import numpy as np
import pytest
import torch

from sparseseg import Event
from sparseseg.models import build_model
from sparseseg.models.sparse_engine import engine_forward
from sparseseg.models.uresnet import collate, cpu_path

from conftest import random_event


def _model(dim, depth=3, reps=2, leak=0.0, filters=8, dtype=torch.float64):
    torch.manual_seed(0)
    m = build_model("uresnet", dim=dim, depth=depth, filters=filters, reps=reps, leakiness=leak)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():  # non-trivial affine BatchNorms and running statistics
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
    return m.to(dtype).train()


def _clustered_event(shape, n, seed):
    """Pixels along random walks (neighbours exist, as on tracks), unique."""
    rng = np.random.default_rng(seed)
    pts = [rng.integers(0, s) for s in shape]
    out = []
    p = np.array(pts)
    for _ in range(4 * n):
        p = np.clip(p + rng.integers(-1, 2, len(shape)), 0, np.array(shape) - 1)
        out.append(p.copy())
    coords = np.unique(np.array(out), axis=0)[:n].astype(np.int32)
    feats = rng.uniform(10, 300, (len(coords), 1)).astype(np.float32)
    return Event(coords, feats, tuple(shape))


def _both(m, events, dtype=torch.float64):
    """(logits, grads) of the graph and of the engine on the same batch, same loss."""
    idx, feats, shape, _ = collate(events)
    feats = feats.to(dtype)
    target = torch.randn(idx.shape[0], m.config.num_classes, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out = []
    for backend in ("graph", "engine"):
        m.zero_grad()
        m.backend = backend
        logits = m(idx, feats, shape)
        (logits * target).sum().backward()
        out.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


CASES = [  # dim, shape, depth, reps, leak
    (2, (45, 61), 3, 2, 0.0),
    (2, (33, 40), 5, 1, 0.1),
    (2, (17, 23), 1, 3, 0.0),
    (2, (64, 64), 4, 2, 0.0),
    (3, (13, 18, 21), 3, 2, 0.0),
    (3, (20, 24, 29), 2, 1, 0.2),
]


@pytest.mark.parametrize("dim,shape,depth,reps,leak", CASES)
def test_engine_equals_graph_forward_and_every_gradient(dim, shape, depth, reps, leak):
    m = _model(dim, depth, reps, leak)
    events = [_clustered_event(shape, 120, s) for s in (1, 2)] + [random_event(shape, 40, seed=7)]
    (ref, gref), (out, gout) = _both(m, events)
    assert _rel(out, ref) < 1e-10
    worst = max(_rel(gout[n], gref[n]) for n in gref)
    assert worst < 1e-10, worst
    # and in float32: forward to 1e-5; all gradients together to 1e-4
    m32 = _model(dim, depth, reps, leak, dtype=torch.float32)
    (ref, gref), (out, gout) = _both(m32, events, torch.float32)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    flat = lambda g: torch.cat([v.reshape(-1) for v in g.values()])  # noqa: E731
    assert _rel(flat(gout), flat(gref)) < 1e-4


def test_single_pixels_and_an_empty_batch_member():
    m = _model(2, depth=4)
    lone = Event(np.array([[3, 4]], np.int32), np.array([[50.0]], np.float32), (30, 31))
    empty = Event(np.zeros((0, 2), np.int32), np.zeros((0, 1), np.float32), (30, 31))
    far = Event(np.array([[0, 0], [29, 30]], np.int32), np.array([[20.0], [200.0]], np.float32), (30, 31))
    (ref, gref), (out, gout) = _both(m, [lone, empty, far, _clustered_event((30, 31), 50, 4)])
    assert out.shape == (1 + 2 + 50, 5)
    assert _rel(out, ref) < 1e-10
    assert max(_rel(gout[n], gref[n]) for n in gref) < 1e-10


def test_rows_follow_input_order():
    m = _model(2).eval()
    ev = _clustered_event((40, 40), 150, 9)
    idx, feats, shape, _ = collate([ev])
    perm = torch.randperm(idx.shape[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = engine_forward(m, idx, feats.double(), shape)
        b = engine_forward(m, idx[perm], feats[perm].double(), shape)
    assert torch.allclose(a[perm], b, atol=1e-12)


def test_one_training_step_gives_the_same_weights():
    from sparseseg.losses import weighted_cross_entropy

    events = [_clustered_event((48, 50), 200, s) for s in (11, 12, 13)]
    for e in events:
        e.labels = np.random.default_rng(0).integers(0, 5, len(e)).astype(np.uint8)
    labels = torch.from_numpy(np.concatenate([e.labels for e in events]).astype(np.int64))
    after = []
    for backend in ("graph", "engine"):
        m = _model(2, depth=3, dtype=torch.float32)
        m.backend = backend
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        weighted_cross_entropy(m(events), labels).backward()
        opt.step()
        after.append({k: v.clone() for k, v in m.state_dict().items()})
    for k in after[0]:
        torch.testing.assert_close(after[1][k], after[0][k], rtol=0, atol=1e-4)
    moved = max(float((after[0][k] - _model(2, 3, dtype=torch.float32).state_dict()[k]).abs().max())
                for k in after[0] if after[0][k].dtype.is_floating_point)
    assert moved > 5e-4  # the step did change the weights


def test_bf16_follows_autocast_and_keeps_float32_parameters():
    m = _model(2, depth=3, filters=16, dtype=torch.float32)
    ev = [_clustered_event((64, 64), 400, s) for s in (1, 2)]
    idx, feats, shape, _ = collate(ev)
    m.backend = "engine"
    ref = m(idx, feats, shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(idx, feats, shape)
    assert out.dtype == torch.float32  # the head runs in float32
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05
    assert float((out - ref).abs().max()) > 0  # it did run in bf16
    out.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    assert m.encoder[0][0].norm1.bn.running_mean.dtype == torch.float32


def test_path_choice():
    assert cpu_path("cpu", 2, "fp32", grad=True) == "engine"
    assert cpu_path("cpu", 3, "bf16", grad=True) == "graph"  # 3D bf16: the rulebooks multiply fewer rows
    assert cpu_path("cpu", 3, "fp32", grad=True) == "engine"  # float32: existing pairs only, as the rulebooks
    assert cpu_path("cpu", 2, "fp32", grad=False) == "infer"
    assert cpu_path("cpu", 3, "bf16", grad=False) == "infer"
    assert cpu_path("cpu", 3, "fp32", grad=False) == "infer"
    assert cpu_path("cuda", 2, "fp32", grad=True) == "spconv"
    m = _model(2)
    m.backend = "fast"
    with pytest.raises(ValueError, match="uresnet: backend 'fast' unknown; expected one of auto, engine, graph"):
        m([_clustered_event((20, 20), 10, 1)])


@pytest.mark.parametrize("dim,shape", [(2, (45, 61)), (3, (13, 18, 21))])
def test_offset_by_offset_equals_gather_gemm(monkeypatch, dim, shape):
    """The two kernels of a submanifold convolution (only existing neighbour pairs, or one
    gather-GEMM over every slot) give the same logits and gradients in float64, in training
    and in the inference engine."""
    import sparseseg.models.sparse_engine as se
    import sparseseg.models.sparse_infer as si

    m = _model(dim, depth=3, reps=2, leak=0.1)
    events = [_clustered_event(shape, 150, s) for s in (4, 5)] + [random_event(shape, 30, seed=9)]
    idx, feats, spatial, _ = collate(events)
    feats = feats.double()
    target = torch.randn(idx.shape[0], m.config.num_classes, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    frozen = copy.deepcopy(m).float().eval()  # before training-mode forwards move its statistics
    out = {}
    for pairs in (True, False):
        monkeypatch.setattr(se, "use_pairs", lambda dtype, p=pairs: p)
        monkeypatch.setattr(si, "use_pairs", lambda dtype, p=pairs: p)
        m.zero_grad()
        m.backend = "engine"
        logits = m(idx, feats, spatial)
        (logits * target).sum().backward()
        fast = si.FastUResNet(frozen, "fp32")
        flops = fast.count_flops(idx, feats.float(), spatial)
        out[pairs] = (logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()},
                      fast(idx, feats.float(), spatial), flops)
    (l1, g1, f1, c1), (l0, g0, f0, c0) = out[True], out[False]
    assert _rel(l1, l0) < 1e-12
    assert max(_rel(g1[n], g0[n]) for n in g0) < 1e-12
    assert float((f1 - f0).abs().max()) < 1e-5 * float(f0.abs().max())
    assert c1 == c0  # both count the useful multiply-adds only


def test_eval_mode_gradients_use_the_running_statistics():
    """BatchNorm in eval mode (frozen statistics): the fused BatchNorm-activation-convolution
    step gives the graph's gradients, and neither path moves the running statistics."""
    m = _model(2, depth=3, leak=0.1).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(m.state_dict())
    (ref, gref), (out, gout) = _both(m, [_clustered_event((40, 44), 150, s) for s in (5, 6)])
    assert _rel(out, ref) < 1e-10
    assert max(_rel(gout[n], gref[n]) for n in gref) < 1e-10
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
