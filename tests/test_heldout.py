"""sparseseg.heldout: a cached held-out file is reused only when it holds the same stream from
the same simulator version; score_curves reads a prediction file into ScoreCurves."""
import sparseseg.simulate as simulate_pkg
from sparseseg.heldout import simulated_file
from sparseseg.io import EventFile


def test_cached_file_reused_only_for_the_same_stream_and_simulator(tmp_path, monkeypatch):
    path = tmp_path / "held.h5"
    p, t = simulated_file(path, "crop512", 1, 9)
    assert t > 0 and p == path
    with EventFile(str(path)) as f:
        assert len(f) == 3 and f.attrs["simulator_version"] == simulate_pkg.SIMULATOR_VERSION
    mtime = path.stat().st_mtime_ns
    assert simulated_file(path, "crop512", 1, 9) == (path, 0.0)  # reused
    assert path.stat().st_mtime_ns == mtime
    assert simulated_file(path, "crop512", 1, 9, hadronic=False)[1] > 0  # another stream: rewritten
    with EventFile(str(path)) as f:
        assert bool(f.attrs["hadronic"]) is False and f[0].meta.get("hadronic") is False
    assert simulated_file(path, "crop512", 1, 9, hadronic=False)[1] == 0.0
    monkeypatch.setattr(simulate_pkg, "SIMULATOR_VERSION", "0.0-older")  # a file from another version
    assert simulated_file(path, "crop512", 1, 9, hadronic=False)[1] > 0
    with EventFile(str(path)) as f:
        assert f.attrs["simulator_version"] == "0.0-older"


def test_score_curves_of_a_prediction_file(tmp_path):
    """heldout.score_curves reads a prediction file's scores and labels into ScoreCurves: the
    same counts as adding the images by hand; a file without scores is refused by name."""
    import numpy as np
    import pytest

    from sparseseg.heldout import score_curves
    from sparseseg.infer import EXTRAS
    from sparseseg.io import EventWriter
    from sparseseg.metrics import ScoreCurves

    from conftest import random_event

    events = [random_event((24, 20), 60, seed=k) for k in range(3)]
    rng = np.random.default_rng(0)
    scores = [rng.dirichlet(np.ones(5), len(ev)).astype(np.float16) for ev in events]
    path = tmp_path / "pred.h5"
    with EventWriter(str(path), extras=EXTRAS) as w:
        for ev, sc in zip(events, scores):
            w.append(ev, extras={"pred": sc.argmax(1).astype(np.uint8), "scores": sc})
    ref = ScoreCurves()
    for ev, sc in zip(events, scores):
        ref.add(ev.labels, sc)
    got = score_curves(path)
    assert (got.signal == ref.signal).all() and (got.background == ref.background).all()
    assert got.signal.sum() == sum(int((ev.labels != 255).sum()) for ev in events)
    assert got.summary(0.3) == ref.summary(0.3)
    bare = tmp_path / "bare.h5"
    with EventWriter(str(bare), extras={"pred": EXTRAS["pred"]}) as w:
        w.append(events[0], extras={"pred": np.zeros(len(events[0]), np.uint8)})
    with pytest.raises(ValueError, match=r"bare.h5: holds no class scores \(no 'scores' dataset\)"):
        score_curves(bare)
