"""Pinned outputs: the simulator for a fixed seed, so that any change in its output is seen.

When a change to the simulator is intended, bump ``SIMULATOR_VERSION`` and update these
numbers in the same commit (with the reason in the commit message).
"""
from __future__ import annotations

import numpy as np
import pytest

from sparseseg.simulate import SIMULATOR_VERSION, simulate

# preset, plane: pixels, label counts (HIP, MIP, shower, delta, Michel, no truth), feature sum, coordinate sums.
# One set for every CPU: since simulator 0.5 the same seed gives the same event bit for bit with
# numpy's AVX2 and AVX-512 code paths (test_simulator_is_the_same_on_avx2_and_avx512 below).
PINNED = {
    ("crop512", "U"): (2446, [78, 1171, 1097, 65, 0, 35], 126227.78297233582, [900564, 715895]),
    ("crop512", "V"): (3160, [79, 1741, 1218, 66, 0, 56], 166729.72961997986, [1047748, 889996]),
    ("crop512", "Y"): (2342, [66, 1014, 1198, 47, 0, 17], 157225.58371639252, [841985, 497623]),
    ("pilarnet", "3D"): (3581, [152, 2900, 394, 135, 0, 0], 1808.1621826291084, [1420308, 1515376, 1186916]),
}


def test_simulator_version_of_the_pins():
    assert SIMULATOR_VERSION == "0.5"


@pytest.mark.parametrize("preset", ["crop512", "pilarnet"])
def test_simulator_output_is_pinned(preset):
    for ev in simulate(preset, 1, 11):
        pixels, labels, fsum, csum = PINNED[(preset, ev.plane)]
        assert len(ev) == pixels
        assert np.bincount(ev.labels, minlength=256)[[0, 1, 2, 3, 4, 255]].tolist() == labels
        assert float(ev.features.astype(np.float64).sum()) == pytest.approx(fsum, rel=1e-6)
        assert ev.coords.astype(np.int64).sum(axis=0).tolist() == csum


# Shipped weights on the pinned events (fp32, shipped class bias): predicted class counts per
# image and the scores of two pixels (the first and the middle one). Update these in the commit
# that ships new weights (with the card); a change anywhere else is a regression.
PINNED_PREDICTIONS = {
    "U": ([0, 1224, 1124, 93, 5], [0.0041, 0.9936, 0.0013, 0.0005, 0.0005], [0.0258, 0.974, 0.0002, 0.0, 0.0]),
    "V": ([0, 1787, 1294, 79, 0], [0.0075, 0.9899, 0.0012, 0.0009, 0.0005], [0.0, 0.0026, 0.5973, 0.3817, 0.0185]),
    "Y": ([9, 1165, 1111, 57, 0], [0.0019, 0.9908, 0.0012, 0.0049, 0.0012], [0.0027, 0.9939, 0.0028, 0.0006, 0.0]),
    "3D": ([152, 2930, 316, 182, 1], [0.0001, 0.9966, 0.0024, 0.0006, 0.0003], [0.0, 0.9842, 0.0, 0.0158, 0.0]),
}


def test_shipped_weights_outputs_are_pinned():
    from sparseseg.infer import Predictor

    predictor = Predictor(precision="fp32")
    for preset in ("crop512", "pilarnet"):
        events = list(simulate(preset, 1, 11))
        for ev, (pred, scores) in zip(events, predictor.predict(events)):
            counts, first, middle = PINNED_PREDICTIONS[ev.plane]
            got = np.bincount(pred, minlength=5)
            # float32 GEMMs differ in the last bits between CPUs: a few near-tie pixels may flip
            assert np.abs(got - np.array(counts)).sum() <= max(3, len(ev) // 500), (ev.plane, got.tolist())
            np.testing.assert_allclose(scores[0], first, atol=2e-3)
            np.testing.assert_allclose(scores[len(scores) // 2], middle, atol=2e-3)


_FINGERPRINT = """
import hashlib
from sparseseg.simulate import simulate
for preset, seed in (("crop512", 11), ("pilarnet", 11), ("uboone", 5)):
    for e in simulate(preset, 1, seed, hadronic=preset != "uboone"):
        print(hashlib.sha256(e.coords.tobytes() + e.labels.tobytes() + e.features.tobytes()).hexdigest())
"""


def test_simulator_is_the_same_on_avx2_and_avx512():
    """The same events, bit for bit, with numpy's AVX-512 code paths and with them switched off
    (numpy's AVX2 level and OpenBLAS's Haswell kernels, as on a CPU without AVX-512): a track
    step of exactly k charge sub-samples once became k + 1 on one of them."""
    import os
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_features__

    if not __cpu_features__.get("AVX512F"):
        pytest.skip("this CPU has no AVX-512: there is only one code path to compare")
    runs = []
    for extra in ({}, {"NPY_DISABLE_CPU_FEATURES": "X86_V4", "OPENBLAS_CORETYPE": "Haswell"}):
        env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
        out = subprocess.run([sys.executable, "-c", _FINGERPRINT], env=env, capture_output=True, text=True, check=True)
        runs.append(out.stdout.split())
    assert len(runs[0]) == 7 and runs[0] == runs[1]  # 3 crop512 planes, 1 volume, 3 uboone planes
