"""Tests for ptychobench.evaluate.metrics (SPEC §7.2)."""

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.metrics import structural_similarity

from ptychobench.evaluate import metrics as M
from ptychobench.evaluate.metrics import (
    MS_SSIM_WEIGHTS,
    PSNR_CAP_DB,
    SSIM_KWARGS,
    mae,
    ms_ssim,
    mse,
    nrmse_complex,
    pearson,
    psnr,
    psnr255,
    score,
    ssim,
)


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """256×256 crop of the scikit-image camera, min-max scaled to exactly [0, 1]."""
    img = data.camera().astype(np.float64)[128:384, 128:384]
    return (img - img.min()) / (img.max() - img.min())


def _complex_object(shape=(128, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amp = 0.5 + ndimage.gaussian_filter(rng.random(shape), 2.0)
    phase = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 5.0
    return amp * np.exp(1j * phase)


# --------------------------------------------------------------------------- identical images


def test_identical_images_perfect_values(camera):
    assert mae(camera, camera) == 0.0
    assert mse(camera, camera) == 0.0
    assert psnr(camera, camera) == PSNR_CAP_DB == 100.0
    assert ssim(camera, camera) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(camera, camera) == pytest.approx(1.0, abs=1e-12)
    assert pearson(camera, camera) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- mae / mse / psnr


def test_mae_mse_hand_values():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[1.0, 1.0], [0.0, 3.0]])
    assert mae(a, b) == pytest.approx(0.75)
    assert mse(a, b) == pytest.approx(1.25)


def test_gaussian_noise_mse_and_psnr():
    rng = np.random.default_rng(1234)
    truth = np.clip(ndimage.gaussian_filter(rng.random((512, 512)), 3.0) * 4 - 1.5, -1, 1)
    sigma = 0.05
    pred = truth + rng.normal(0.0, sigma, truth.shape)
    m = mse(pred, truth)
    assert m == pytest.approx(sigma**2, rel=0.03)
    rng_ = truth.max() - truth.min()
    assert psnr(pred, truth) == pytest.approx(10 * np.log10(rng_**2 / m), abs=0.05)
    assert psnr(pred, truth) == pytest.approx(10 * np.log10(rng_**2 / sigma**2), abs=0.15)
    # explicit data range
    assert psnr(pred, truth, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / m), abs=1e-9)


def test_psnr_cap_and_degenerate_range(camera):
    tiny = camera + 1e-9
    assert psnr(tiny, camera) == PSNR_CAP_DB  # 180 dB capped
    with pytest.raises(ValueError):
        psnr(camera, np.full_like(camera, 0.3))
    with pytest.raises(ValueError):
        psnr(camera, camera, data_range=0.0)
    with pytest.raises(ValueError):
        psnr(camera, camera[:10])


def test_psnr255_hand_computation():
    truth = np.array([[0.0, 1.0], [1.0, 0.5]])
    pred = np.array([[0.1, 0.9], [1.0, 0.5]])
    rmse = np.sqrt((0.01 + 0.01) / 4)
    assert psnr255(pred, truth) == pytest.approx(20 * np.log10(255.0 / rmse), abs=1e-9)
    # phase RMSE 0.17 rad gives ≈ 63.5 dB (reference's study numbers)
    assert psnr255(np.full((4, 4), 0.17), np.zeros((4, 4))) == pytest.approx(63.52, abs=0.01)
    # identical: OpenCV's epsilon guard, finite
    assert psnr255(truth, truth) == pytest.approx(20 * np.log10(255 / np.finfo(float).eps))


# --------------------------------------------------------------------------- ssim


def test_ssim_equals_skimage(camera):
    rng = np.random.default_rng(2)
    noisy = camera + rng.normal(0, 0.1, camera.shape)
    expected = structural_similarity(
        camera,
        noisy,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(noisy, camera) == pytest.approx(expected, abs=1e-12)
    # data_range defaults to the truth's range
    assert ssim(noisy, camera, data_range=1.0) == pytest.approx(expected, abs=1e-12)
    assert SSIM_KWARGS["gaussian_weights"] is True
    # kwargs override the defaults
    assert ssim(noisy, camera, gaussian_weights=False, use_sample_covariance=True) == pytest.approx(
        structural_similarity(camera, noisy, data_range=1.0), abs=1e-12
    )


def test_internal_ssim_components_match_skimage(camera):
    rng = np.random.default_rng(3)
    noisy = camera + rng.normal(0, 0.05, camera.shape)
    s, cs = M._ssim_components(noisy, camera, 1.0)
    expected = structural_similarity(camera, noisy, data_range=1.0, **SSIM_KWARGS)
    assert s == pytest.approx(expected, abs=1e-12)
    assert 0 < s < cs < 1  # luminance term ≤ 1


# --------------------------------------------------------------------------- ms-ssim


def test_ms_ssim_five_scales_in_unit_interval(camera):
    rng = np.random.default_rng(4)
    noisy = camera + rng.normal(0, 0.1, camera.shape)
    value, n = ms_ssim(noisy, camera, return_scales=True)
    assert n == 5
    assert 0.0 < value < 1.0
    # MS-SSIM is less sensitive to white noise than single-scale SSIM
    assert value > ssim(noisy, camera)


def test_ms_ssim_hand_composition(camera):
    """The product over scales with the published weights, recomputed here."""
    rng = np.random.default_rng(5)
    noisy = camera + rng.normal(0, 0.08, camera.shape)
    p, t = noisy, camera
    expected = 1.0
    for j, w in enumerate(MS_SSIM_WEIGHTS):
        s, cs = M._ssim_components(p, t, 1.0)
        expected *= (s if j == 4 else cs) ** w
        p = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2).mean(axis=(1, 3))
        t = t.reshape(t.shape[0] // 2, 2, t.shape[1] // 2, 2).mean(axis=(1, 3))
    assert ms_ssim(noisy, camera) == pytest.approx(expected, abs=1e-12)
    assert sum(MS_SSIM_WEIGHTS) == pytest.approx(1.0, abs=1e-4)


def test_ms_ssim_monotone_in_noise(camera):
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 1, camera.shape)
    values = [ms_ssim(camera + s * noise, camera) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[0] > 0.99


def test_ms_ssim_monotone_in_blur(camera):
    values = [ms_ssim(ndimage.gaussian_filter(camera, s), camera) for s in (0.5, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_ms_ssim_small_image_uses_fewer_scales(camera):
    img = camera[:50, :50]
    noisy = img + 0.02 * np.random.default_rng(7).normal(size=img.shape)
    value, n = ms_ssim(noisy, img, return_scales=True)
    assert n == 3  # 50 → 25 → 12 (→ 6 < 11)
    # renormalised weights over the first three scales
    w = np.array(MS_SSIM_WEIGHTS[:3]) / sum(MS_SSIM_WEIGHTS[:3])
    p, t, expected = noisy, img, 1.0
    for j in range(3):
        s, cs = M._ssim_components(p, t, img.max() - img.min())
        expected *= (s if j == 2 else cs) ** w[j]
        h, ww = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
        p = p[:h, :ww].reshape(h // 2, 2, ww // 2, 2).mean(axis=(1, 3))
        t = t[:h, :ww].reshape(h // 2, 2, ww // 2, 2).mean(axis=(1, 3))
    assert value == pytest.approx(expected, abs=1e-12)
    assert ms_ssim(camera[:176, :176], camera[:176, :176], return_scales=True)[1] == 5
    assert ms_ssim(camera[:175, :175], camera[:175, :175], return_scales=True)[1] == 4
    assert ms_ssim(img[:11, :11], img[:11, :11], return_scales=True) == (1.0, 1)
    with pytest.raises(ValueError):
        ms_ssim(img[:10, :10], img[:10, :10])


def test_ms_ssim_negative_cs_clipped_to_zero(camera):
    # anti-correlated image: negative contrast-structure at the finest scale
    inverted = 1.0 - camera
    assert ms_ssim(inverted, camera) == 0.0


def test_ms_ssim_sigma_smooths_both(camera):
    rng = np.random.default_rng(8)
    noisy = camera + rng.normal(0, 0.1, camera.shape)
    plain = ms_ssim(noisy, camera)
    smoothed = ms_ssim(noisy, camera, sigma=1.0)
    assert smoothed > plain  # smoothing suppresses white noise
    expected = ms_ssim(
        ndimage.gaussian_filter(noisy, 1.0), ndimage.gaussian_filter(camera, 1.0), data_range=1.0
    )
    assert smoothed == pytest.approx(expected, abs=1e-12)
    assert ms_ssim(noisy, camera, sigma=0.0) == plain
    with pytest.raises(ValueError):
        ms_ssim(noisy, camera, sigma=-1.0)


# --------------------------------------------------------------------------- nrmse / pearson


def test_nrmse_complex():
    truth = _complex_object()
    assert nrmse_complex(truth * (1 + 0.1), truth) == pytest.approx(0.1, abs=1e-12)
    assert nrmse_complex(truth * np.exp(1j * np.pi), truth) == pytest.approx(2.0, abs=1e-12)
    assert nrmse_complex(truth, truth) == 0.0
    with pytest.raises(ValueError):
        nrmse_complex(truth, np.zeros_like(truth))


def test_pearson_values_and_constant_prediction(camera):
    assert pearson(2 * camera + 3, camera) == pytest.approx(1.0, abs=1e-12)
    assert pearson(-camera, camera) == pytest.approx(-1.0, abs=1e-12)
    assert pearson(np.full_like(camera, 0.7), camera) == 0.0
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(256, 256)), rng.normal(size=(256, 256))
    assert abs(pearson(a, b)) < 0.02
    x, y = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    assert pearson(x, y) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-12)


def test_real_metrics_reject_complex_and_nonfinite(camera):
    with pytest.raises(ValueError):
        mae(camera + 0j, camera)
    bad = camera.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        mse(bad, camera)


# --------------------------------------------------------------------------- score


KEYS = ("mae", "mse", "psnr", "psnr255", "ssim", "ms_ssim", "pearson")


def test_score_identical_is_perfect_and_json_safe():
    truth = _complex_object()
    res = score(truth, truth)
    assert set(res) == set(KEYS) | {"nrmse"}
    for k in KEYS:
        assert isinstance(res[k], tuple) and len(res[k]) == 2
        assert all(isinstance(v, float) for v in res[k])
    assert res["mae"] == (0.0, 0.0)
    assert res["mse"] == (0.0, 0.0)
    assert res["psnr"] == (PSNR_CAP_DB, PSNR_CAP_DB)
    assert res["ssim"] == pytest.approx((1.0, 1.0), abs=1e-12)
    assert res["ms_ssim"] == pytest.approx((1.0, 1.0), abs=1e-12)
    assert res["pearson"] == pytest.approx((1.0, 1.0), abs=1e-12)
    assert res["nrmse"] == 0.0
    json.dumps(res, allow_nan=False)


def test_score_components_match_individual_metrics():
    truth = _complex_object(seed=1)
    rng = np.random.default_rng(10)
    pred = truth + 0.05 * (rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape))
    res = score(pred, truth, ms_ssim_sigma_amplitude=1.0, ms_ssim_sigma_phase=0.0)
    at, ap = np.abs(truth), np.abs(pred)
    pt, pp = np.angle(truth), np.angle(pred)
    assert res["mae"] == pytest.approx((mae(ap, at), mae(pp, pt)))
    assert res["psnr"][1] == pytest.approx(
        10 * np.log10((pt.max() - pt.min()) ** 2 / mse(pp, pt)), abs=1e-9
    )
    assert res["ssim"] == pytest.approx((ssim(ap, at), ssim(pp, pt)))
    assert res["ms_ssim"] == pytest.approx((ms_ssim(ap, at, sigma=1.0), ms_ssim(pp, pt)))
    assert res["psnr255"] == pytest.approx((psnr255(ap, at), psnr255(pp, pt)))
    assert res["nrmse"] == pytest.approx(nrmse_complex(pred, truth))
    assert 0 < res["ms_ssim"][0] < 1 and 0 < res["ms_ssim"][1] < 1


def test_score_flat_prediction():
    truth = _complex_object(seed=2)
    flat = np.full_like(truth, np.abs(truth).mean())
    res = score(flat, truth)
    assert res["pearson"] == (0.0, 0.0)
    assert res["ssim"][1] < 0.1
    with pytest.raises(ValueError):
        score(truth, truth[:, :-1])
