"""Learning-rate schedules (hand-computed values), early stopping and train.init."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sparseseg import checkpoint
from sparseseg.config import resolve
from sparseseg.train import learning_rate, train

from test_train import tiny_config, train_file  # noqa: F401 (fixture)


def _t(**kw):
    t = {"lr": 1.0, "warmup_steps": 4, "max_steps": 104, "schedule": "cosine", "min_lr_ratio": 0.1}
    t.update(kw)
    return t


def test_warmup_is_linear():
    assert [learning_rate(s, _t()) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_by_hand():
    t = _t()
    assert learning_rate(4, t) == pytest.approx(1.0)  # start of the decay
    assert learning_rate(54, t) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: floor + half the span
    assert learning_rate(104, t) == pytest.approx(0.1)  # the floor
    assert learning_rate(500, t) == pytest.approx(0.1)  # stays at the floor past the end
    s = 4 + 25  # a quarter of the way
    assert learning_rate(s, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_step_and_constant_by_hand():
    t = _t(schedule="step")
    assert learning_rate(4 + 59, t) == pytest.approx(1.0)
    assert learning_rate(4 + 60, t) == pytest.approx(0.1)  # x0.1 at 60 %
    assert learning_rate(4 + 85, t) == pytest.approx(0.01)  # and again at 85 %
    c = _t(schedule="constant")
    assert [learning_rate(s, c) for s in (3, 4, 50, 103)] == [1.0, 1.0, 1.0, 1.0]


def test_logged_lr_follows_the_schedule(tmp_path, train_file):
    cfg = tiny_config(train_file, max_steps=6, warmup_steps=2, val_every=6, checkpoint_every=6)
    train(cfg, tmp_path / "r", progress=False)
    log = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if "lr" in r]
    t = resolve(cfg)["train"]
    assert lrs == pytest.approx([learning_rate(s, t) for s in range(6)])


def test_early_stopping_after_stale_validations(tmp_path, train_file, monkeypatch):
    from sparseseg.tasks.segment import SegmentationTask

    scores = iter([0.5, 0.4, 0.4, 0.3, 0.9, 0.9])  # best at the first check, then two stale ones

    def fake_evaluate(self, model, events, batch_size=8):
        return {"loss": 1.0, "accuracy": next(scores)}

    monkeypatch.setattr(SegmentationTask, "evaluate", fake_evaluate)
    cfg = tiny_config(train_file, max_steps=12, val_every=2, checkpoint_every=100, early_stopping=2)
    result = train(cfg, tmp_path / "r", progress=False)
    assert result["step"] == 6  # checks at 2 (best), 4 and 6 (stale, stale): stop
    assert checkpoint.load(tmp_path / "r" / "checkpoint.pt")["step"] == 6
    assert checkpoint.load(tmp_path / "r" / "best.pt")["step"] == 2


def test_init_starts_from_the_given_weights(tmp_path, train_file):
    cfg = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1)
    train(cfg, tmp_path / "a", progress=False)
    src = checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    # lr 0: the run must end with exactly the init weights (BatchNorm running stats aside)
    cfg2 = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1, lr=0.0,
                       init=str(tmp_path / "a" / "checkpoint.pt"))
    train(cfg2, tmp_path / "b", progress=False)
    got = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert got["step"] == 1  # a fresh run: step and optimizer start over
    for k, v in src["model"].items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(got["model"][k], v), k


def test_init_with_another_model_is_refused(tmp_path, train_file):
    cfg = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1)
    train(cfg, tmp_path / "a", progress=False)
    for field, value in (("depth", 2), ("filters", 4)):  # another structure; a narrower model
        bad = tiny_config(train_file, max_steps=1, init=str(tmp_path / "a" / "checkpoint.pt"))
        bad["model"][field] = value
        with pytest.raises(ValueError, match=r"train.init: weights file .* does not fit the configured model"):
            train(bad, tmp_path / "b", progress=False)


@pytest.mark.parametrize("field,value,message", [
    ("filters", 12, "widening {} from 8 to 12 filters"),
    ("depth", 5, "deepening {} from 3 to 5 levels"),
])
def test_init_grows_a_smaller_uresnet(tmp_path, train_file, capsys, field, value, message):
    """A run with more filters, or more levels, starts from the smaller weights and computes
    the same logits."""
    from conftest import random_event

    cfg = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1)
    train(cfg, tmp_path / "a", progress=False)
    wide = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1, lr=0.0,
                       init=str(tmp_path / "a" / "checkpoint.pt"))
    wide["model"][field] = value
    train(wide, tmp_path / "b", progress=False)
    assert message.format(tmp_path / "a" / "checkpoint.pt") in capsys.readouterr().err
    events = [random_event((48, 40), 150, seed=s) for s in range(3)]
    widened = checkpoint.build_from(checkpoint.load(tmp_path / "b" / "checkpoint.pt")).eval()
    assert getattr(widened.config, field) == value
    assert len(widened.encoder) == widened.config.depth and widened.head.weight.shape == (5, widened.config.filters)
    # lr 0: only BatchNorm running statistics moved in run b, and the old channels' statistics
    # moved exactly as they would have in the narrow model: compare the narrow model run one
    # more lr-0 step the same way
    again = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1, lr=0.0,
                        init=str(tmp_path / "a" / "checkpoint.pt"))
    train(again, tmp_path / "c", progress=False)
    narrow = checkpoint.build_from(checkpoint.load(tmp_path / "c" / "checkpoint.pt")).eval()
    with torch.no_grad():
        a, b = narrow(events), widened(events)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
