"""Tests for ptychobench.evaluate.frc (SPEC §7.2)."""

import numpy as np
import pytest
from scipy.signal import windows
from skimage import data

from ptychobench.evaluate.frc import (
    NYQUIST,
    FRCResult,
    apodization_window,
    cutoff,
    frc,
    halfbit_threshold,
)


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return data.camera().astype(np.float64)[128:384, 128:384] / 255.0


# --------------------------------------------------------------------------- frc curve


def test_identical_images_curve_is_one(camera):
    res = frc(camera, camera)
    assert isinstance(res, FRCResult)
    n = camera.shape[0]
    assert res.curve.shape == res.frequency.shape == res.n_per_ring.shape == (n // 2 + 1,)
    assert np.allclose(res.curve[1:], 1.0, atol=1e-9, rtol=0)
    finite = np.isfinite(res.curve)
    assert np.allclose(res.curve[finite], 1.0, atol=1e-9, rtol=0)
    assert res.frc50 == res.frc1over7 == res.frc_halfbit == NYQUIST == 0.5
    assert res.frequency[0] == 0.0 and res.frequency[-1] == pytest.approx(0.5)
    assert res.frequency[1] == pytest.approx(1 / n)


def test_identical_complex_images_and_hann(camera):
    z = camera * np.exp(1j * 3 * camera)
    for apod in ("tukey", "hann", "none"):
        res = frc(z, z, apodization=apod)
        assert np.allclose(res.curve[1:], 1.0, atol=1e-9, rtol=0)
        assert res.frc50 == 0.5


def test_independent_white_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(256, 256))
    b = rng.normal(size=(256, 256))
    res = frc(a, b)
    assert abs(np.mean(res.curve[3:])) < 0.1
    assert res.frc50 < 0.1
    assert res.frc1over7 < 0.1
    assert res.frc_halfbit < 0.1


def test_cutoff_decreases_with_noise(camera):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=camera.shape)
    results = [frc(camera, camera + s * noise) for s in (0.1, 0.2, 0.5, 1.0, 2.0)]
    for key in ("frc50", "frc1over7", "frc_halfbit"):
        values = [getattr(r, key) for r in results]
        assert all(x > y for x, y in zip(values, values[1:], strict=False)), (key, values)
    assert all(r.frc50 < 0.5 for r in results)
    # the three criteria are ordered: 0.5 is the strictest
    for r in results:
        assert r.frc50 <= r.frc_halfbit <= r.frc1over7


def test_nonsquare_crop_to_centred_square(camera):
    rng = np.random.default_rng(2)
    wide = rng.normal(size=(64, 100))
    noisy = wide + 0.5 * rng.normal(size=wide.shape)
    res = frc(wide, noisy)
    assert res.curve.shape == (33,)
    ref = frc(wide[:, 18:82], noisy[:, 18:82])
    np.testing.assert_array_equal(res.curve, ref.curve)
    assert res.frc50 == ref.frc50


def test_ring_counts():
    res = frc(np.random.default_rng(3).normal(size=(32, 32)), np.ones((32, 32)))
    assert res.n_per_ring[0] == 1
    assert res.n_per_ring[1] == 8  # (±1, 0), (0, ±1), (±1, ±1) all round to radius 1
    assert res.n_per_ring.sum() == np.sum(
        np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(32) * 32, np.fft.fftfreq(32) * 32))) <= 16
    )
    np.testing.assert_allclose(res.halfbit, halfbit_threshold(res.n_per_ring))


def test_constant_image_gives_nan_curve_and_nan_cutoffs():
    rng = np.random.default_rng(4)
    res = frc(rng.normal(size=(32, 32)), np.full((32, 32), 2.0))
    assert np.all(np.isnan(res.curve[1:]))
    assert np.isnan(res.frc50)


def test_invalid_inputs(camera):
    with pytest.raises(ValueError):
        frc(camera, camera[:-1])
    with pytest.raises(ValueError):
        frc(camera, camera, apodization="gauss")
    with pytest.raises(ValueError):
        frc(camera, camera, alpha=1.5)
    with pytest.raises(ValueError):
        frc(camera[None], camera[None])


def test_apodization_window():
    w = apodization_window(16, "tukey", 0.25)
    t = windows.tukey(16, 0.25)
    np.testing.assert_allclose(w, np.outer(t, t))
    np.testing.assert_allclose(
        apodization_window(16, "hann"), np.outer(windows.hann(16), windows.hann(16))
    )
    np.testing.assert_array_equal(apodization_window(8, "none"), np.ones((8, 8)))


# --------------------------------------------------------------------------- cut-off helper


def test_cutoff_exact_linear_interpolation():
    f = np.arange(5) / 8
    curve = np.array([1.0, 0.9, 0.7, 0.3, 0.1])
    # crosses 0.5 between rings 2 (0.7) and 3 (0.3): halfway ⇒ 2.5 / 8
    assert cutoff(f, curve, 0.5) == pytest.approx(2.5 / 8, abs=1e-15)
    # 1/7 between rings 3 (0.3) and 4 (0.1): t = (0.3 − 1/7)/0.2
    t = (0.3 - 1 / 7) / 0.2
    assert cutoff(f, curve, 1 / 7) == pytest.approx((3 + t) / 8, abs=1e-15)


def test_cutoff_variable_threshold():
    f = np.array([0.0, 0.1, 0.2, 0.3])
    curve = np.array([1.0, 0.8, 0.6, 0.2])
    thr = np.array([1.0, 0.5, 0.5, 0.4])
    # d = curve − thr: 0.3 at 0.1, 0.1 at 0.2, −0.2 at 0.3 ⇒ 0.2 + 0.1/0.3·0.1
    assert cutoff(f, curve, thr) == pytest.approx(0.2 + 0.1 / 0.3 * 0.1, abs=1e-15)


def test_cutoff_special_cases():
    f = np.arange(5) / 8
    # never crosses ⇒ Nyquist
    assert cutoff(f, np.array([1.0, 0.9, 0.8, 0.7, 0.6]), 0.5) == 0.5
    # ring 0 is skipped even if it is below threshold
    assert cutoff(f, np.array([-1.0, 0.9, 0.7, 0.3, 0.1]), 0.5) == pytest.approx(2.5 / 8)
    # below threshold at the first searched ring ⇒ that ring's frequency
    assert cutoff(f, np.array([1.0, 0.2, 0.1, 0.1, 0.1]), 0.5) == pytest.approx(1 / 8)
    # NaN rings are ignored: bracket between rings 1 and 3
    curve = np.array([1.0, 0.9, np.nan, 0.1, 0.1])
    assert cutoff(f, curve, 0.5) == pytest.approx((1 + 0.4 / 0.8 * 2) / 8)
    # no finite ring
    assert np.isnan(cutoff(f, np.full(5, np.nan), 0.5))
    with pytest.raises(ValueError):
        cutoff(f, curve[:3], 0.5)


def test_halfbit_threshold_values():
    assert halfbit_threshold(1) == pytest.approx(1.0, abs=1e-12)
    expected_100 = (0.2071 + 1.9102 / 10) / (1.2071 + 0.9102 / 10)
    assert halfbit_threshold(100) == pytest.approx(expected_100, abs=1e-15)
    assert halfbit_threshold(100) == pytest.approx(0.30669, abs=1e-5)
    np.testing.assert_allclose(halfbit_threshold(np.array([1, 100])), [1.0, expected_100])
    assert halfbit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)
    with pytest.raises(ValueError):
        halfbit_threshold(0)
