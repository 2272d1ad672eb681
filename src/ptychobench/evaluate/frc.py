"""Fourier ring correlation (SPEC §7.2).

:func:`frc` correlates two images ring by ring in Fourier space and reports resolution cut-offs
as spatial frequencies in **cycles per pixel** (Nyquist = 0.5), linearly interpolated between the
two rings that bracket the threshold crossing (:func:`cutoff`).

Procedure (:func:`frc`)
-----------------------
1. Both images (2-D, real or complex, identical shape) are cropped to a centred square whose side
   ``n`` is the smaller image side (start offsets ``(H − n)//2`` and ``(W − n)//2``).
2. Optionally (default) each image's window-weighted mean is subtracted, so that the window's own
   spectrum (mean × window) does not create spurious correlation in the lowest rings.
3. Both are multiplied by a separable 2-D apodisation window — Tukey (``alpha`` = tapered
   fraction, ``scipy.signal.windows.tukey``), Hann, or none — and Fourier transformed.
4. Rings: pixel ``(ky, kx)`` (integer frequencies of ``np.fft.fftfreq(n)·n``) belongs to ring
   ``round(√(kx² + ky²))``; rings ``0 … n//2`` are kept (up to Nyquist; the corners beyond it are
   dropped). Ring ``r`` has frequency ``r / n`` cycles/pixel.
5. ``FRC(r) = Re Σ F1·conj(F2) / √(Σ|F1|² · Σ|F2|²)`` over the ring; a ring with zero power in
   either image is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.signal import windows

__all__ = [
    "FRC_THRESHOLD_1OVER7",
    "FRC_THRESHOLD_50",
    "NYQUIST",
    "FRCResult",
    "apodization_window",
    "cutoff",
    "frc",
    "halfbit_threshold",
]

#: Fixed FRC threshold of ``frc50``.
FRC_THRESHOLD_50: float = 0.5
#: Fixed FRC threshold of ``frc1over7``.
FRC_THRESHOLD_1OVER7: float = 1.0 / 7.0
#: Nyquist frequency in cycles/pixel; the cut-off reported when a curve never crosses.
NYQUIST: float = 0.5

Apodization = Literal["tukey", "hann", "none"]


@dataclass(frozen=True)
class FRCResult:
    """Result of :func:`frc`.

    Attributes
    ----------
    frequency : (R,) float
        Ring frequency ``r / n`` in cycles/pixel, ``r = 0 … n//2`` (``R = n//2 + 1``).
    curve : (R,) float
        FRC value per ring (NaN for a ring with no power). Ring 0 (DC) is not meaningful after
        mean removal and is never used for the cut-offs.
    n_per_ring : (R,) int
        Number of Fourier pixels in each ring.
    halfbit : (R,) float
        Half-bit threshold curve :func:`halfbit_threshold` evaluated at ``n_per_ring``.
    frc50 : float
        Cut-off at the fixed threshold 0.5 (cycles/pixel).
    frc1over7 : float
        Cut-off at the fixed threshold 1/7 (cycles/pixel).
    frc_halfbit : float
        Cut-off at the half-bit threshold (cycles/pixel).
    """

    frequency: np.ndarray
    curve: np.ndarray
    n_per_ring: np.ndarray
    halfbit: np.ndarray
    frc50: float
    frc1over7: float
    frc_halfbit: float


def halfbit_threshold(n_per_ring: np.ndarray | float) -> np.ndarray:
    """Half-bit information threshold of van Heel & Schatz (2005).

    ``T(n_r) = (0.2071 + 1.9102/√n_r) / (1.2071 + 0.9102/√n_r)`` where ``n_r`` is the number of
    Fourier pixels in the ring (``T(1) = 1``; ``T → 0.2071/1.2071 ≈ 0.1716`` for large rings).

    Parameters
    ----------
    n_per_ring : (R,) int or float
        Pixel count per ring (must be > 0).

    Returns
    -------
    (R,) float
        Threshold per ring (a 0-d array for a scalar input).
    """
    n = np.asarray(n_per_ring, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("n_per_ring must be positive")
    s = np.sqrt(n)
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


def cutoff(
    frequency: np.ndarray,
    curve: np.ndarray,
    threshold: float | np.ndarray,
    *,
    start: int = 1,
    nyquist: float = NYQUIST,
) -> float:
    """First frequency at which an FRC curve falls below a threshold.

    Searches indices ``i ≥ start`` (default 1: ring 0, the DC term, is skipped) for the first
    finite point with ``curve[i] < threshold[i]``. The crossing is located by linear
    interpolation of ``d = curve − threshold`` between that point and the previous finite point
    ``j ≥ start`` (``d_j ≥ 0 > d_i``): ``f = f_j + d_j / (d_j − d_i) · (f_i − f_j)``; for a constant
    threshold this is ``f_j + (y_j − T)/(y_j − y_i)·(f_i − f_j)``.

    Parameters
    ----------
    frequency : (R,) float
        Frequency of each point (cycles/pixel).
    curve : (R,) float
        FRC values; non-finite points are ignored.
    threshold : float or (R,) float
        Constant threshold or a threshold per point (e.g. :func:`halfbit_threshold`).
    start : int, default 1
        First index searched.
    nyquist : float, default 0.5
        Value returned when the curve never falls below the threshold.

    Returns
    -------
    float
        The interpolated cut-off frequency. Special cases: the curve never crosses ⇒
        ``nyquist`` (0.5 cycles/pixel, i.e. resolution limited by sampling); the first searched
        finite point is already below the threshold (no bracketing point) ⇒ that point's
        frequency; no finite point at ``i ≥ start`` ⇒ NaN.
    """
    f = np.asarray(frequency, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if f.ndim != 1 or f.shape != y.shape:
        raise ValueError(
            f"frequency and curve must be 1-D of equal length, found {f.shape}, {y.shape}"
        )
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), y.shape)
    d = y - thr
    prev: int | None = None
    for i in range(max(start, 0), y.size):
        if not np.isfinite(d[i]):
            continue
        if d[i] < 0:
            if prev is None:
                return float(f[i])
            t = d[prev] / (d[prev] - d[i])
            return float(f[prev] + t * (f[i] - f[prev]))
        prev = i
    return float(nyquist) if prev is not None else float("nan")


def apodization_window(
    n: int, apodization: Apodization = "tukey", alpha: float = 0.25
) -> np.ndarray:
    """Separable 2-D apodisation window.

    Parameters
    ----------
    n : int
        Side of the square window.
    apodization : {"tukey", "hann", "none"}, default "tukey"
        ``"tukey"``: ``scipy.signal.windows.tukey(n, alpha)`` (``alpha`` = fraction of the side
        that is tapered; 0 = rectangular, 1 = Hann); ``"hann"``: ``scipy.signal.windows.hann(n)``;
        ``"none"``: ones.
    alpha : float, default 0.25
        Tukey shape parameter in [0, 1].

    Returns
    -------
    (n, n) float
        Outer product of the 1-D window with itself.
    """
    if apodization == "tukey":
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], found {alpha!r}")
        w = windows.tukey(n, alpha)
    elif apodization == "hann":
        w = windows.hann(n)
    elif apodization == "none":
        w = np.ones(n)
    else:
        raise ValueError(f"apodization must be 'tukey', 'hann' or 'none', found {apodization!r}")
    return np.outer(w, w)


def _centre_square(a: np.ndarray, n: int) -> np.ndarray:
    r0 = (a.shape[0] - n) // 2
    c0 = (a.shape[1] - n) // 2
    return a[r0 : r0 + n, c0 : c0 + n]


def frc(
    a: np.ndarray,
    b: np.ndarray,
    *,
    apodization: Apodization = "tukey",
    alpha: float = 0.25,
    remove_mean: bool = True,
) -> FRCResult:
    """Fourier ring correlation of two images and its resolution cut-offs.

    See the module docstring for the procedure (centred square crop to the smaller side,
    weighted-mean removal, apodisation, integer-radius rings ``0 … n//2``).

    Parameters
    ----------
    a, b : (H, W) float or complex
        Two images of identical shape (e.g. aligned amplitude, phase or complex reconstruction
        and truth). Non-square images are cropped to the centred ``n × n`` square,
        ``n = min(H, W)``.
    apodization : {"tukey", "hann", "none"}, default "tukey"
        Window applied to both images before the FFT (:func:`apodization_window`).
    alpha : float, default 0.25
        Tukey tapered fraction.
    remove_mean : bool, default True
        Subtract each image's window-weighted mean before apodisation.

    Returns
    -------
    FRCResult
        Curve, frequencies (cycles/pixel), ring counts, half-bit curve and the cut-offs
        ``frc50``, ``frc1over7``, ``frc_halfbit`` (:func:`cutoff`; ring 0 skipped; 0.5 when the
        curve never crosses).

    Raises
    ------
    ValueError
        On shape mismatch, non-2-D or non-finite input, or a smaller side < 4.
    """
    x = np.asarray(a)
    y = np.asarray(b)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"expected two 2-D arrays of the same shape, found {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("images must be finite")
    n = min(x.shape)
    if n < 4:
        raise ValueError(f"images too small for FRC, found shape {x.shape}")
    dtype = np.complex128 if (np.iscomplexobj(x) or np.iscomplexobj(y)) else np.float64
    x = _centre_square(x, n).astype(dtype)
    y = _centre_square(y, n).astype(dtype)

    w = apodization_window(n, apodization, alpha)
    if remove_mean:
        wsum = w.sum()
        x = x - (w * x).sum() / wsum
        y = y - (w * y).sum() / wsum
    f1 = np.fft.fft2(w * x)
    f2 = np.fft.fft2(w * y)

    k = np.fft.fftfreq(n) * n
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64)
    n_rings = n // 2 + 1
    keep = ring < n_rings
    idx = ring[keep]
    cross = np.bincount(idx, weights=np.real(f1 * np.conj(f2))[keep], minlength=n_rings)
    p1 = np.bincount(idx, weights=(np.abs(f1) ** 2)[keep], minlength=n_rings)
    p2 = np.bincount(idx, weights=(np.abs(f2) ** 2)[keep], minlength=n_rings)
    counts = np.bincount(idx, minlength=n_rings)

    denom = np.sqrt(p1 * p2)
    curve = np.full(n_rings, np.nan)
    ok = denom > 0
    curve[ok] = cross[ok] / denom[ok]
    frequency = np.arange(n_rings) / n
    hb = halfbit_threshold(counts)
    return FRCResult(
        frequency=frequency,
        curve=curve,
        n_per_ring=counts,
        halfbit=hb,
        frc50=cutoff(frequency, curve, FRC_THRESHOLD_50),
        frc1over7=cutoff(frequency, curve, FRC_THRESHOLD_1OVER7),
        frc_halfbit=cutoff(frequency, curve, hb),
    )
