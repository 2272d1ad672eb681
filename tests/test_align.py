"""Tests for ptychobench.evaluate.align (SPEC §7.1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import fourier_shift, gaussian_filter
from skimage import data, transform
from skimage.color import rgb2gray
from skimage.registration import phase_cross_correlation

from ptychobench.evaluate.align import (
    AlignmentResult,
    align_arms,
    common_crop,
    register,
    remove_global_phase,
    remove_phase_plane,
    scale_amplitude,
    scanned_region,
    shift_image,
    valid_margin,
)

SHIFT = (3.3, -1.7)  # (dy, dx) applied to the truth to make the misregistered prediction


def _field(size: int) -> np.ndarray:
    """Smooth, textured complex field: camera amplitude, astronaut-grey phase, blurred."""
    amp = transform.resize(data.camera().astype(float), (size, size), anti_aliasing=True)
    ph = transform.resize(rgb2gray(data.astronaut()), (size, size), anti_aliasing=True)
    amp = gaussian_filter(0.3 + 0.7 * amp / amp.max(), 1.5)
    ph = gaussian_filter(2.0 * (ph - ph.mean()), 1.5)
    return amp * np.exp(1j * ph)


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return _field(320)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return _field(160)


def fshift(img: np.ndarray, s: tuple[float, float]) -> np.ndarray:
    return np.fft.ifft2(fourier_shift(np.fft.fft2(img), s))


def cropped_pair(big: np.ndarray, s: tuple[float, float], size: int = 160):
    """(pred, truth): a crop of the field and the same crop of the field shifted by ``s``.

    Unlike a periodic shift of the crop itself, the content at the edges really differs — the
    situation of a misregistered reconstruction restricted to the scanned region.
    """
    o = (big.shape[0] - size) // 2
    sl = (slice(o, o + size), slice(o, o + size))
    return fshift(big, s)[sl], big[sl]


def noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return img + sigma * (rng.normal(size=img.shape) + 1j * rng.normal(size=img.shape)) / np.sqrt(2)


def ramp(shape, a: float, b: float, c: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(1j * (a * xx + b * yy + c))


def phase_rms(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.angle(pred * np.conj(truth)) ** 2)))


# ------------------------------------------------------------------------------------------
# scanned_region
# ------------------------------------------------------------------------------------------


def test_scanned_region_hand_computed():
    coords = np.array([[20.0, 30.5], [100.0, 90.25], [60.0, 50.0]])  # (x, y)
    # rows: floor(30.5 - 8) = 22, ceil(90.25 + 8) = 99; cols: floor(20 - 8) = 12, ceil(108) = 108
    assert scanned_region(coords, (128, 140), 16) == (slice(22, 99), slice(12, 108))
    assert scanned_region(coords, (128, 140), 16, border=2) == (slice(24, 97), slice(14, 106))
    # odd M: ± 7.5
    assert scanned_region(coords, (128, 140), 15) == (slice(23, 98), slice(12, 108))


def test_scanned_region_integer_coords_match_central_crop_coverage():
    # an integer position c with even M covers pixels c - M/2 ... c + M/2 - 1
    coords = np.array([[40.0, 10.0]])
    rows, cols = scanned_region(coords, (64, 64), 8)
    assert (rows, cols) == (slice(6, 14), slice(36, 44))
    assert rows.stop - rows.start == 8


def test_scanned_region_clips_to_image():
    coords = np.array([[2.0, 3.0], [135.0, 126.0]])
    assert scanned_region(coords, (128, 140), 16) == (slice(0, 128), slice(0, 140))
    assert scanned_region(coords, (128, 140), 16, border=3) == (slice(0, 128), slice(0, 140))


def test_scanned_region_errors():
    coords = np.array([[20.0, 30.0], [24.0, 34.0]])
    with pytest.raises(ValueError, match=r"empty scanned region.*border 7"):
        scanned_region(coords, (64, 64), 8, border=7)  # 12 - 2*7 < 0 wide
    with pytest.raises(ValueError, match="shape"):
        scanned_region(np.zeros((3, 3)), (64, 64), 8)
    with pytest.raises(ValueError, match="non-finite"):
        scanned_region(np.array([[np.nan, 1.0]]), (64, 64), 8)
    with pytest.raises(ValueError, match="crop_size_M"):
        scanned_region(coords, (64, 64), 0)
    with pytest.raises(ValueError, match="border"):
        scanned_region(coords, (64, 64), 8, border=-1)
    with pytest.raises(ValueError, match="empty"):  # scan entirely outside the image
        scanned_region(np.array([[200.0, 10.0]]), (64, 64), 8)


# ------------------------------------------------------------------------------------------
# shifts and crops
# ------------------------------------------------------------------------------------------


def test_valid_margin():
    assert valid_margin(0.0) == 0
    assert valid_margin(0.01) == 2
    assert valid_margin(-1.0) == 2
    assert valid_margin(3.3) == 5
    assert valid_margin(-1.7) == 3
    with pytest.raises(ValueError):
        valid_margin(float("nan"))


def test_shift_image_sign_and_integer_exactness(truth):
    s = (2.0, -3.0)
    out = shift_image(truth, s)
    rolled = np.roll(truth, (2, -3), axis=(0, 1))  # content moves down 2, left 3
    crop = common_crop(truth.shape, [s])
    np.testing.assert_allclose(out[crop], rolled[crop], atol=1e-12)
    assert out.dtype == np.complex128 and out.shape == truth.shape


def test_shift_image_zero_and_real():
    img = np.arange(20.0).reshape(4, 5)
    z = shift_image(img, (0.0, 0.0))
    np.testing.assert_array_equal(z, img)
    assert z is not img
    r = shift_image(img, (0.5, 0.0))
    assert np.isrealobj(r) and r.shape == img.shape
    with pytest.raises(ValueError):
        shift_image(img, (np.inf, 0.0))
    with pytest.raises(ValueError):
        shift_image(np.zeros((2, 2, 2)), (1.0, 0.0))


def test_shift_image_subpixel_roundtrip_and_little_ringing(big):
    # non-periodic crop: pred is the crop of the shifted field
    pred, t = cropped_pair(big, SHIFT)
    back = (-SHIFT[0], -SHIFT[1])
    crop = common_crop(t.shape, [back])
    err = np.abs(shift_image(pred, back) - t)[crop]
    # a plain periodic Fourier shift of the crop rings from the wrap-around jump
    plain = np.abs(fshift(pred, back) - t)[crop]
    assert err.max() < 0.02  # amplitude ~0.3..1
    assert err.max() < 0.25 * plain.max()


def test_common_crop_same_for_all_and_shrinks_with_largest_shift():
    shape = (100, 120)
    assert common_crop(shape, []) == (slice(0, 100), slice(0, 120))
    assert common_crop(shape, [(0.0, 0.0)]) == (slice(0, 100), slice(0, 120))
    c1 = common_crop(shape, [(0.4, -0.2)])
    assert c1 == (slice(2, 98), slice(2, 118))
    c2 = common_crop(shape, [(0.4, -0.2), (3.3, -1.7)])
    assert c2 == (slice(5, 95), slice(3, 117))
    c3 = common_crop(shape, [(0.4, -0.2), (3.3, -1.7), (-7.5, 0.0)])
    assert c3 == (slice(9, 91), slice(3, 117))
    # order of arms does not matter
    assert common_crop(shape, [(-7.5, 0.0), (3.3, -1.7), (0.4, -0.2)]) == c3
    with pytest.raises(ValueError, match="no valid overlap"):
        common_crop((10, 10), [(5.0, 0.0)])


# ------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------


def test_register_recovers_fourier_shift_with_sign(truth):
    pred = fshift(truth, SHIFT)
    dy, dx = register(pred, truth)
    # the returned shift is the one to APPLY to pred: the negative of the shift that made it
    assert abs(dy - (-3.3)) < 0.05 and abs(dx - 1.7) < 0.05
    crop = common_crop(truth.shape, [(dy, dx)])
    err = np.abs(shift_image(pred, (dy, dx)) - truth)[crop]
    # pred wraps periodically but shift_image does not (it reflects): edges differ a little
    assert np.sqrt(np.mean(err**2)) < 0.01 and err[10:-10, 10:-10].max() < 0.01


def test_register_matches_skimage_sign_convention(truth):
    pred = np.roll(truth, (2, -3), axis=(0, 1))
    bare = register(pred, truth, window=None, max_iter=0, deramp=False)
    assert bare == pytest.approx((-2.0, 3.0), abs=1e-9)
    ref, _, _ = phase_cross_correlation(truth, pred, upsample_factor=100, normalization=None)
    assert bare == pytest.approx(tuple(ref), abs=1e-12)
    assert register(pred, truth) == pytest.approx((-2.0, 3.0), abs=0.02)


@pytest.mark.parametrize("on", ["complex", "amplitude", "phase"])
def test_register_cropped_with_ramp_offset_and_scale(big, on):
    pred, t = cropped_pair(big, SHIFT)
    pred = 0.6 * pred * ramp(pred.shape, 0.01, -0.02, 1.3)
    if on == "phase":  # the phase is unusable under a ramp; register its ramp-free version
        pred, _ = remove_phase_plane(pred, t)
    dy, dx = register(pred, t, on=on)
    assert abs(dy + 3.3) < 0.05 and abs(dx - 1.7) < 0.05


def test_register_bare_skimage_is_biased_on_cropped_images(big):
    # why register() tapers and refines: the bare call is pulled toward zero by the edges
    pred, t = cropped_pair(big, SHIFT)
    bare = register(pred, t, window=None, max_iter=0, deramp=False)
    refined = register(pred, t)
    assert np.hypot(bare[0] + 3.3, bare[1] - 1.7) > 0.5
    assert np.hypot(refined[0] + 3.3, refined[1] - 1.7) < 0.02


def test_normalization_choice(big):
    """normalization=None (plain cross-correlation) beats "phase" on noisy reconstructions.

    Measured here on the non-periodic crop with a phase ramp and complex noise of 0.3 (amplitude
    0.3..1); the numbers are also quoted in the module docstring.
    """
    errs: dict[str | None, list[float]] = {None: [], "phase": []}
    for seed in range(4):
        pred, t = cropped_pair(big, SHIFT)
        pred = noisy(pred * ramp(pred.shape, 0.01, -0.02, 0.0), 0.3, seed)
        for norm in errs:
            dy, dx = register(pred, t, normalization=norm)
            errs[norm].append(np.hypot(dy + 3.3, dx - 1.7))
    rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errs.items()}
    assert rms[None] < 0.15
    assert rms["phase"] > 2 * rms[None]


def test_register_default_normalization_is_none(big):
    pred, t = cropped_pair(big, SHIFT)
    pred = noisy(pred, 0.3, 7)
    assert register(pred, t) == register(pred, t, normalization=None)


def test_register_constant_and_identical(truth):
    flat = np.full(truth.shape, np.abs(truth).mean(), dtype=complex)
    assert register(flat, truth) == (0.0, 0.0)
    assert register(truth, truth) == (0.0, 0.0)


def test_register_errors(truth):
    bad = truth.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        register(bad, truth)
    with pytest.raises(ValueError, match="non-finite"):
        register(truth, bad)
    with pytest.raises(ValueError, match="shape"):
        register(truth[:-1], truth)
    with pytest.raises(ValueError, match="on must be"):
        register(truth, truth, on="intensity")
    with pytest.raises(ValueError, match="normalization"):
        register(truth, truth, normalization="foo")
    with pytest.raises(ValueError, match="2-D"):
        register(truth[None], truth[None])


def test_register_fourier_space(truth):
    pred = fshift(truth, SHIFT)
    dy, dx = register(np.fft.fft2(pred), np.fft.fft2(truth), space="fourier")
    assert abs(dy + 3.3) < 0.05 and abs(dx - 1.7) < 0.05


# ------------------------------------------------------------------------------------------
# phase and amplitude
# ------------------------------------------------------------------------------------------


def test_remove_global_phase(truth):
    out = remove_global_phase(truth * np.exp(1j * 2.5), truth)
    assert phase_rms(out, truth) < 1e-12
    np.testing.assert_allclose(np.abs(out), np.abs(truth))


def test_remove_phase_plane_offset_and_ramp(truth):
    pred = truth * ramp(truth.shape, 0.01, -0.02, 1.3)  # 1.3 rad + 0.01 rad/px x − 0.02 y
    out, (a, b, c) = remove_phase_plane(pred, truth)
    assert phase_rms(out, truth) < 1e-3
    assert (a, b, c) == pytest.approx((0.01, -0.02, 1.3), abs=1e-6)
    np.testing.assert_allclose(out, truth, atol=1e-9)


def test_remove_phase_plane_wrapping_ramp_and_noise(truth):
    # a ramp that wraps several times across the image, and noise on top
    pred = truth * ramp(truth.shape, 0.3, -0.25, -2.9)
    out, coeffs = remove_phase_plane(pred, truth)
    assert coeffs == pytest.approx((0.3, -0.25, -2.9), abs=1e-6)
    out, coeffs = remove_phase_plane(noisy(pred, 0.2, 1), truth)
    assert coeffs[:2] == pytest.approx((0.3, -0.25), abs=1e-3)


def test_remove_phase_plane_modes(truth):
    pred = truth * ramp(truth.shape, 0.0, 0.0, 1.3)
    for mode in ("plane", "mean", "none"):
        out, (a, b, c) = remove_phase_plane(pred, truth, mode=mode)
        assert phase_rms(out, truth) < 1e-9
        assert c == pytest.approx(1.3, abs=1e-9)
    # mean and none leave a ramp in place
    pred = truth * ramp(truth.shape, 0.01, 0.0, 0.0)
    _, (a, b, _) = remove_phase_plane(pred, truth, mode="mean")
    assert (a, b) == (0.0, 0.0)
    assert phase_rms(remove_phase_plane(pred, truth, mode="mean")[0], truth) > 0.3
    with pytest.raises(ValueError, match=r"\('plane', 'mean', 'none'\)"):
        remove_phase_plane(pred, truth, mode="ramp")


def test_remove_phase_plane_weights(truth):
    pred = truth * ramp(truth.shape, 0.01, -0.02, 1.3)
    w = np.zeros(truth.shape)
    w[20:80, 30:120] = 1.0
    out, coeffs = remove_phase_plane(pred, truth, weights=w)
    assert coeffs == pytest.approx((0.01, -0.02, 1.3), abs=1e-6)
    with pytest.raises(ValueError, match="weights shape"):
        remove_phase_plane(pred, truth, weights=w[:-1])
    with pytest.raises(ValueError, match="zero everywhere"):
        remove_phase_plane(pred, truth, weights=np.zeros(truth.shape))
    with pytest.raises(ValueError, match="non-negative"):
        remove_phase_plane(pred, truth, weights=-w)


def test_scale_amplitude(truth):
    pred = 0.7 * truth * np.exp(1j * 0.4)
    out, s = scale_amplitude(pred, truth)
    assert s == pytest.approx(1 / 0.7, rel=1e-6)
    np.testing.assert_allclose(np.abs(out), np.abs(truth), rtol=1e-9)
    np.testing.assert_allclose(np.angle(out), np.angle(pred), atol=1e-12)  # phase kept
    with pytest.raises(ValueError, match="all-zero reconstruction"):
        scale_amplitude(np.zeros_like(truth), truth)


# ------------------------------------------------------------------------------------------
# align_arms
# ------------------------------------------------------------------------------------------


def grid_coords(lo: float, hi: float, n: int) -> np.ndarray:
    g = np.linspace(lo, hi, n)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


@pytest.fixture(scope="module")
def obj(big):
    return big[40:232, 40:232]  # 192 px object


@pytest.fixture(scope="module")
def coords():
    return grid_coords(30.0, 160.0, 12)  # region (with M = 16, border 2): [24, 166)


def test_align_arms_full_pipeline(obj, coords):
    shifted = fshift(obj, SHIFT)
    arms = {
        "Shifted": 0.8 * shifted * ramp(obj.shape, 0.01, -0.02, 1.3),
        "Small": fshift(obj, (0.4, 0.6)),
        "Same": obj.copy(),
    }
    res = align_arms(arms, obj, coords, crop_size_M=16)
    assert isinstance(res, AlignmentResult)
    assert res.errors == {} and res.notes == {}
    assert res.region == (slice(24, 166), slice(24, 166))
    dy, dx = res.offsets["Shifted"]
    assert abs(dy + 3.3) < 0.05 and abs(dx - 1.7) < 0.05  # the shift applied to the arm
    assert res.offsets["Small"] == pytest.approx((-0.4, -0.6), abs=0.05)
    assert res.offsets["Same"] == (0.0, 0.0)
    # same crop for every arm, set by the largest shift (3.3 -> 5 px, 1.7 -> 3 px)
    assert res.crop == (slice(5, 142 - 5), slice(3, 142 - 3))
    assert {a.shape for a in res.aligned.values()} == {res.truth.shape}
    np.testing.assert_array_equal(res.truth, obj[res.object_slices])
    for name in arms:
        nrmse = np.linalg.norm(res.aligned[name] - res.truth) / np.linalg.norm(res.truth)
        assert nrmse < 0.02, name
    assert res.amplitude_scale["Shifted"] == pytest.approx(1 / 0.8, rel=5e-3)
    a, b, c = res.phase_coeffs["Shifted"]
    assert (a, b) == pytest.approx((0.01, -0.02), abs=2e-4)
    json.dumps(res.settings)  # serialisable
    assert res.settings["registration"] == "all"


def test_align_arms_identical_is_exact(obj, coords):
    res = align_arms({"Same": obj}, obj, coords, crop_size_M=16)
    assert res.offsets["Same"] == (0.0, 0.0)
    assert res.crop == (slice(0, 142), slice(0, 142))
    np.testing.assert_allclose(res.aligned["Same"], res.truth, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(res.truth, obj[24:166, 24:166])
    assert res.amplitude_scale["Same"] == pytest.approx(1.0, abs=1e-12)
    assert res.phase_coeffs["Same"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_align_arms_registration_none(obj, coords):
    arms = {"Shifted": fshift(obj, SHIFT), "Same": obj}
    res = align_arms(arms, obj, coords, crop_size_M=16, registration="none")
    assert res.offsets == {"Shifted": (0.0, 0.0), "Same": (0.0, 0.0)}
    assert res.crop == (slice(0, 142), slice(0, 142))
    np.testing.assert_allclose(res.aligned["Same"], res.truth, atol=1e-6)
    # unregistered, the shifted arm stays visibly misaligned
    err = np.linalg.norm(res.aligned["Shifted"] - res.truth) / np.linalg.norm(res.truth)
    assert err > 0.1


def test_align_arms_failures_do_not_break_good_arm(obj, coords):
    nan_arm = obj.copy()
    nan_arm[50, 60] = np.nan
    arms = {
        "Good": fshift(obj, SHIFT),
        "Zero": np.zeros_like(obj),
        "WrongShape": obj[:-4, :],
        "NaN": nan_arm,
    }
    res = align_arms(arms, obj, coords, crop_size_M=16)
    assert set(res.aligned) == {"Good"}
    assert set(res.errors) == {"Zero", "WrongShape", "NaN"}
    assert "all-zero" in res.errors["Zero"]
    assert "(192, 192)" in res.errors["WrongShape"] and "(188, 192)" in res.errors["WrongShape"]
    assert "non-finite" in res.errors["NaN"]
    assert set(res.offsets) == {"Good"}
    assert res.offsets["Good"] == pytest.approx((-3.3, 1.7), abs=0.05)
    nrmse = np.linalg.norm(res.aligned["Good"] - res.truth) / np.linalg.norm(res.truth)
    assert nrmse < 0.02


def test_align_arms_flat_floor_arm(obj, coords):
    flat = np.full(obj.shape, np.abs(obj).mean(), dtype=complex)
    res = align_arms({"Flat": flat, "Same": obj}, obj, coords, crop_size_M=16)
    assert res.offsets["Flat"] == (0.0, 0.0)
    assert res.errors == {}
    assert np.all(np.isfinite(res.aligned["Flat"]))


def test_align_arms_max_shift_rejects_wild_registration(obj, coords):
    arms = {"Far": fshift(obj, (20.0, 0.0)), "Same": obj}
    res = align_arms(arms, obj, coords, crop_size_M=16, max_shift=10.0)
    assert res.offsets["Far"] == (0.0, 0.0)
    assert "max_shift" in res.notes["Far"]
    assert res.crop == (slice(0, 142), slice(0, 142))  # the other arms keep the full region
    res = align_arms(arms, obj, coords, crop_size_M=16, max_shift=None)
    assert res.offsets["Far"] == pytest.approx((-20.0, 0.0), abs=0.05)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"registration": "ptychi-only"}, "registration"),
        ({"phase_align": "ramp"}, "phase_align"),
        ({"register_on": "intensity"}, "register_on"),
        ({"max_shift": -1.0}, "max_shift"),
    ],
)
def test_align_arms_bad_settings(obj, coords, kw, match):
    with pytest.raises(ValueError, match=match):
        align_arms({"Same": obj}, obj, coords, crop_size_M=16, **kw)


def test_align_arms_shift_without_overlap_fails_only_that_arm(obj, coords, monkeypatch):
    import ptychobench.evaluate.align as align_mod

    real_register = align_mod.register
    far = obj * np.exp(0.5j)

    def fake_register(pred, truth, **kw):  # "Far" registers 80 px away (region is 142 px)
        if np.allclose(pred, far[24:166, 24:166]):
            return (80.0, 0.0)
        return real_register(pred, truth, **kw)

    monkeypatch.setattr(align_mod, "register", fake_register)
    res = align_arms({"Far": far, "Same": obj}, obj, coords, crop_size_M=16, max_shift=None)
    assert "no valid overlap" in res.errors["Far"]
    assert set(res.aligned) == {"Same"}
    assert res.crop == (slice(0, 142), slice(0, 142))
    np.testing.assert_allclose(res.aligned["Same"], res.truth, atol=1e-6)
