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


def _prediction_file(path, images):
    """A prediction file of (event_id, truth labels, predicted classes) images."""
    import numpy as np

    from sparseseg.event import Event
    from sparseseg.infer import EXTRAS
    from sparseseg.io import EventWriter

    with EventWriter(str(path), extras={"pred": EXTRAS["pred"]}) as w:
        for k, (event_id, labels, pred) in enumerate(images):
            n = len(labels)
            coords = np.stack([np.arange(n), np.full(n, k)], 1).astype(np.int32)
            ev = Event(coords, np.full((n, 1), 50.0, np.float32), (16, 16), labels=np.array(labels, np.uint8),
                       meta={"plane": "Y", "event_id": event_id})
            w.append(ev, extras={"pred": np.array(pred, np.uint8)})
    return path


def test_paired_bootstrap_of_two_prediction_files(tmp_path, capsys):
    """Counts per interaction by hand (interaction 1: two images, the 255 pixel ignored), both
    accuracies, and the interval of the difference: with two interactions a resample is {1, 1},
    {1, 2} or {2, 2}, so the difference lies between 3/9 and 2/4 (and is 5/13 on the whole set)."""
    import numpy as np
    import pytest

    from sparseseg.heldout import interaction_counts, paired_bootstrap

    from conftest import load_script

    truth = [(1, [0, 1, 2, 3, 4, 255]), (1, [1, 1, 1, 1]), (2, [2, 2, 2, 2])]
    pred_a = [[0, 1, 2, 3, 4, 0], [1, 1, 1, 0], [2, 2, 3, 1]]  # 5 + 3 and 2 right; track/shower 5 + 4 and 3
    pred_b = [[1] * 6, [1] * 4, [1] * 4]                       # 1 + 4 and 0 right; track/shower 2 + 4 and 0
    a = _prediction_file(tmp_path / "a.h5", [(e, t, p) for (e, t), p in zip(truth, pred_a)])
    b = _prediction_file(tmp_path / "b.h5", [(e, t, p) for (e, t), p in zip(truth, pred_b)])
    ids, labelled, correct, ts = interaction_counts(a)
    assert ids.tolist() == [1, 2] and labelled.tolist() == [9, 4] and correct.tolist() == [8, 2] and ts.tolist() == [9, 3]
    r = paired_bootstrap(a, b, n_boot=2000, seed=0)
    acc = r["accuracy"]
    assert acc["a"] == pytest.approx(10 / 13) and acc["b"] == pytest.approx(5 / 13) and acc["diff"] == pytest.approx(5 / 13)
    assert acc["lo"] == pytest.approx(3 / 9) and acc["hi"] == pytest.approx(2 / 4)
    t = r["track_shower_accuracy"]
    assert t["a"] == pytest.approx(12 / 13) and t["b"] == pytest.approx(6 / 13)
    assert t["lo"] == pytest.approx(1 - 6 / 9) and t["hi"] == pytest.approx(3 / 4)  # {1,1}: 9/9 - 6/9; {2,2}: 3/4 - 0
    assert 0 < acc["sd_a"] < 0.2
    # the script prints the same figures as a table
    assert load_script("compare_predictions").main([str(a), str(b), "--json", str(tmp_path / "r.json")]) == 0
    assert "| 5-class accuracy | 0.7692 | 0.3846 | +0.3846 | +0.3333 to +0.5000 |" in capsys.readouterr().out
    # another event file, or too few resamples, is refused by name
    other = _prediction_file(tmp_path / "c.h5", [(1, [0, 1], [0, 1])])
    with pytest.raises(ValueError, match=r"c.h5 do not hold the same events .*: predict the same event file with both weights"):
        paired_bootstrap(a, other)
    with pytest.raises(ValueError, match="n_boot must be >= 100"):
        paired_bootstrap(a, b, n_boot=10)
    assert load_script("compare_predictions").main([str(a), str(other)]) == 2
    assert "compare_predictions.py: error: " in capsys.readouterr().err
    assert np.isclose(r["accuracy"]["diff"], r["accuracy"]["a"] - r["accuracy"]["b"])
    # a file of scores only (no predicted classes) is refused by name
    from sparseseg.event import Event
    from sparseseg.infer import EXTRAS
    from sparseseg.io import EventWriter

    ev = Event(np.array([[0, 0], [1, 1]], np.int32), np.full((2, 1), 50.0, np.float32), (4, 4), labels=np.array([1, 2], np.uint8))
    with EventWriter(str(tmp_path / "scores.h5"), extras={"scores": EXTRAS["scores"]}) as w:
        w.append(ev, extras={"scores": np.full((2, 5), 0.2, np.float16)})
    with pytest.raises(ValueError, match=r"scores.h5: holds no predicted classes \(no 'pred' dataset\)"):
        interaction_counts(tmp_path / "scores.h5")


def test_class_errors_by_size_topology_and_neighbours(tmp_path):
    """heldout.class_errors on a hand-made image: a 3-pixel HIP stub touching a shower, a
    6-pixel HIP track far from anything, a MIP track next to it; counts checked by hand, and
    the script prints them."""
    import subprocess
    import sys

    import numpy as np

    from sparseseg.event import Event
    from sparseseg.heldout import class_errors
    from sparseseg.infer import EXTRAS
    from sparseseg.io import EventWriter

    stub = [(2, 2), (2, 3), (2, 4)]        # HIP, cluster 1, next to the shower at (3, 5)
    shower = [(3, 5), (4, 6)]              # shower, cluster 2
    track = [(10, c) for c in range(6)]    # HIP, cluster 3, alone (the MIP is 3 rows away)
    mip = [(13, c) for c in range(4)]      # MIP, cluster 4
    coords = np.array(stub + shower + track + mip, np.int32)
    labels = np.array([0] * 3 + [2] * 2 + [0] * 6 + [1] * 4, np.uint8)
    clusters = np.array([1] * 3 + [2] * 2 + [3] * 6 + [4] * 4, np.int32)
    pred = labels.copy()
    pred[[0, 1]] = 2                       # two stub pixels called shower
    pred[[5, 6]] = 1                       # two track pixels called MIP
    ev = Event(coords=coords, features=np.full((len(coords), 1), 50, np.float32), shape=(20, 20),
               labels=labels, clusters=clusters, meta={"topology": "cce"})
    path = tmp_path / "pred.h5"
    with EventWriter(str(path), extras={"pred": EXTRAS["pred"]}) as w:
        w.append(ev, extras={"pred": pred})
    res = class_errors(path, 0, size_bins=(1, 5), radius=1)
    small, big = res["by_size"]
    assert (small["clusters"], small["pixels"], small["predicted"].tolist()) == (1, 3, [1, 0, 2, 0, 0])
    assert (big["clusters"], big["pixels"], big["predicted"].tolist()) == (1, 6, [4, 2, 0, 0, 0])
    assert res["by_topology"]["cce"]["predicted"].tolist() == [5, 2, 2, 0, 0]
    near = res["by_neighbour"]
    assert near["shower"]["pixels"] == 1 and near["shower"]["predicted"].tolist() == [1, 0, 0, 0, 0]  # (2, 4) only
    assert near["alone"]["pixels"] == 8 and near["MIP"]["pixels"] == 0
    out = subprocess.run([sys.executable, "scripts/class_errors.py", str(path), "--class", "hip"],
                         capture_output=True, text=True, check=True).stdout
    assert "| 1-9 | 2 | 9 | 0.556 | 0.222 | 0.222 | 0.000 | 0.000 |" in out
    assert "| cce | 9 | 0.556 | 0.222 | 0.222 | 0.000 | 0.000 |" in out
    bad = subprocess.run([sys.executable, "scripts/class_errors.py", str(path), "--class", "pion"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown class 'pion'" in bad.stderr
