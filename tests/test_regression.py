"""Pinned outputs: the simulator for a fixed seed, so that any change in its output is seen.

When a change to the simulator is intended, bump ``SIMULATOR_VERSION`` and update these
numbers in the same commit (with the reason in the commit message).
"""
from __future__ import annotations

import numpy as np
import pytest

from sparseseg.simulate import SIMULATOR_VERSION, simulate

# preset, plane: pixels, label counts (HIP, MIP, shower, delta, Michel, no truth), feature sum, coordinate sums
PINNED = {
    ("crop512", "U"): (2042, [80, 1170, 734, 16, 0, 42], 100205.00215435028, [738519, 656119]),
    ("crop512", "V"): (2780, [73, 1693, 865, 114, 0, 35], 143979.77508068085, [888622, 790946]),
    ("crop512", "Y"): (1971, [66, 1009, 874, 11, 0, 11], 130802.74203968048, [716347, 493666]),
    ("pilarnet", "3D"): (3317, [152, 2889, 75, 201, 0, 0], 1655.381563961506, [1293129, 1410950, 1119097]),
}


def test_simulator_version_of_the_pins():
    assert SIMULATOR_VERSION == "0.4"


@pytest.mark.parametrize("preset", ["crop512", "pilarnet"])
def test_simulator_output_is_pinned(preset):
    for ev in simulate(preset, 1, 11):
        pixels, labels, fsum, csum = PINNED[(preset, ev.plane)]
        assert len(ev) == pixels
        assert np.bincount(ev.labels, minlength=256)[[0, 1, 2, 3, 4, 255]].tolist() == labels
        assert float(ev.features.astype(np.float64).sum()) == pytest.approx(fsum, rel=1e-6)
        assert ev.coords.astype(np.int64).sum(axis=0).tolist() == csum
