"""sparseseg.heldout.simulated_file: a cached held-out file is reused only when it holds the
same stream from the same simulator version."""
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
