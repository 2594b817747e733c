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


class RulebookFlops:
    """Test-only cross-check of the engine's FLOP count: counts 2 x pairs x C_in x C_out from
    the rulebooks spconv hands to this project's CPU kernels, while the context is open."""

    def __init__(self) -> None:
        self.flops = 0

    def __enter__(self):
        from sparseseg.models import sparse_cpu

        self._orig = orig = sparse_cpu.indice_conv

        def counted(features, filters, indice_pairs, indice_pair_num, num_out, inverse=False, subm=False):
            cout, cin = filters.shape[0], filters.shape[-1]
            pairs = sum(len(r) for _, r, _ in sparse_cpu._pairs(indice_pairs, indice_pair_num, inverse, subm))
            if subm:  # the centre offset maps every site to itself
                pairs += features.shape[0]
            self.flops += 2 * pairs * cin * cout
            return orig(features, filters, indice_pairs, indice_pair_num, num_out, inverse, subm)

        sparse_cpu.indice_conv = counted
        return self

    def __exit__(self, *exc):
        from sparseseg.models import sparse_cpu

        sparse_cpu.indice_conv = self._orig


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module that asks (pytestmark), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(name):
    """The module of ``scripts/<name>.py`` (scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
