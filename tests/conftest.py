import numpy as np
import pytest

from sparseseg import Event


def random_event(shape, n, seed=0, with_truth=True):
    """A random sparse event with n unique pixels (labels 0..4, a few 255)."""
    rng = np.random.default_rng(seed)
    lin = rng.choice(int(np.prod(shape)), size=n, replace=False)
    coords = np.stack(np.unravel_index(lin, shape), axis=1).astype(np.int32)
    feats = rng.uniform(10, 300, size=(n, 1)).astype(np.float32)
    labels = clusters = None
    if with_truth:
        labels = rng.integers(0, 5, size=n).astype(np.uint8)
        labels[rng.random(n) < 0.05] = 255
        clusters = rng.integers(-1, 6, size=n).astype(np.int32)
    return Event(coords, feats, shape, labels=labels, clusters=clusters,
                 vertices=np.zeros((1, len(shape)), np.float32), meta={"plane": "Y" if len(shape) == 2 else "3D", "event_id": seed})


@pytest.fixture
def make_event():
    return random_event


def train_stopped_then_resumed(cfg, out, stop_at):
    """Train ``cfg`` into ``out``, stop it with an exception as step ``stop_at`` begins, then
    resume it to the end; returns the checkpoint step left by the interruption."""
    from sparseseg import checkpoint
    from sparseseg.train import train

    class Stop(Exception):
        pass

    def stop(step):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, out, progress=False, callback=stop)
    left = checkpoint.load(out / "checkpoint.pt")["step"]
    train(cfg, out, resume=True, progress=False)
    return left
