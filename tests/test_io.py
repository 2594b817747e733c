"""HDF5 event files: round trips, appends, resumable writing, atomicity and error messages."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseseg import Event
from sparseseg.io import (
    FORMAT_NAME,
    FORMAT_VERSION,
    EventDataset,
    EventFile,
    EventWriter,
    write_events,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers
def make_event(
    rng: np.random.Generator,
    *,
    D: int = 2,
    shape: tuple[int, ...] | None = None,
    n: int | None = None,
    F: int = 1,
    labels: bool = True,
    clusters: bool = True,
    n_vertices: int | None = 2,
    meta: dict | None = None,
) -> Event:
    shape = shape or ((60, 80) if D == 2 else (20, 30, 40))
    size = int(np.prod(shape))
    n = int(rng.integers(0, 200)) if n is None else n
    n = min(n, size)
    lin = rng.choice(size, n, replace=False)
    coords = np.stack(np.unravel_index(lin, shape), axis=1).astype(np.int32).reshape(n, D)
    return Event(
        coords=coords,
        features=rng.uniform(10, 300, (n, F)).astype(np.float32),
        shape=shape,
        labels=rng.choice(np.array([0, 1, 2, 3, 4, 255], np.uint8), n) if labels else None,
        clusters=rng.integers(-1, 20, n).astype(np.int32) if clusters else None,
        vertices=None if n_vertices is None else rng.uniform(0, 50, (n_vertices, D)).astype(np.float32),
        meta={"plane": "Y", "event_id": 7} if meta is None else meta,
    )


def assert_same_event(a: Event, b: Event) -> None:
    assert a.shape == b.shape
    for name in ("coords", "features", "labels", "clusters", "vertices"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.meta == b.meta


def dataset_arrays(path: str) -> dict[str, np.ndarray]:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def assert_same_files(p: str, q: str) -> None:
    a, b = dataset_arrays(p), dataset_arrays(q)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with EventFile(p) as f, EventFile(q) as g:
        assert f.attrs == g.attrs
        assert len(f) == len(g)
        for i in range(len(f)):
            assert_same_event(f[i], g[i])
            for name in f.extra_names:
                np.testing.assert_array_equal(f.read_extra(i, name), g.read_extra(i, name))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------- round trips
def test_round_trip_all_fields(tmp_path, rng):
    events = [
        make_event(rng, n=150, meta={"plane": "U", "event_id": 11, "preset": "crop512", "gen": {"seed": 3, "e": [1.5, 2]}}),
        make_event(rng, n=0, n_vertices=0, meta={"plane": "V", "event_id": 11}),
        make_event(rng, n=37, n_vertices=None, meta={}),
        make_event(rng, n=80, n_vertices=5, meta={"event_id": -4, "note": "no plane"}),
    ]
    path = str(tmp_path / "ev.h5")
    assert write_events(path, events, attrs={"preset": "uboone", "adc_min": 10.0, "adc_max": 300.0}) == 4
    with EventFile(path) as f:
        assert len(f) == 4
        assert f.D == 2
        assert f.attrs == {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "D": 2,
            "class_names": ("HIP", "MIP", "shower", "delta", "Michel"),
            "preset": "uboone",
            "adc_min": 10.0,
            "adc_max": 300.0,
        }
        assert f.extra_names == ()
        np.testing.assert_array_equal(f.event_ids[[0, 1, 3]], [11, 11, -4])
        assert f.planes.tolist() == ["U", "V", "", ""]
        np.testing.assert_array_equal(f.offsets, [0, 150, 150, 187, 267])
        assert [f.num_pixels(i) for i in range(4)] == [150, 0, 37, 80]
        for i, ev in enumerate(events):
            assert_same_event(f[i], ev)
        assert_same_event(f[-1], events[3])
        assert f[1].vertices.shape == (0, 2)  # empty vertex array stays an array
        assert f[2].vertices is None  # no vertices stays None
        assert [e.meta for e in f] == [e.meta for e in events]
        with pytest.raises(IndexError, match="event index 4 out of range"):
            f[4]
        with pytest.raises(IndexError, match="event index -5 out of range"):
            f[-5]
    with h5py.File(path, "r") as h:
        assert h["coords"].dtype == np.int16
        assert h["coords"].compression == "gzip"
        assert h["coords"].chunks is not None and h["coords"].maxshape == (None, 2)
        assert h.attrs["preset"] == "uboone"  # scalar attrs mirrored for h5ls


def test_3d_without_labels_multi_feature(tmp_path, rng):
    events = [make_event(rng, D=3, n=n, F=2, labels=False, clusters=False) for n in (10, 0, 300)]
    path = tmp_path / "3d.h5"
    write_events(path, events)
    with EventFile(path) as f:
        assert f.D == 3 and len(f) == 3
        for a, b in zip(f, events):
            assert_same_event(a, b)
    with h5py.File(path, "r") as h:
        assert "labels" not in h and "clusters" not in h


def test_coords_int32_for_large_shapes(tmp_path, rng):
    small = make_event(rng, n=50)
    big = make_event(rng, shape=(4, 40000), n=60)
    big.coords[0] = (3, 39999)
    p1, p2 = tmp_path / "big.h5", tmp_path / "mixed.h5"
    write_events(p1, [big])
    with h5py.File(p1, "r") as h:
        assert h["coords"].dtype == np.int32
    # an int16 file is upgraded when a later event needs int32
    with EventWriter(p2) as w:
        w.append(small)
        w.append(small)
    write_events(p2, [big], append=True)
    with h5py.File(p2, "r") as h:
        assert h["coords"].dtype == np.int32
    with EventFile(p2) as f:
        assert_same_event(f[0], small)
        assert_same_event(f[2], big)
        assert f[2].coords.dtype == np.int32


def test_append(tmp_path, rng):
    events = [make_event(rng, n=int(n)) for n in rng.integers(0, 100, 6)]
    path = tmp_path / "a.h5"
    assert write_events(path, events[:4], attrs={"preset": "uboone"}) == 4
    assert write_events(path, events[4:], append=True, attrs={"preset": "uboone", "run": 5}) == 2
    with EventFile(path) as f:
        assert len(f) == 6
        assert f.attrs["preset"] == "uboone" and f.attrs["run"] == 5
        for a, b in zip(f, events):
            assert_same_event(a, b)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"attribute 'preset' is 'uboone' in the file, cannot append events written with 'crop512'"):
        write_events(path, events[:1], append=True, attrs={"preset": "crop512"})
    assert path.read_bytes() == before
    # appending to a missing file creates it; appending to an empty file sets D then
    assert write_events(tmp_path / "new.h5", events[:1], append=True) == 1
    empty = tmp_path / "empty.h5"
    assert write_events(empty, []) == 0
    with EventFile(empty) as f:
        assert len(f) == 0 and f.D == 0 and list(f) == []
    write_events(empty, [make_event(rng, D=3, n=20)], append=True)
    with EventFile(empty) as f:
        assert len(f) == 1 and f.D == 3


def test_extras_round_trip(tmp_path, rng):
    events = [make_event(rng, n=int(n)) for n in (30, 0, 70)]
    preds = [rng.integers(0, 5, len(e)).astype(np.int64) for e in events]
    scores = [rng.random((len(e), 5)).astype(np.float32) for e in events]
    path = tmp_path / "pred.h5"
    with EventWriter(path, extras={"pred": ("uint8", ()), "scores": ("float16", (5,))}, attrs={"model": "uresnet"}) as w:
        assert w.n_done == 0
        for e, p, s in zip(events, preds, scores):
            w.append(e, extras={"pred": p, "scores": s})
    assert not os.path.exists(str(path) + ".partial")
    with EventFile(path) as f:
        assert f.extra_names == ("pred", "scores")
        assert f.attrs["model"] == "uresnet"
        for i in range(3):
            assert_same_event(f[i], events[i])
            pred = f.read_extra(i, "pred")
            assert pred.dtype == np.uint8
            np.testing.assert_array_equal(pred, preds[i])
            sc = f.read_extra(i, "scores")
            assert sc.dtype == np.float16 and sc.shape == (len(events[i]), 5)
            np.testing.assert_array_equal(sc, scores[i].astype(np.float16))
        with pytest.raises(KeyError, match="no extra 'logits'"):
            f.read_extra(0, "logits")
    with EventWriter(tmp_path / "bad.h5", extras={"pred": ("uint8", ())}) as w:
        with pytest.raises(ValueError, match=r"extra 'pred' has shape \(3,\), expected \(30,\)"):
            w.append(events[0], extras={"pred": np.zeros(3)})
        with pytest.raises(ValueError, match=r"missing \['pred'\], unknown \[\]"):
            w.append(events[0])


# ---------------------------------------------------------------------------- resumable writing
class Crash(RuntimeError):
    pass


def test_writer_resume_after_exception(tmp_path, rng):
    events = [make_event(rng, n=int(n)) for n in rng.integers(0, 120, 12)]
    preds = [np.full(len(e), i % 5, np.uint8) for i, e in enumerate(events)]
    extras = {"pred": ("uint8", ())}
    attrs = {"model": "m1"}
    clean = tmp_path / "clean.h5"
    with EventWriter(clean, extras=extras, attrs=attrs) as w:
        for e, p in zip(events, preds):
            w.append(e, extras={"pred": p})

    path = tmp_path / "out.h5"
    with pytest.raises(Crash):
        with EventWriter(path, extras=extras, attrs=attrs) as w:
            for e, p in zip(events[:5], preds[:5]):
                w.append(e, extras={"pred": p})
            raise Crash()
    assert not path.exists()
    assert os.path.exists(str(path) + ".partial")

    with EventWriter(path, extras=extras, attrs=attrs, resume=True) as w:
        assert w.n_done == 5
        for e, p in list(zip(events, preds))[w.n_done :]:
            w.append(e, extras={"pred": p})
    assert not os.path.exists(str(path) + ".partial")
    assert_same_files(str(clean), str(path))


def test_writer_resume_drops_incomplete_rows(tmp_path, rng):
    events = [make_event(rng, n=int(n)) for n in rng.integers(1, 120, 8)]
    clean = tmp_path / "clean.h5"
    write_events(clean, events)
    path = tmp_path / "out.h5"
    with pytest.raises(Crash):
        with EventWriter(path) as w:
            for e in events[:3]:
                w.append(e)
            raise Crash()
    # what a crash mid-write leaves: a torn next segment without its checksum record, one
    # whose record does not match its bytes, and a temp file
    partial = tmp_path / "out.h5.partial"
    seg0 = (partial / "seg-000000.h5").read_bytes()
    (partial / "seg-000001.h5").write_bytes(seg0[: len(seg0) // 2])
    (partial / ".seg-000001.h5.999.tmp").write_bytes(b"x" * 100)
    (partial / "seg-000002.h5").write_bytes(seg0)
    (partial / "seg-000002.json").write_text((partial / "seg-000000.json").read_text().replace('"sha256": "', '"sha256": "0'))
    with EventWriter(path, resume=True) as w:
        assert w.n_done == 3
        assert sorted(q.name for q in partial.iterdir()) == ["lock", "manifest.json", "seg-000000.h5", "seg-000000.json"]
        for e in events[w.n_done :]:
            w.append(e)
    assert not partial.exists()
    assert_same_files(str(clean), str(path))


def test_writer_resume_after_hard_kill(tmp_path):
    # the process dies without cleanup (no exception handling): batches already flushed survive
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {REPO!r})
        from sparseseg import Event
        from sparseseg.io import EventWriter, writer as h5
        h5.BUFFER_EVENTS = 4
        rng = np.random.default_rng(0)
        w = EventWriter({str(path)!r}, attrs={{"k": 1}})
        for i in range(10):
            c = np.stack([np.arange(i + 1), np.zeros(i + 1)], 1).astype(np.int32)
            w.append(Event(coords=c, features=np.ones((i + 1, 1), np.float32), shape=(20, 20), meta={{"event_id": i}}))
        os._exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not path.exists()
    with EventWriter(path, attrs={"k": 1}, resume=True) as w:
        assert w.n_done == 8  # two flushed batches of 4; the last 2 events were only buffered
        for i in range(w.n_done, 10):
            c = np.stack([np.arange(i + 1), np.zeros(i + 1)], 1).astype(np.int32)
            w.append(Event(coords=c, features=np.ones((i + 1, 1), np.float32), shape=(20, 20), meta={"event_id": i}))
    with EventFile(path) as f:
        assert f.event_ids.tolist() == list(range(10))
        assert [f.num_pixels(i) for i in range(10)] == list(range(1, 11))


def test_writer_resume_refuses_other_settings_and_replaces_bad_partial(tmp_path, rng):
    ev = make_event(rng, n=10)
    path = tmp_path / "o.h5"
    partial = str(path) + ".partial"
    with pytest.raises(Crash):
        with EventWriter(path, attrs={"model": "a"}) as w:
            w.append(ev)
            raise Crash()
    with pytest.raises(ValueError, match=r"cannot resume: it was written with extras \{\} and attrs \{\"model\": \"a\"\}"):
        EventWriter(path, attrs={"model": "b"}, resume=True)
    # without resume the partial is replaced
    with EventWriter(path, attrs={"model": "b"}) as w:
        assert w.n_done == 0
    with EventFile(path) as f:
        assert len(f) == 0
    # an unreadable partial is replaced, with a warning
    with open(partial, "wb") as fh:
        fh.write(b"garbage" * 100)
    with pytest.warns(RuntimeWarning, match="cannot resume"):
        w = EventWriter(path, resume=True)
    assert w.n_done == 0
    w.append(ev)
    w.close()
    with EventFile(path) as f:
        assert len(f) == 1
    # resume without a partial file starts fresh silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with EventWriter(tmp_path / "fresh.h5", resume=True) as w:
            assert w.n_done == 0


# ---------------------------------------------------------------------------- atomicity
def _failing(events, after):
    for i, e in enumerate(events):
        if i == after:
            raise Crash("generator failed")
        yield e


def test_write_events_is_atomic(tmp_path, rng):
    events = [make_event(rng, n=50) for _ in range(5)]
    path = tmp_path / "x.h5"
    with pytest.raises(Crash):
        write_events(path, _failing(events, 3))
    assert os.listdir(tmp_path) == []  # neither the file nor a temp file
    write_events(path, events[:2])
    before = path.read_bytes()
    with pytest.raises(Crash):
        write_events(path, _failing(events, 3))
    with pytest.raises(Crash):
        write_events(path, _failing(events, 3), append=True)
    with pytest.raises(ValueError, match="D = 3"):
        write_events(path, [events[0], make_event(rng, D=3, n=5)])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.h5"]
    # EventWriter: an exception leaves an existing file alone too
    with pytest.raises(Crash):
        with EventWriter(path) as w:
            w.append(events[4])
            raise Crash()
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------- errors
@pytest.fixture
def good_file(tmp_path, rng):
    path = str(tmp_path / "good.h5")
    write_events(path, [make_event(rng, n=n) for n in (40, 60, 0, 25)])
    return path


def test_error_missing_dataset(good_file):
    with h5py.File(good_file, "r+") as h:
        del h["features"]
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: required dataset '/features' is missing"


def test_error_wrong_version(good_file):
    with h5py.File(good_file, "r+") as h:
        h.attrs["format_version"] = 2
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: format version 2 is not supported (this sparseseg reads version 1)"


def test_error_wrong_format(good_file, tmp_path):
    with h5py.File(good_file, "r+") as h:
        h.attrs["format"] = "larcv"
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: attribute 'format' is 'larcv', expected 'sparseseg-events'"
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as h:
        h["point"] = np.zeros(3)
    with pytest.raises(ValueError) as ei:
        EventFile(other)
    assert str(ei.value) == f"file {other}: attribute 'format' is missing (not a sparseseg-events file)"


def test_error_offsets(good_file):
    with h5py.File(good_file, "r+") as h:
        h["offsets"][2] = 10
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: dataset '/offsets' is not monotone: entry 2 (10) < entry 1 (40)"
    with h5py.File(good_file, "r+") as h:
        h["offsets"][2] = 100
        h["offsets"][3] = 100
        h["offsets"][4] = 130
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: dataset '/coords' has 125 rows but '/offsets' says 130"


def test_error_d_mismatch_in_file(good_file):
    with h5py.File(good_file, "r+") as h:
        h.attrs["D"] = 3
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value) == f"file {good_file}: dataset '/coords' has D = 2 but attribute 'D' is 3"


@pytest.mark.parametrize("damage", ["header", "truncate"])
def test_error_corrupt_file(good_file, damage):
    size = os.path.getsize(good_file)
    if damage == "header":
        with open(good_file, "r+b") as fh:
            fh.write(b"\x00" * 64)
    else:
        with open(good_file, "r+b") as fh:
            fh.truncate(size // 2)
    with pytest.raises(ValueError) as ei:
        EventFile(good_file)
    assert str(ei.value).startswith(f"file {good_file}: not a readable HDF5 file (corrupt or truncated?)")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        write_events(good_file, [], append=True)


def test_error_nonexistent(tmp_path):
    path = str(tmp_path / "nope" / "missing.h5")
    with pytest.raises(FileNotFoundError) as ei:
        EventFile(path)
    assert path in str(ei.value)
    assert ei.value.filename == path
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        EventDataset([path])


def test_error_mixed_events(tmp_path, rng):
    path = str(tmp_path / "m.h5")
    with pytest.raises(ValueError) as ei:
        write_events(path, [make_event(rng, D=2, n=5), make_event(rng, D=3, n=5)])
    assert str(ei.value) == (
        f"file {path}: event 1 has D = 3 but the file holds D = 2 events (dataset '/coords'); "
        "all events in a file must have the same D"
    )
    with pytest.raises(ValueError) as ei:
        write_events(path, [make_event(rng, n=5), make_event(rng, n=5, labels=False)])
    assert str(ei.value) == (
        f"file {path}: event 1 has no labels but the file's other events do (dataset '/labels'); "
        "all events in a file must either have labels or not"
    )
    with pytest.raises(ValueError, match=r"event 1 has F = 2 feature columns but the file holds F = 1"):
        write_events(path, [make_event(rng, n=5), make_event(rng, n=5, F=2)])
    write_events(path, [make_event(rng, D=2, n=5)])
    with pytest.raises(ValueError, match=r"event 1 has D = 3 but the file holds D = 2"):
        write_events(path, [make_event(rng, D=3, n=5)], append=True)
    with pytest.raises(ValueError, match="reserved"):
        write_events(path, [], attrs={"format": "x"})
    with pytest.raises(ValueError, match="JSON serialisable"):
        write_events(tmp_path / "j.h5", [make_event(rng, n=3, meta={"obj": object()})])


# ---------------------------------------------------------------------------- property test
@st.composite
def events_strategy(draw):
    D = draw(st.sampled_from([2, 3]))
    F = draw(st.integers(1, 3))
    has_labels = draw(st.booleans())
    has_clusters = draw(st.booleans())
    big = draw(st.booleans())
    n_events = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        shape = tuple(int(s) for s in rng.integers(1, 12, D))
        if big:
            shape = (40000,) + shape[1:]
        n = draw(st.integers(0, 40))
        meta = {}
        if draw(st.booleans()):
            meta["plane"] = draw(st.sampled_from(["U", "V", "Y", "3D"]))
        if draw(st.booleans()):
            meta["event_id"] = draw(st.integers(-(2**62), 2**62))
        if draw(st.booleans()):
            meta["info"] = draw(st.one_of(st.text(max_size=8), st.floats(allow_nan=False), st.lists(st.integers(-5, 5), max_size=3)))
        nv = draw(st.one_of(st.none(), st.integers(0, 3)))
        events.append(
            make_event(rng, D=D, shape=shape, n=n, F=F, labels=has_labels, clusters=has_clusters, n_vertices=nv, meta=meta)
        )
    return events


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy())
def test_property_round_trip(tmp_path, events):
    path = tmp_path / "prop.h5"
    assert write_events(path, events) == len(events)
    with EventFile(path) as f:
        assert len(f) == len(events)
        for i, ev in enumerate(events):
            assert_same_event(f[i], ev)
            assert f.num_pixels(i) == len(ev)


# ---------------------------------------------------------------------------- torch dataset
def _keep(batch):
    return batch


def test_event_dataset_with_dataloader(tmp_path, rng):
    import torch.utils.data

    p1, p2 = str(tmp_path / "d1.h5"), str(tmp_path / "d2.h5")
    write_events(p1, [make_event(rng, n=int(n), meta={"event_id": i}) for i, n in enumerate(rng.integers(0, 90, 7))])
    write_events(p2, [make_event(rng, n=int(n), meta={"event_id": 100 + i}) for i, n in enumerate(rng.integers(0, 90, 5))])
    ds = EventDataset([p1, p2])
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == 12
    assert ds.locate(7) == (1, 0) and ds.locate(-1) == (1, 4)
    direct = [ds[i] for i in range(len(ds))]  # opens handles in this process before the fork
    assert [e.meta["event_id"] for e in direct] == list(range(7)) + list(range(100, 105))
    with EventFile(p2) as f:
        assert_same_event(ds[-2], f[3])
    with pytest.raises(IndexError):
        ds[12]
    clone = pickle.loads(pickle.dumps(ds))
    assert_same_event(clone[3], direct[3])

    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=_keep, shuffle=False)
    got = [e for batch in loader for e in batch]
    assert len(got) == len(direct)
    for a, b in zip(got, direct):
        assert_same_event(a, b)
    assert isinstance(EventDataset(p1), torch.utils.data.Dataset)


def test_reader_without_validation_gives_same_events(tmp_path, rng):
    events = [make_event(rng, n=int(n)) for n in (30, 0, 44)]
    path = tmp_path / "nv.h5"
    write_events(path, events)
    with EventFile(path, validate=False) as f:
        for a, b in zip(f, events):
            assert isinstance(a, Event)
            assert_same_event(a, b)


def test_file_permissions_and_index_types(tmp_path, rng):
    path = tmp_path / "perm.h5"
    write_events(path, [make_event(rng, n=5)])
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~umask)  # not mkstemp's 0600
    from sparseseg.atomic import write_text  # reports, checkpoints, metrics: same permissions

    old = os.umask(0o027)
    try:
        report = write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert (os.stat(report).st_mode & 0o777) == 0o640 and report.read_text() == "{}"
    with EventFile(path) as f:
        assert_same_event(f[np.int64(0)], f[0])
        with pytest.raises(TypeError, match="integer"):
            f[0.5]
        with pytest.raises(TypeError, match="integer"):
            f[True]


def test_resume_after_crash_before_any_event(tmp_path, rng):
    path = tmp_path / "early.h5"
    with pytest.raises(Crash):
        with EventWriter(path, attrs={"a": 1}):
            raise Crash()
    ev = make_event(rng, D=3, n=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with EventWriter(path, attrs={"a": 1}, resume=True) as w:
            assert w.n_done == 0
            w.append(ev)
    with EventFile(path) as f:
        assert len(f) == 1 and f.D == 3
        assert_same_event(f[0], ev)
