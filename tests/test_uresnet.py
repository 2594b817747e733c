import numpy as np
import pytest
import torch

from sparseseg import Event
from sparseseg.losses import weighted_cross_entropy
from sparseseg.models import build_model
from sparseseg.models.uresnet import collate, split_by_batch

from conftest import random_event


def small(dim, **kw):
    torch.manual_seed(0)
    return build_model("uresnet", dim=dim, depth=3, filters=8, reps=1, **kw)


def test_output_shape_and_empty_event():
    m = small(2).eval()
    ev = random_event((60, 70), 300)
    with torch.no_grad():
        assert m([ev]).shape == (300, 5)
        empty = Event(np.zeros((0, 2), np.int32), np.zeros((0, 1), np.float32), (60, 70))
        assert m([empty]).shape == (0, 5)
        # an empty event inside a batch contributes no rows
        assert m([ev, empty, ev]).shape == (600, 5)


def test_spatial_shape_padding():
    m = build_model("uresnet", dim=2, depth=5, filters=4, reps=1)
    assert m.padded_shape((1008, 3456)) == [1008, 3456]
    assert m.padded_shape((1001, 2401)) == [1008, 2416]


@pytest.mark.parametrize("dim,shape", [(2, (50, 60)), (3, (20, 24, 28))])
def test_permutation_equivariance_and_batch_split(dim, shape):
    m = small(dim).eval()
    a, b = random_event(shape, 200, seed=1), random_event(shape, 150, seed=2)
    perm = np.random.default_rng(0).permutation(len(a))
    with torch.no_grad():
        out_a = m([a])
        out_perm = m([a.subset(perm)])
        torch.testing.assert_close(out_perm, out_a[perm], atol=1e-3, rtol=1e-3)
        idx, feats, sshape, bsz = collate([a, b])
        both = m(idx, feats, sshape)
        parts = split_by_batch(both, idx, bsz)
        torch.testing.assert_close(parts[0], out_a, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(parts[1], m([b]), atol=1e-4, rtol=1e-4)


def test_wrong_dimension_is_an_error():
    m = small(2)
    with pytest.raises(ValueError, match="this model takes 2D events, got a 3D event"):
        m([random_event((10, 10, 10), 20)])
    with pytest.raises(ValueError, match="unknown option"):
        build_model("uresnet", dim=2, width=3)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")


@pytest.mark.parametrize("dim,shape", [(2, (64, 64)), (3, (24, 24, 24))])
def test_training_steps_on_cpu(dim, shape):
    """Backward works on CPU-only torch; one step changes the weights; 30 steps halve the loss."""
    m = small(dim)
    events = [random_event(shape, 250, seed=s) for s in range(2)]
    labels = torch.from_numpy(np.concatenate([e.labels for e in events]).astype(np.int64))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    losses = []
    for _ in range(30):
        loss = weighted_cross_entropy(m(events), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if len(losses) == 1:
            changed = [k for k, v in m.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
            assert "stem.weight" in changed and "head.weight" in changed
            assert any(k.startswith("down.") for k in changed) and any(k.startswith("up.") for k in changed)
    assert losses[-1] < 0.5 * losses[0], losses


def randomise_batchnorm(model):
    """BatchNorm statistics and affine parameters away from their identity defaults, so that
    tests comparing two models' logits see them."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def assert_same_logits(a, b, ev):
    """Both models give the same logits on ``ev``, in evaluation and in training mode."""
    for training in (False, True):
        a.train(training)
        b.train(training)
        with torch.no_grad():
            x, y = a([ev]), b([ev])
        assert torch.allclose(x, y, atol=1e-5), (training, (x - y).abs().max())

@pytest.mark.parametrize("dim,shape", [(2, (50, 60)), (3, (20, 24, 28))])
def test_widened_model_computes_the_same_logits(dim, shape):
    """widen_state_dict: old channels keep their weights and never see the new ones (decoder
    concatenations included), in evaluation and in training mode; the new-to-old weights are
    zero but get gradients, so training can use the new channels."""
    from sparseseg.models.uresnet import widen_state_dict

    narrow = randomise_batchnorm(small(dim))
    torch.manual_seed(1)
    wide = build_model("uresnet", dim=dim, depth=3, filters=12, reps=1)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), 8, wide))
    ev = random_event(shape, 250, seed=3)
    assert_same_logits(narrow, wide, ev)
    w = wide.decoder[0][0].conv1.weight  # input = [upsampled 24 | skip 12], old halves at 0:16, 24:32
    assert w.shape[-1] == 48
    assert torch.equal(w[:16, ..., 16:24], torch.zeros_like(w[:16, ..., 16:24]))
    assert torch.equal(w[:16, ..., :16], narrow.decoder[0][0].conv1.weight[..., :16])
    assert torch.equal(w[:16, ..., 24:40], narrow.decoder[0][0].conv1.weight[..., 16:32])
    wide([ev]).square().sum().backward()
    assert w.grad[:16, ..., 16:24].abs().sum() > 0
    with pytest.raises(ValueError, match="cannot widen 16 filters into 12"):
        widen_state_dict(narrow.state_dict(), 16, wide)


@pytest.mark.parametrize("dim,shape", [(2, (50, 60)), (3, (20, 24, 28))])
def test_deepened_model_computes_the_same_logits(dim, shape):
    """deepen_state_dict: two new levels below a 3-level model; the old levels keep their
    weights (decoder lists shift by two), the new decoder levels start as the identity on the
    skip half, so the logits agree in evaluation and in training mode; the zero weights on the
    upsampled half get gradients, so training can use the coarser context."""
    from sparseseg.models.uresnet import deepen_state_dict

    torch.manual_seed(0)
    shallow = randomise_batchnorm(build_model("uresnet", dim=dim, depth=3, filters=8, reps=2))
    torch.manual_seed(1)
    deep = build_model("uresnet", dim=dim, depth=5, filters=8, reps=2)
    deep.load_state_dict(deepen_state_dict(shallow.state_dict(), 3, deep))
    assert torch.equal(deep.decoder[2][0].conv1.weight, shallow.decoder[0][0].conv1.weight)
    assert torch.equal(deep.encoder[2][1].conv2.weight, shallow.encoder[2][1].conv2.weight)
    ev = random_event(shape, 250, seed=3)
    assert_same_logits(shallow, deep, ev)
    shortcut = deep.decoder[1][0].shortcut.weight  # level 2 (the old bottom): [upsampled 24 | skip 24] -> 24
    assert shortcut.shape == (24, 48)
    assert torch.equal(shortcut[:, 24:], torch.eye(24)) and not shortcut[:, :24].any()
    assert not deep.decoder[0][1].conv2.weight.any() and not deep.decoder[1][1].conv2.weight.any()
    deep([ev]).square().sum().backward()
    assert shortcut.grad[:, :24].abs().sum() > 0
    assert deep.decoder[1][0].conv2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot deepen 5 levels into 5"):
        deepen_state_dict(deep.state_dict(), 5, deep)
    other = build_model("uresnet", dim=dim, depth=3, filters=12, reps=2)
    with pytest.raises(ValueError, match="only the number of levels may differ when deepening"):
        deepen_state_dict(other.state_dict(), 3, deep)
