"""The Event model: validation errors name the field, from_dense/to_dense semantics."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparseseg import Event


def _ok(**over):
    args = dict(coords=np.array([[0, 0], [1, 2], [3, 3]], np.int32),
                features=np.array([[10.0], [20.0], [300.0]], np.float32), shape=(4, 4),
                labels=np.array([0, 4, 255], np.uint8), clusters=np.array([0, 1, -1], np.int32),
                vertices=np.array([[1.0, 1.0]], np.float32))
    args.update(over)
    return Event(**args)


BAD = [
    ("coords int64", dict(coords=np.array([[0, 0], [1, 2], [3, 3]])),
     "Event.coords: expected an int32 numpy array, got int64"),
    ("coords wrong D", dict(coords=np.zeros((3, 4), np.int32)), "Event.coords: expected shape (N, 2) or (N, 3), got (3, 4)"),
    ("shape D mismatch", dict(shape=(4, 4, 4)), "Event.shape: has 3 dimensions but coords have D = 2"),
    ("features float64", dict(features=np.ones((3, 1))), "Event.features: expected a float32 numpy array, got float64"),
    ("features length", dict(features=np.ones((2, 1), np.float32)), "Event.features: length 2 does not match coords length 3"),
    ("features NaN", dict(features=np.array([[1.0], [np.nan], [np.inf]], np.float32)), "Event.features: 2 row(s) hold NaN or inf"),
    ("negative coords", dict(coords=np.array([[0, 0], [-1, 2], [3, 3]], np.int32)),
     "Event.coords: outside shape (4, 4): per-axis min [-1, 0], max [3, 3]"),
    ("coords >= shape", dict(coords=np.array([[0, 0], [1, 4], [3, 3]], np.int32)),
     "Event.coords: outside shape (4, 4): per-axis min [0, 0], max [3, 4]"),
    ("duplicate coords", dict(coords=np.array([[0, 0], [1, 2], [1, 2]], np.int32)),
     "Event.coords: hold duplicate coordinates; each pixel may appear once"),
    ("labels int64", dict(labels=np.array([0, 1, 2])), "Event.labels: expected a uint8 numpy array, got int64"),
    ("labels out of range", dict(labels=np.array([0, 5, 7], np.uint8)), "Event.labels: values must be 0..4 or 255, found [5, 7]"),
    ("labels length", dict(labels=np.array([0, 1], np.uint8)), "Event.labels: expected shape (3,), got (2,)"),
    ("clusters length", dict(clusters=np.array([0], np.int32)), "Event.clusters: expected shape (3,), got (1,)"),
    ("vertices D", dict(vertices=np.zeros((1, 3), np.float32)), "Event.vertices: expected shape (V, 2), got (1, 3)"),
    ("vertices NaN", dict(vertices=np.array([[np.nan, 0]], np.float32)), "Event.vertices: hold NaN or inf"),
    ("empty shape size", dict(shape=(0, 4)), "Event.shape: sizes must be positive, got (0, 4)"),
]


@pytest.mark.parametrize("case,over,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(case, over, message):
    with pytest.raises(ValueError) as e:
        _ok(**over)
    assert str(e.value) == message


def test_empty_and_single_pixel_events_are_valid():
    empty = Event(np.zeros((0, 2), np.int32), np.zeros((0, 1), np.float32), (5, 5), labels=np.zeros(0, np.uint8))
    assert len(empty) == 0 and empty.to_dense().sum() == 0
    one = Event(np.array([[4, 4]], np.int32), np.array([[12.0]], np.float32), (5, 5))
    assert one.to_dense()[4, 4] == 12.0 and one.occupancy == pytest.approx(1 / 25)


def test_from_dense_threshold_clip_and_labels():
    img = np.array([[0, 9.99, 10], [150, 300, 1e6]], np.float64)
    lab = np.array([[1, 1, 2], [3, 4, 0]], np.uint8)
    ev = Event.from_dense(img, labels=lab)
    assert ev.coords.tolist() == [[0, 2], [1, 0], [1, 1], [1, 2]]  # 9.99 < 10 dropped, 10 kept
    assert ev.features[:, 0].tolist() == [10.0, 150.0, 300.0, 300.0]  # 1e6 clipped to 300
    assert ev.labels.tolist() == [2, 3, 4, 0]
    back = ev.to_dense()
    np.testing.assert_array_equal(back, [[0, 0, 10], [150, 300, 300]])
    assert ev.dense_labels().tolist() == [[255, 255, 2], [3, 4, 0]]


@pytest.mark.parametrize("kwargs,message", [
    (dict(image=np.zeros(5)), "Event.from_dense: image must be 2D or 3D, got 1D shape (5,)"),
    (dict(image=np.array([[np.nan, 1.0]])), "Event.from_dense: image holds NaN"),
    (dict(image=np.zeros((2, 2)), labels=np.zeros((2, 3), np.uint8)),
     "Event.from_dense: labels shape (2, 3) differs from image shape (2, 2)"),
    (dict(image=np.zeros((2, 2)), adc_min=50, adc_max=20), "Event.from_dense: adc_max (20) is below adc_min (50)"),
    (dict(image=np.array([["a", "b"]])), "Event.from_dense: image must be numeric, got dtype <U1"),
])
def test_from_dense_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        Event.from_dense(**kwargs)
    assert str(e.value) == message


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                  elements=st.floats(0, 400, width=32)))
def test_from_dense_to_dense_round_trip(image):
    ev = Event.from_dense(image)
    expected = np.where(image >= 10, np.minimum(image, 300), 0).astype(np.float32)
    np.testing.assert_array_equal(ev.to_dense(), expected)
    assert Event.from_dense(ev.to_dense()).coords.tolist() == ev.coords.tolist()  # idempotent
