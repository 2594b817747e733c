"""PILArNet-M reader: a small file in the public layout, with hand-computed labels and clusters."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from sparseseg.classes import HIP, MIP
from sparseseg.io import EventFile, PilarnetFile, read_pilarnet, write_events
from sparseseg.io.pilarnet import map_labels

# cluster rows, v2 layout: size, fragment id, group id, interaction id, semantic type, PID
CLUSTERS_V2 = np.array(
    [
        [2, 0, -1, -1, 4, -1],  # low-energy scatters
        [3, 1, 0, 0, 1, 4],  # track, proton -> HIP
        [2, 2, 1, 0, 1, 2],  # track, muon -> MIP
        [2, 3, 2, 0, 0, 0],  # shower (photon)
        [1, 4, 3, 0, 2, 1],  # Michel
        [1, 5, 4, 0, 3, 1],  # delta
        [1, 6, 5, 0, 1, 3],  # track, pion -> MIP
        [1, 7, 6, 0, 1, 5],  # track, kaon -> HIP
    ],
    dtype=np.int64,
)
# points: x, y, z, voxel value, energy deposit, time, electrons, dx (ordered by cluster)
XYZV = [
    (0, 0, 0, 0.1),  # LED
    (30, 30, 30, 0.2),  # LED, same voxel as the shower point below: the shower wins
    (10, 10, 10, 1.0),  # proton
    (11, 10, 10, 2.0),
    (12, 10, 10, 3.0),
    (20, 20, 20, 4.0),  # muon
    (21, 20, 20, 5.0),
    (30, 30, 30, 6.0),  # shower
    (21, 20, 20, 7.0),  # shower, same voxel as a muon point: MIP wins, this row goes
    (40, 40, 40, 8.0),  # Michel
    (50, 50, 50, 9.0),  # delta
    (767, 767, 767, 10.0),  # pion
    (60, 61, 62, 11.0),  # kaon
]


def points(rows):
    out = np.zeros((len(rows), 8), np.float32)
    for i, (x, y, z, v) in enumerate(rows):
        out[i, :4] = (x, y, z, v)
        out[i, 4] = 2 * v  # energy deposit
        out[i, 5:] = (100.0 + i, 1000.0, 0.3)
    return out


def write_pilarnet(path, events, *, extra=True, attrs=None):
    """events: list of (points (N, 8), clusters (M, 5|6)); stored flattened, one vlen entry per event."""
    with h5py.File(path, "w") as f:
        p = f.create_dataset("point", (len(events),), dtype=h5py.vlen_dtype(np.float32))
        c = f.create_dataset("cluster", (len(events),), dtype=h5py.vlen_dtype(np.int64))
        for i, (pts, cl) in enumerate(events):
            p[i] = np.asarray(pts, np.float32).ravel()
            c[i] = np.asarray(cl, np.int64).ravel()
        if extra:
            e = f.create_dataset("cluster_extra", (len(events),), dtype=h5py.vlen_dtype(np.float32))
            for i, (_, cl) in enumerate(events):
                e[i] = np.zeros(len(cl) * 5, np.float32)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


@pytest.fixture
def v2_file(tmp_path):
    path = str(tmp_path / "generic_v2_3_v1.h5")
    led_only = (points([(5, 5, 5, 0.05), (6, 5, 5, 0.06), (7, 5, 5, 0.07)]), [[3, 0, -1, -1, 4, -1]])
    empty = (np.zeros((0, 8), np.float32), np.zeros((0, 6), np.int64))
    write_pilarnet(path, [(points(XYZV), CLUSTERS_V2), empty, led_only])
    return path


def test_map_labels():
    sem = np.array([0, 1, 1, 1, 1, 1, 2, 3, 4, 7])
    pid = np.array([0, 4, 2, 3, 5, -1, 1, 1, -1, 0])
    np.testing.assert_array_equal(map_labels(sem, pid), [2, 0, 1, 1, 0, 1, 4, 3, 255, 255])
    np.testing.assert_array_equal(map_labels(sem), [2, 1, 1, 1, 1, 1, 4, 3, 255, 255])


def test_v2_mapping_by_hand(v2_file):
    with PilarnetFile(v2_file) as f:
        assert len(f) == 3 and f.revision == "v2"
        ev = f[0]
        assert ev.shape == (768, 768, 768)
        # rows 1 (LED under the shower) and 8 (shower under the muon) are dropped
        np.testing.assert_array_equal(ev.labels, [255, 0, 0, 0, 1, 1, 2, 4, 3, 1, 0])
        np.testing.assert_array_equal(ev.clusters, [-1, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6])
        np.testing.assert_array_equal(
            ev.coords,
            [[0, 0, 0], [10, 10, 10], [11, 10, 10], [12, 10, 10], [20, 20, 20], [21, 20, 20],
             [30, 30, 30], [40, 40, 40], [50, 50, 50], [767, 767, 767], [60, 61, 62]],
        )
        np.testing.assert_allclose(ev.features[:, 0], [0.1, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11])
        assert ev.coords.dtype == np.int32 and ev.features.dtype == np.float32
        assert ev.labels.dtype == np.uint8 and ev.clusters.dtype == np.int32
        assert ev.features.shape == (11, 1)
        assert ev.vertices is None
        assert ev.meta == {"plane": "3D", "event_id": 0, "source": "PILArNet-M", "file": "generic_v2_3_v1.h5", "revision": "v2"}

        empty = f[1]
        assert len(empty) == 0 and empty.coords.shape == (0, 3)
        led = f[-1]
        np.testing.assert_array_equal(led.labels, [255, 255, 255])
        np.testing.assert_array_equal(led.clusters, [-1, -1, -1])
        with pytest.raises(IndexError, match="event index 3 out of range"):
            f[3]

    with PilarnetFile(v2_file, use_pid=False, feature_columns=(3, 4)) as f:
        ev = f[0]
        np.testing.assert_array_equal(ev.labels, [255, 1, 1, 1, 1, 1, 2, 4, 3, 1, 1])
        assert ev.features.shape == (11, 2)
        np.testing.assert_allclose(ev.features[:, 1], 2 * ev.features[:, 0])


def test_v1_layout(tmp_path):
    path = str(tmp_path / "v1.h5")
    pts = points([(1, 2, 3, 0.5), (4, 5, 6, 1.5), (7, 8, 9, 2.5), (9, 9, 9, 3.5), (100, 200, 300, 4.5)])
    # v1 rows: size, fragment id, group id, interaction id, semantic type
    cl = [[1, 0, -1, -1, 4], [2, 1, 0, 0, 1], [1, 2, 1, 0, 0], [1, 3, 2, 0, 3]]
    write_pilarnet(path, [(pts, cl)], extra=False)
    events = list(read_pilarnet(path))
    assert len(events) == 1
    ev = events[0]
    np.testing.assert_array_equal(ev.labels, [255, 1, 1, 2, 3])  # no PID: tracks are MIP
    np.testing.assert_array_equal(ev.clusters, [-1, 0, 0, 1, 2])
    np.testing.assert_array_equal(ev.coords[-1], [100, 200, 300])
    assert ev.meta["revision"] == "v1"


def test_volume_shape(tmp_path):
    path = str(tmp_path / "big.h5")
    pts = points([(800, 10, 10, 1.0)])
    write_pilarnet(path, [(pts, [[1, 0, 0, 0, 1, 2]])])
    with PilarnetFile(path) as f:
        with pytest.raises(ValueError) as ei:
            f[0]
    assert str(ei.value) == (
        f"file {path}: event 0: dataset '/point' coordinates outside the volume (768, 768, 768): "
        "per-axis min [800, 10, 10], max [800, 10, 10] (pass shape=... for another volume)"
    )
    with PilarnetFile(path, shape=(1024, 1024, 1024)) as f:
        assert f[0].shape == (1024, 1024, 1024)
    path2 = str(tmp_path / "attr.h5")
    write_pilarnet(path2, [(pts, [[1, 0, 0, 0, 1, 2]])], attrs={"shape": np.array([900, 900, 900])})
    with PilarnetFile(path2) as f:
        assert f[0].shape == (900, 900, 900)
        np.testing.assert_array_equal(f[0].labels, [1])


def test_errors(tmp_path):
    missing = str(tmp_path / "none.h5")
    with pytest.raises(FileNotFoundError) as ei:
        PilarnetFile(missing)
    assert missing in str(ei.value)
    with pytest.raises(FileNotFoundError):
        read_pilarnet(missing)  # raises at the call, not at the first next()

    nopoint = str(tmp_path / "nopoint.h5")
    with h5py.File(nopoint, "w") as f:
        f["cluster"] = np.zeros(3)
    with pytest.raises(ValueError) as ei:
        PilarnetFile(nopoint)
    assert str(ei.value) == f"file {nopoint}: dataset '/point' is missing (not a PILArNet-M file)"

    bad = str(tmp_path / "bad.h5")
    write_pilarnet(bad, [(points([(1, 1, 1, 1.0), (2, 2, 2, 1.0)]), [[3, 0, 0, 0, 1, 2]])])
    with PilarnetFile(bad) as f:
        with pytest.raises(ValueError) as ei:
            f[0]
    assert str(ei.value) == (
        f"file {bad}: event 0: dataset '/cluster' entry (6 values) does not reshape to (M, 5) or (M, 6) "
        "rows whose sizes (column 0) sum to the 2 points of '/point'"
    )

    noth5 = tmp_path / "text.h5"
    noth5.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        PilarnetFile(str(noth5))


def test_convert_to_event_file(v2_file, tmp_path):
    events = list(read_pilarnet(v2_file))
    out = tmp_path / "converted.h5"
    assert write_events(out, events, attrs={"source": "PILArNet-M"}) == 3
    with EventFile(out) as f:
        assert f.D == 3 and len(f) == 3
        for a, b in zip(f, events):
            np.testing.assert_array_equal(a.coords, b.coords)
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.clusters, b.clusters)
            assert a.meta == b.meta


def _worker_pids(batch):
    import os

    return [(os.getpid(), ev.meta.get("event_id"), len(ev)) for ev in batch]


def test_many_files_through_dataloader_workers(tmp_path):
    """A PILArNet-M-layout file set served by EventDataset: lazy, per-worker handles,
    shuffled across files, every event exactly once per epoch."""
    import torch

    from sparseseg.io import EventDataset

    rng = np.random.default_rng(0)
    sizes = []
    paths = []
    for k in range(3):
        events = []
        for i in range(4 + k):
            n = int(rng.integers(1, 30))
            lin = rng.choice(700**3, n, replace=False)
            xyz = np.stack(np.unravel_index(lin, (700, 700, 700)), 1)
            pts = np.zeros((n, 8), np.float32)
            pts[:, :3] = xyz
            pts[:, 3] = rng.uniform(0.1, 5, n)
            events.append((pts, np.array([[n, 0, 0, 0, 1, 2]], np.int64)))  # one muon track
            sizes.append(n)
        paths.append(str(tmp_path / f"part{k}.h5"))
        write_pilarnet(paths[-1], events)
    ds = EventDataset(paths)
    assert len(ds) == 4 + 5 + 6 and not ds._files  # nothing held open up front
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=_worker_pids,
                                         generator=torch.Generator().manual_seed(0))
    seen = [row for batch in loader for row in batch]
    assert sorted(n for _, _, n in seen) == sorted(sizes)  # each event once
    assert len({pid for pid, _, _ in seen}) == 2  # both workers read, each with its own handles
    order = [n for _, _, n in seen]
    assert order != sizes  # shuffled across files
    assert all(ds[i].labels.tolist() == [1] * sizes[i] for i in range(len(ds)))  # muon track -> MIP


# ------------------------------------------------------------- every command reads PILArNet-M
def _mev_file(tmp_path):
    """One event: a 40-voxel straight track at ~0.7 MeV per voxel (PILArNet-M's units)."""
    rows = [(100 + i, 200, 300, 0.7) for i in range(40)]
    path = str(tmp_path / "mev.h5")
    write_pilarnet(path, [(points(rows), np.array([[40, 0, 0, 0, 1, 2]]))])
    return path


def test_info_reads_pilarnet(v2_file, capsys):
    from sparseseg.cli import main

    assert main(["info", v2_file]) == 0
    out = capsys.readouterr().out
    assert "3 images from 3 events, 3D (PILArNet-M file, features in MeV)" in out
    assert "plane 3D:      3 images of 768 x 768 x 768" in out


def test_predict_pilarnet_with_the_shipped_3d_weights(tmp_path, capsys):
    """The shipped 3D weights calibrate each volume (input_norm: mip): MeV inputs need no rescaling
    and draw no scale warning; the track is segmented as a track."""
    from sparseseg import registry
    from sparseseg.cli import main

    path = _mev_file(tmp_path)
    out = str(tmp_path / "pred.h5")
    assert main(["predict", path, "-o", out, "--threads", "1", "-q"]) == 0
    assert "feature values have median" not in capsys.readouterr().err
    with EventFile(out) as f:
        assert len(f) == 1 and len(f[0]) == 40
        assert f.attrs["source_format"] == "pilarnet-m"
        assert f.attrs["weights_name"] == "uresnet3d"
        assert f.attrs["weights_sha256"] == registry.SHIPPED["uresnet3d"].sha256
        assert f.attrs["feature_units"] == "MeV"
        pred = f.read_extra(0, "pred")
        assert pred.shape == (40,)
        assert np.isin(pred, [HIP, MIP]).mean() >= 0.9  # a straight 0.7 MeV/voxel line is a track


def test_scale_warning_for_weights_without_input_norm():
    from sparseseg.event import Event
    from sparseseg.infer import input_warnings

    mev = Event(coords=np.array([[i, 0, 0] for i in range(40)], np.int32), features=np.full((40, 1), 0.7, np.float32),
                shape=(768, 768, 768))
    (w,) = input_warnings([mev], "none", 3)
    assert w.startswith("feature values have median 0.7, but these weights were trained on ADC-like charge "
                        "with median ~60")
    assert input_warnings([mev], "mip", 3) == []


def test_input_warnings_size_and_occupancy():
    from sparseseg.event import Event
    from sparseseg.infer import input_warnings

    coords = np.stack(np.meshgrid(np.arange(40), np.arange(40), indexing="ij"), -1).reshape(-1, 2).astype(np.int32)
    dense = Event(coords=coords, features=np.full((len(coords), 1), 60, np.float32), shape=(100, 100))
    (occ,) = input_warnings([dense], "mip", 2)
    assert occ.startswith("an image has 16.0 % of its pixels above threshold")
    huge = Event(coords=coords[:10], features=np.full((10, 1), 60, np.float32), shape=(6400, 3456))
    (size,) = input_warnings([huge], "none", 2)
    assert size.startswith("an image of 6400 x 3456 is far larger than the data the weights were made for")
    assert input_warnings([huge], "mip", 2) == [size]  # the scale check is for weights without input_norm
    nominal = Event(coords=coords[:10], features=np.full((10, 1), 60, np.float32), shape=(1008, 3456))
    assert input_warnings([nominal], "none", 2) == []
