"""Training loop: resume is exact, DDP replicas agree, configs are validated."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparseseg import checkpoint
from sparseseg.config import resolve
from sparseseg.io import write_events
from sparseseg.train import train

from conftest import random_event, train_stopped_then_resumed

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(train_file, **train_overrides):
    t = {"batch_size": 2, "max_steps": 6, "lr": 0.01, "warmup_steps": 2, "val_every": 3, "log_every": 1,
         "checkpoint_every": 3, "threads": 1}
    t.update(train_overrides)
    return {
        "model": {"name": "uresnet", "dim": 2, "depth": 3, "filters": 8, "reps": 1},
        "data": {"simulate": None, "train": str(train_file), "val": str(train_file), "val_images": 4, "num_workers": 0},
        "train": t,
    }


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.h5"
    write_events(str(path), [random_event((48, 40), 150, seed=s) for s in range(10)])
    return path


def test_resume_is_exact(tmp_path, train_file):
    cfg = tiny_config(train_file)
    train(cfg, tmp_path / "straight", progress=False)
    assert train_stopped_then_resumed(cfg, tmp_path / "crashed", stop_at=4) == 3
    a = checkpoint.load(tmp_path / "straight" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "crashed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log = [json.loads(x) for x in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "crashed" / "loss_curve.png").stat().st_size > 1000


def test_existing_run_needs_resume(tmp_path, train_file):
    cfg = tiny_config(train_file, max_steps=1, val_every=1, checkpoint_every=1)
    train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match="already holds a training run; use --resume"):
        train(cfg, tmp_path / "r", progress=False)


def test_config_errors():
    with pytest.raises(ValueError, match="config: unknown key train.lerning_rate; known keys of train:"):
        resolve({"train": {"lerning_rate": 1}})
    with pytest.raises(ValueError, match="unknown section"):
        resolve({"trian": {}})
    with pytest.raises(ValueError, match="train.optimizer 'rmsprop' unknown"):
        resolve({"train": {"optimizer": "rmsprop"}})
    for name in ("uresnet2d", "uresnet3d"):
        cfg = resolve(yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()))
        assert cfg["model"]["dim"] == (2 if name.endswith("2d") else 3)


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path, train_file):
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(train_file, max_steps=4)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "sparseseg.cli", "train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    digests = [r["weights_sha256"] for r in log if "weights_sha256" in r][-1]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    # and the weights moved away from their initialisation: a run with lr 0 ends on the initial
    # weights (so the seed reproduces them), and the DDP weights differ from those
    still = tiny_config(train_file, max_steps=1, lr=0.0, val_every=1, checkpoint_every=1)
    train(still, tmp_path / "still", progress=False)
    init = [json.loads(x) for x in (tmp_path / "still" / "metrics.jsonl").read_text().splitlines()][-1]
    torch.manual_seed(0)
    from sparseseg.models import build_model
    from sparseseg.train import weights_digest

    assert init["weights_sha256"] == [weights_digest(build_model("uresnet", dim=2, depth=3, filters=8, reps=1))]
    assert digests[0] != init["weights_sha256"][0]


def test_accumulation_equals_one_large_batch():
    import numpy as np

    from sparseseg.models import build_model
    from sparseseg.tasks import accumulated_step
    from sparseseg.tasks.segment import SegmentationTask

    torch.manual_seed(0)
    model = build_model("uresnet", dim=2, depth=3, filters=8, reps=1).eval()  # BatchNorm uses running stats
    events = [random_event((48, 40), 120 + 30 * s, seed=s) for s in range(4)]
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.1, 5.0, len(e)).astype(np.float32) for e in events]

    def grads(micro):
        model.zero_grad()
        loss, acc = accumulated_step(model, micro, SegmentationTask, "cpu")
        return loss, acc, [p.grad.clone() for p in model.parameters()]

    big = grads([(events, np.concatenate(weights))])
    acc2 = grads([(events[:2], np.concatenate(weights[:2])), (events[2:], np.concatenate(weights[2:]))])
    acc4 = grads([([e], w) for e, w in zip(events, weights)])
    for other in (acc2, acc4):
        assert other[0] == pytest.approx(big[0], rel=1e-5)
        assert other[1] == pytest.approx(big[1])
        for a, b in zip(big[2], other[2]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # and it is not trivially true: unscaled micro-batch losses give a different gradient
    model.zero_grad()
    from sparseseg.tasks.segment import labels_of
    from sparseseg.losses import weighted_cross_entropy

    for e, w in zip(events, weights):
        weighted_cross_entropy(model([e]), labels_of([e]), torch.from_numpy(w)).backward()
    assert not torch.allclose(model.head.weight.grad / 4, big[2][-2], rtol=1e-3)


def test_memory_fields_accumulate_and_bf16_in_log(tmp_path, train_file):
    cfg = tiny_config(train_file, max_steps=2, val_every=2, checkpoint_every=2, accumulate=2, precision="bf16")
    train(cfg, tmp_path / "r", progress=False)
    log = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["peak_rss_mb"] > 50 for r in steps)
    assert "max_memory_allocated_mb" not in steps[0]  # CPU run: GPU fields only on CUDA
    # bf16 ran: the same run in fp32 starts from the same weights and data, and its first loss
    # differs from the bf16 one by bf16 rounding only (nonzero, under a percent)
    train(dict(cfg, train=dict(cfg["train"], precision="fp32")), tmp_path / "f", progress=False)
    fp32 = [json.loads(x) for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    a, b = steps[0]["loss"], [r for r in fp32 if "loss" in r][0]["loss"]
    assert a != b and a == pytest.approx(b, rel=1e-2)
    assert checkpoint.load(tmp_path / "r" / "checkpoint.pt")["precision"] == "bf16"
    with pytest.raises(ValueError, match="config: train.precision 'fp16' unknown; expected one of auto, fp32, bf16"):
        resolve({"train": {"precision": "fp16"}})
    with pytest.raises(ValueError, match="config: train.accumulate must be a positive integer, got 0"):
        resolve({"train": {"accumulate": 0}})


KILL_TRAINING = """
import os, signal, sys, yaml
sys.path.insert(0, {tests!r})
from sparseseg.train import train
cfg = yaml.safe_load(open(sys.argv[1]))

def die(step):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)

train(cfg, sys.argv[2], progress=False, callback=die)
"""


def test_sigkill_mid_run_then_resume_equals_straight_run(tmp_path, train_file):
    cfg = tiny_config(train_file, checkpoint_every=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    script = KILL_TRAINING.format(tests=str(ROOT / "tests"))
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.yaml"), str(tmp_path / "killed")],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    ckpt = checkpoint.load(tmp_path / "killed" / "checkpoint.pt")  # readable, not torn
    assert ckpt["step"] == 4  # the last checkpoint before the kill at step 5
    train(cfg, tmp_path / "killed", resume=True, progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    a = checkpoint.load(tmp_path / "straight" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "killed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_precision_is_resolved_recorded_and_checked_on_resume(tmp_path, train_file):
    from sparseseg.models.sparse_infer import cpu_has_bf16
    from sparseseg.train import resolve_precision

    assert resolve_precision("fp32", "cpu", True) == "fp32"
    assert resolve_precision("auto", "cpu", False) == "fp32"  # dense models: autocast is not worth it on CPU
    assert resolve_precision("auto", "cuda", True) == "fp32"
    assert resolve_precision("auto", "cpu", True, dim=3) == "fp32"  # 3D bf16 would train through the graph
    assert resolve_precision("auto", "cpu", True) == ("bf16" if cpu_has_bf16() else "fp32")
    cfg = tiny_config(train_file, max_steps=2, checkpoint_every=1, val_every=2, precision="auto")
    train(cfg, tmp_path / "r", progress=False)
    ckpt = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["precision"] == resolve_precision("auto", "cpu", True)
    other = "fp32" if ckpt["precision"] == "bf16" else "bf16"
    cfg["train"]["precision"] = other
    cfg["train"]["max_steps"] = 3
    with pytest.raises(ValueError, match=f"--resume: .* was trained in {ckpt['precision']}, this run would use {other}"):
        train(cfg, tmp_path / "r", resume=True, progress=False)
