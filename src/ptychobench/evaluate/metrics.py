"""Image-quality metrics for aligned reconstructions (SPEC §7.2).

Every function takes numpy arrays and returns Python floats (scikit-image style: prediction
first, ground truth second). Real-valued metrics expect finite, real arrays of identical shape;
:func:`nrmse_complex` and :func:`score` take complex images. Inputs are assumed to be already
aligned by the caller (sub-pixel registration, global phase offset / plane removal and amplitude
scale removed, SPEC §7.1).

Conventions
-----------
* ``data_range`` defaults to the **truth's** ``max − min`` everywhere (PSNR, SSIM, MS-SSIM); a
  zero data range raises ``ValueError``.
* PSNR of identical images is infinite; it is reported as the cap :data:`PSNR_CAP_DB` (100 dB),
  and any larger value is capped too, so every number is finite and JSON-safe.
* SSIM uses the Gaussian window of Wang et al. (2004): ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False`` (11×11 effective window, ``truncate=3.5``), ``K1=0.01``,
  ``K2=0.03``, mean over the SSIM map with the 5-pixel filter border excluded
  (:data:`SSIM_KWARGS`). MS-SSIM uses exactly the same window and constants.
* MS-SSIM is the standard 5-scale algorithm of Wang, Simoncelli & Bovik (2003) with the weights
  :data:`MS_SSIM_WEIGHTS`; see :func:`ms_ssim` for the treatment of small images and of
  negative contrast-structure terms.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from scipy import ndimage
from skimage.measure import block_reduce
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

__all__ = [
    "MS_SSIM_WEIGHTS",
    "PSNR_CAP_DB",
    "SSIM_KWARGS",
    "mae",
    "ms_ssim",
    "mse",
    "nrmse_complex",
    "pearson",
    "psnr",
    "psnr255",
    "score",
    "ssim",
]

#: Value reported by :func:`psnr` (and :func:`psnr255`) for identical images; larger values are
#: capped to it so that results stay finite and JSON-serialisable.
PSNR_CAP_DB: float = 100.0

#: Window settings used by :func:`ssim` and inside :func:`ms_ssim` (Wang et al. 2004).
SSIM_KWARGS: dict[str, Any] = {
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "K1": 0.01,
    "K2": 0.03,
}

#: Per-scale exponents of the 5-scale MS-SSIM (Wang, Simoncelli & Bovik 2003), finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_SSIM_TRUNCATE = 3.5  # scikit-image's truncate for gaussian_weights=True (11-tap at sigma 1.5)
_SSIM_WIN_SIZE = 2 * int(_SSIM_TRUNCATE * SSIM_KWARGS["sigma"] + 0.5) + 1  # 11
_PEAK_255 = 255.0
_DBL_EPSILON = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _real_pair(pred: np.ndarray, truth: np.ndarray, *, ndim: int | None = None):
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, found {p.shape} vs {t.shape}")
    if np.iscomplexobj(p) or np.iscomplexobj(t):
        raise ValueError("expected real arrays; take np.abs / np.angle of complex images first")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"expected {ndim}-D arrays, found shape {p.shape}")
    if p.size == 0:
        raise ValueError("empty arrays")
    p = p.astype(np.float64, copy=False)
    t = t.astype(np.float64, copy=False)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("pred and truth must be finite")
    return p, t


def _data_range(truth: np.ndarray, data_range: float | None) -> float:
    dr = float(np.max(truth) - np.min(truth)) if data_range is None else float(data_range)
    if not np.isfinite(dr) or dr <= 0.0:
        raise ValueError(
            f"data_range must be positive and finite, found {dr!r}"
            + (" (truth is constant)" if data_range is None else "")
        )
    return dr


# --------------------------------------------------------------------------------------------
# pixel-wise metrics
# --------------------------------------------------------------------------------------------


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error ``mean |pred − truth|``.

    Parameters
    ----------
    pred, truth : (H, W) float
        Real arrays of identical shape (any shape is accepted).

    Returns
    -------
    float
    """
    p, t = _real_pair(pred, truth)
    return float(np.mean(np.abs(p - t)))


def mse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error ``mean (pred − truth)²`` (``skimage.metrics.mean_squared_error``).

    Parameters
    ----------
    pred, truth : (H, W) float
        Real arrays of identical shape (any shape is accepted).

    Returns
    -------
    float
    """
    p, t = _real_pair(pred, truth)
    return float(mean_squared_error(t, p))


def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10·log10(data_range² / MSE)`` in dB.

    Parameters
    ----------
    pred, truth : (H, W) float
        Real arrays of identical shape.
    data_range : float, optional
        Peak-to-peak range of the signal; defaults to ``truth.max() − truth.min()``.

    Returns
    -------
    float
        PSNR in dB, capped at :data:`PSNR_CAP_DB` (100 dB). Identical images (MSE = 0) return
        exactly the cap.

    Raises
    ------
    ValueError
        If the data range is zero (constant truth and no ``data_range``), negative or not finite.
    """
    p, t = _real_pair(pred, truth)
    dr = _data_range(t, data_range)
    if np.array_equal(p, t):
        return PSNR_CAP_DB
    value = float(peak_signal_noise_ratio(t, p, data_range=dr))
    return min(value, PSNR_CAP_DB)


def psnr255(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR with a fixed peak of 255 — **the reference system's variant** (labelled ``psnr255``).

    The reference (PtychoPINN ``eval_reconstruction``) called OpenCV's ``PSNR`` with its default
    peak ``R = 255`` on O(1) data, without rescaling the images:
    ``20·log10(255 / (RMSE + ε))`` with ``ε`` = float64 machine epsilon, i.e. the data range is
    *not* used (typical values 60–80 dB; a phase RMSE of 0.17 rad gives ≈ 63.5 dB). The ``ε``
    guard of OpenCV is reproduced, so identical images give a large but finite value
    (≈ 361.2 dB); this variant is therefore **not** capped at :data:`PSNR_CAP_DB`, which would
    clip realistic values. Use :func:`psnr` for the data-range-based PSNR.

    Parameters
    ----------
    pred, truth : (H, W) float
        Real arrays of identical shape.

    Returns
    -------
    float
        PSNR in dB relative to a peak of 255.
    """
    p, t = _real_pair(pred, truth)
    rmse = float(np.sqrt(np.mean((p - t) ** 2)))
    return float(20.0 * np.log10(_PEAK_255 / (rmse + _DBL_EPSILON)))


def nrmse_complex(pred: np.ndarray, truth: np.ndarray) -> float:
    """Normalised root-mean-square error ``‖pred − truth‖₂ / ‖truth‖₂`` of complex images.

    Parameters
    ----------
    pred, truth : (H, W) complex
        Arrays of identical shape (real arrays are accepted and treated as complex).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        On shape mismatch, non-finite values or an all-zero truth.
    """
    p = np.asarray(pred).astype(np.complex128, copy=False)
    t = np.asarray(truth).astype(np.complex128, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, found {p.shape} vs {t.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("pred and truth must be finite")
    denom = float(np.linalg.norm(t.ravel()))
    if denom == 0.0:
        raise ValueError("truth is identically zero; nrmse is undefined")
    return float(np.linalg.norm((p - t).ravel()) / denom)


def pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation coefficient between the pixel values of two images.

    Useful to flag flat (collapsed) reconstructions, whose correlation with the truth is ≈ 0.

    Parameters
    ----------
    pred, truth : (H, W) float
        Real arrays of identical shape.

    Returns
    -------
    float
        Correlation in [−1, 1]. If either image is constant the coefficient is undefined; **0.0**
        is returned (no linear relation can be detected), never NaN.
    """
    p, t = _real_pair(pred, truth)
    if np.ptp(p) == 0.0 or np.ptp(t) == 0.0:
        return 0.0
    r = float(np.corrcoef(p.ravel(), t.ravel())[0, 1])
    return float(np.clip(r, -1.0, 1.0))


# --------------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# --------------------------------------------------------------------------------------------


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None, **kw: Any) -> float:
    """Structural similarity index (``skimage.metrics.structural_similarity``).

    Window settings (:data:`SSIM_KWARGS`): Gaussian weights of σ = 1.5 px truncated at 3.5 σ
    (11×11), population covariance, ``K1 = 0.01``, ``K2 = 0.03`` — the definition of Wang et al.
    (2004). The mean is taken over the SSIM map without the 5-pixel filter border (scikit-image).

    Parameters
    ----------
    pred, truth : (H, W) float
        Real 2-D arrays of identical shape, both sides ≥ 11.
    data_range : float, optional
        Defaults to ``truth.max() − truth.min()``.
    **kw
        Passed to ``structural_similarity``, overriding :data:`SSIM_KWARGS` (note that
        :func:`ms_ssim` always uses the defaults).

    Returns
    -------
    float
        Mean SSIM in [−1, 1]; 1.0 for identical images.
    """
    p, t = _real_pair(pred, truth, ndim=2)
    dr = _data_range(t, data_range)
    opts = {**SSIM_KWARGS, **kw}
    return float(structural_similarity(t, p, data_range=dr, **opts))


def _ssim_components(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term with the :data:`SSIM_KWARGS` window.

    Uses the same filtering as ``structural_similarity`` (``scipy.ndimage.gaussian_filter``,
    σ = 1.5, truncate 3.5, reflect mode, population covariance) and the same border crop, so the
    returned SSIM equals scikit-image's (scikit-image does not expose the cs term).
    """
    sigma = SSIM_KWARGS["sigma"]
    c1 = (SSIM_KWARGS["K1"] * data_range) ** 2
    c2 = (SSIM_KWARGS["K2"] * data_range) ** 2

    def filt(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, truncate=_SSIM_TRUNCATE, mode="reflect")

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    lum = (2 * ux * uy + c1) / (ux**2 + uy**2 + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    pad = (_SSIM_WIN_SIZE - 1) // 2
    inner = (slice(pad, x.shape[0] - pad), slice(pad, x.shape[1] - pad))
    ssim_mean = float(np.mean((lum * cs)[inner], dtype=np.float64))
    cs_mean = float(np.mean(cs[inner], dtype=np.float64))
    return ssim_mean, cs_mean


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2×2 average pooling; an odd last row/column is dropped."""
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    return block_reduce(a[:h, :w], block_size=(2, 2), func=np.mean)


def _n_scales(shape: tuple[int, ...]) -> int:
    side = min(shape)
    n = 0
    while n < len(MS_SSIM_WEIGHTS) and side >= _SSIM_WIN_SIZE:
        n += 1
        side //= 2
    return n


@overload
def ms_ssim(
    pred: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = ...,
    sigma: float | None = ...,
    *,
    return_scales: Literal[False] = ...,
) -> float: ...


@overload
def ms_ssim(
    pred: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = ...,
    sigma: float | None = ...,
    *,
    return_scales: Literal[True],
) -> tuple[float, int]: ...


def ms_ssim(
    pred: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = None,
    sigma: float | None = None,
    *,
    return_scales: bool = False,
) -> float | tuple[float, int]:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    ``MS-SSIM = [l_M·cs_M]^{w_M} · Π_{j<M} cs_j^{w_j}`` with the weights :data:`MS_SSIM_WEIGHTS`
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), finest scale first. At each scale the mean
    contrast-structure term ``cs_j`` is computed; at the coarsest scale the mean of the full SSIM
    map (luminance × cs). Scales are obtained by 2×2 average pooling (an odd last row/column is
    dropped). The SSIM window and constants are those of :func:`ssim` (:data:`SSIM_KWARGS`,
    11×11 Gaussian, σ = 1.5) and ``data_range`` is the same at every scale.

    Parameters
    ----------
    pred, truth : (H, W) float
        Real 2-D arrays of identical shape, smaller side ≥ 11.
    data_range : float, optional
        Defaults to ``truth.max() − truth.min()``.
    sigma : float, optional
        Gaussian pre-smoothing σ in pixels; ``None`` or 0 = none.
    return_scales : bool, default False
        Also return the number of scales used.

    Returns
    -------
    float or (float, int)
        MS-SSIM in [0, 1] (1.0 for identical images), and the number of scales if requested.

    Raises
    ------
    ValueError
        If the smaller side is < 11 px, on a zero data range or a negative ``sigma``.

    Notes
    -----
    * **Small images.** A scale is used only if its smaller side is ≥ 11 px (the window size):
      five scales need a smaller side ≥ 176 px. With all five scales the published weights are
      used as they are (they sum to 1.0001); with fewer scales ``M < 5`` the first ``M``
      weights are used, renormalised to sum to 1. ``return_scales=True`` reports ``M``.
    * **Negative terms.** A negative ``cs_j`` (or coarsest-scale SSIM) is clipped to 0 before the
      power (the product is then 0), so the result is always in [0, 1].
    * **Smoothing.** ``sigma > 0`` applies ``scipy.ndimage.gaussian_filter`` (σ in px, reflect
      mode) to **both** images first. The default ``data_range`` is taken from the *unsmoothed*
      truth, as for :func:`ssim`.
    """
    p, t = _real_pair(pred, truth, ndim=2)
    dr = _data_range(t, data_range)
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must be ≥ 0, found {sigma!r}")
    n_scales = _n_scales(t.shape)
    if n_scales == 0:
        raise ValueError(
            f"image too small for MS-SSIM: smaller side must be ≥ {_SSIM_WIN_SIZE}, "
            f"found shape {t.shape}"
        )
    if sigma:
        p = ndimage.gaussian_filter(p, sigma=float(sigma), mode="reflect")
        t = ndimage.gaussian_filter(t, sigma=float(sigma), mode="reflect")

    weights = np.asarray(MS_SSIM_WEIGHTS[:n_scales], dtype=np.float64)
    if n_scales < len(MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    value = 1.0
    for j in range(n_scales):
        ssim_j, cs_j = _ssim_components(p, t, dr)
        term = ssim_j if j == n_scales - 1 else cs_j
        value *= max(term, 0.0) ** weights[j]
        if j < n_scales - 1:
            p, t = _downsample2(p), _downsample2(t)
    value = float(min(value, 1.0))
    return (value, n_scales) if return_scales else value


# --------------------------------------------------------------------------------------------
# all metrics for one complex image
# --------------------------------------------------------------------------------------------


def score(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    ms_ssim_sigma_amplitude: float = 1.0,
    ms_ssim_sigma_phase: float = 0.0,
) -> dict[str, tuple[float, float] | float]:
    """All pixel metrics of an aligned complex reconstruction against the truth.

    Amplitude = ``np.abs``, phase = ``np.angle`` (no unwrapping). Data ranges are the truth's
    ``max − min`` for each of amplitude and phase. The inputs must already be aligned (global
    phase, phase plane and amplitude scale removed by the caller).

    Parameters
    ----------
    pred, truth : (H, W) complex
        Aligned reconstruction and ground truth, identical shape, smaller side ≥ 11.
    ms_ssim_sigma_amplitude : float, default 1.0
        Gaussian pre-smoothing σ (px) for the amplitude MS-SSIM.
    ms_ssim_sigma_phase : float, default 0.0
        Gaussian pre-smoothing σ (px) for the phase MS-SSIM (0 = none).

    Returns
    -------
    dict
        ``{"mae", "mse", "psnr", "psnr255", "ssim", "ms_ssim", "pearson"}`` →
        ``(amplitude, phase)`` tuples of floats, and ``"nrmse"`` → float (complex
        :func:`nrmse_complex`).

    Raises
    ------
    ValueError
        If the shapes differ, the images are not 2-D, or the truth's amplitude or phase is
        constant (zero data range).
    """
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"expected two 2-D arrays of the same shape, found {p.shape}, {t.shape}")
    parts = {
        "amplitude": (np.abs(p), np.abs(t), ms_ssim_sigma_amplitude),
        "phase": (np.angle(p), np.angle(t), ms_ssim_sigma_phase),
    }
    out: dict[str, list[float]] = {
        k: [] for k in ("mae", "mse", "psnr", "psnr255", "ssim", "ms_ssim", "pearson")
    }
    for pp, tt, sig in parts.values():
        out["mae"].append(mae(pp, tt))
        out["mse"].append(mse(pp, tt))
        out["psnr"].append(psnr(pp, tt))
        out["psnr255"].append(psnr255(pp, tt))
        out["ssim"].append(ssim(pp, tt))
        out["ms_ssim"].append(ms_ssim(pp, tt, sigma=sig))
        out["pearson"].append(pearson(pp, tt))
    result: dict[str, tuple[float, float] | float] = {k: (v[0], v[1]) for k, v in out.items()}
    result["nrmse"] = nrmse_complex(p, t)
    return result
