import numpy as np
import pytest
import torch

from sparseseg import Event
from sparseseg.losses import weighted_cross_entropy
from sparseseg.weighting import WeightConfig, class_weights, cluster_weights, pixel_weights, vertex_weights


def test_cluster_weights_hand_computed():
    # clusters: sizes 1 (id 7), 3 (id 2), -1 unclustered; N = 4 clustered pixels, K = 2 clusters
    cl = np.array([7, 2, 2, 2, -1], dtype=np.int32)
    w = cluster_weights(cl, clip=(0.0, 100.0))
    np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3, 1.0], rtol=1e-6)
    w = cluster_weights(cl, clip=(0.8, 1.5))
    np.testing.assert_allclose(w, [1.5, 0.8, 0.8, 0.8, 1.0], rtol=1e-6)
    assert cluster_weights(np.full(3, -1, np.int32)).tolist() == [1.0, 1.0, 1.0]


def test_vertex_weights_radius():
    coords = np.array([[10, 10], [10, 13], [12, 12], [14, 10], [0, 0]], dtype=np.int32)
    w = vertex_weights(coords, np.array([[10, 10]], np.float32), radius=3.0, boost=4.0)
    # distances 0, 3, sqrt(8)=2.83, 4, 14.1
    assert w.tolist() == [4.0, 4.0, 4.0, 1.0, 1.0]
    assert vertex_weights(coords, None).tolist() == [1.0] * 5


def test_class_weights_modes_hand_computed():
    labels = np.array([0] * 1 + [1] * 3 + [255] * 4, dtype=np.uint8)  # f = (1/4, 3/4)
    inv = class_weights(labels, "inverse")
    # raw 1/f = (4, 4/3); pixel mean (4*1/4 + 4/3*3/4) = 2 -> (2, 2/3)
    np.testing.assert_allclose(inv[:2], [2.0, 2 / 3], rtol=1e-6)
    assert inv[2:].tolist() == [0.0, 0.0, 0.0]
    sq = class_weights(labels, "sqrt")
    raw = np.array([2.0, 1 / np.sqrt(0.75)])
    np.testing.assert_allclose(sq[:2], raw / (raw * [0.25, 0.75]).sum(), rtol=1e-6)
    lg = class_weights(labels, "log")
    raw = 1 / np.log(1.02 + np.array([0.25, 0.75]))
    np.testing.assert_allclose(lg[:2], raw / (raw * [0.25, 0.75]).sum(), rtol=1e-6)
    assert class_weights(labels, "none").tolist() == [1.0] * 5
    assert class_weights(labels, "const", [1, 2, 3, 4, 5]).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="class weighting mode 'bogus' unknown"):
        class_weights(labels, "bogus")


def test_pixel_weights_product():
    coords = np.array([[0, 0], [0, 1], [5, 5], [9, 9]], dtype=np.int32)
    ev = Event(coords, np.full((4, 1), 50, np.float32), (10, 10),
               labels=np.array([0, 1, 1, 255], np.uint8), clusters=np.array([0, 1, 1, 1], np.int32),
               vertices=np.array([[0, 0]], np.float32), meta={"plane": "Y"})
    cfg = WeightConfig(cluster=True, cluster_clip=(0, 100), vertex=True, vertex_radius=1.0, vertex_boost=3.0,
                       class_mode="inverse", plane={"Y": 2.0})
    w = pixel_weights([ev], cfg)
    # class: f = (1/3, 2/3) -> raw (3, 1.5), mean 2 -> (1.5, 0.75)
    # cluster: N=4, K=2 -> sizes 1, 3 -> (2, 2/3, 2/3, 2/3); vertex: first two within 1 px
    expected = np.array([1.5 * 2 * 3, 0.75 * (2 / 3) * 3, 0.75 * (2 / 3), 0.0]) * 2.0
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_loss_weighted_mean_and_ignore():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, 0, 255])
    w = torch.tensor([1.0, 3.0, 100.0])
    ce = torch.nn.functional.cross_entropy(logits[:2], labels[:2], reduction="none")
    expected = (ce[0] * 1 + ce[1] * 3) / 4
    assert torch.allclose(weighted_cross_entropy(logits, labels, w), expected)
    assert torch.allclose(weighted_cross_entropy(logits, labels), ce.mean())
    assert float(weighted_cross_entropy(logits[2:], labels[2:])) == 0.0
