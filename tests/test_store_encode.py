"""Pixel encoding and the 2x overview reduction (pure functions, checked against independent references)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from geosr.store.encode import decode, encode, valid_mask
from geosr.store.overviews import downsample2

refl = st.one_of(st.floats(min_value=-0.5, max_value=8.0, width=32),
                 st.sampled_from([np.nan, np.inf, -np.inf]).map(np.float32))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (2, 5, 7), elements=refl), arrays(np.bool_, (5, 7)))
def test_uint16_never_turns_a_valid_pixel_into_nodata(data, valid):
    raw = encode(data, valid, "uint16")
    ok = valid & np.isfinite(data)
    assert raw.dtype == np.uint16
    assert (raw[ok] >= 1).all()
    assert (raw[~ok] == 0).all()
    np.testing.assert_array_equal(valid_mask(raw, "uint16"), ok)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (1, 6, 6), elements=st.floats(min_value=0.00011, max_value=6.5).map(np.float32)))
def test_uint16_round_trip_is_within_half_a_step(data):
    back = decode(encode(data, np.ones((6, 6), bool), "uint16"), "uint16")
    assert np.abs(back.astype(np.float64) - data.astype(np.float64)).max() <= 0.5e-4 + 1e-7


def test_uint16_clips_out_of_range_reflectance_and_rounds_to_nearest():
    data = np.array([[[-0.2, 0.0, 0.00004, 0.00016, 0.12344, 0.12346, 7.0]]], np.float32)
    raw = encode(data, np.ones((1, 7), bool), "uint16")
    # <= 0 and tiny reflectance stay valid (1), 1.6 -> 2, 1234.4 -> 1234, 1234.6 -> 1235, > 6.5535 -> 65535
    assert raw.tolist() == [[[1, 1, 1, 2, 1234, 1235, 65535]]]


def test_float32_keeps_values_and_marks_nodata_nan():
    data = np.array([[[0.1, 0.2], [np.inf, 0.4]]], np.float32)
    valid = np.array([[True, False], [True, True]])
    raw = encode(data, valid, "float32")
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(raw), [[[False, True], [True, False]]])
    assert raw[0, 0, 0] == np.float32(0.1) and raw[0, 1, 1] == np.float32(0.4)


def _reference_uint16(raw: np.ndarray) -> np.ndarray:
    """Independent reference: loop over cells, floor(mean + 0.5) of the non-zero values (exact in float64)."""
    c, h, w = raw.shape
    out = np.zeros((c, -(-h // 2), -(-w // 2)), np.uint16)
    for b in range(c):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                cell = raw[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64)
                vals = cell[cell != 0]
                out[b, i, j] = int(np.floor(vals.mean() + 0.5)) if vals.size else 0
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_downsample_uint16_is_the_rounded_mean_of_valid_pixels(h, w, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(1, 65536, size=(2, h, w)).astype(np.uint16)
    raw[rng.random((2, h, w)) < 0.4] = 0
    np.testing.assert_array_equal(downsample2(raw, "uint16"), _reference_uint16(raw))


def test_downsample_float32_means_valid_pixels_and_keeps_empty_cells_nan():
    raw = np.array([[[0.1, np.nan, np.nan, np.nan, 0.5],
                     [0.3, np.nan, np.nan, np.nan, np.nan],
                     [0.2, 0.4, 0.6, 0.8, 1.0]]], np.float32)
    out = downsample2(raw, "float32")
    assert out.shape == (1, 2, 3) and out.dtype == np.float32
    assert out[0, 0, 0] == np.float32((np.float64(np.float32(0.1)) + np.float64(np.float32(0.3))) / 2)
    assert np.isnan(out[0, 0, 1])
    assert out[0, 0, 2] == np.float32(0.5)
    assert out[0, 1, 0] == np.float32((np.float64(np.float32(0.2)) + np.float64(np.float32(0.4))) / 2)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_downsample_of_a_part_equals_the_same_part_of_the_whole(dtype):
    rng = np.random.default_rng(3)
    full = encode(rng.uniform(0, 1, (2, 37, 41)).astype(np.float32), rng.random((37, 41)) > 0.3, dtype)
    whole = downsample2(full, dtype)
    part = downsample2(full[:, 16:37, 8:24], dtype)
    np.testing.assert_array_equal(part, whole[:, 8:19, 4:12])
