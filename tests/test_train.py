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

from conftest import random_event

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

    class Crash(Exception):
        pass

    def crash_at_4(step):
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "crashed", progress=False, callback=crash_at_4)
    assert checkpoint.load(tmp_path / "crashed" / "checkpoint.pt")["step"] == 3
    train(cfg, tmp_path / "crashed", resume=True, progress=False)
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
    # and the weights moved away from their initialisation
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["step"] == 4
