"""scripts/label_share.py: the charge share of each pixel's truth class, by hand."""
import numpy as np
import pytest

from conftest import load_script


def test_share_and_majority_class_by_hand():
    from sparseseg.simulate import render

    rec_cls = load_script("label_share").ShareRecorder
    # pixel 3: a MIP deposit of 1 and a delta deposit of 9 (priority: MIP, holding 10 %);
    # pixel 7: shower 2 + 3 only
    lin = np.array([3, 3, 7, 7])
    q = np.array([1.0, 9.0, 2.0, 3.0])
    label = np.array([1, 3, 2, 2], np.uint8)
    cluster = np.array([0, 1, 2, 2])
    with rec_cls(render) as rec:
        pix, ch, lab, _ = render.accumulate_pixels(lin, q, label, cluster, 16)
    assert render.accumulate_pixels is rec.orig  # restored
    (rpix, share, major, plab), = rec.images
    assert pix.tolist() == rpix.tolist() == [3, 7] and lab.tolist() == plab.tolist() == [1, 2]
    assert ch.tolist() == [10.0, 5.0]
    assert share == pytest.approx([0.1, 1.0]) and major.tolist() == [3, 2]


def test_table_on_shipped_3d_weights(capsys):
    from sparseseg.registry import default_weights

    weights = default_weights(3)
    assert load_script("label_share").main(["--weights", str(weights), "--preset", "pilarnet", "-n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [r for r in out if r.startswith("| 0.") or r.startswith("| 0.80")]
    assert len(rows) == 5
    fractions = [float(r.split("|")[2]) for r in rows]
    assert sum(fractions) == pytest.approx(1.0, abs=2e-4)
