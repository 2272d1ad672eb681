"""Alignment of reconstructions to the ground truth before scoring (SPEC §7.1).

Every arm goes through exactly the same steps (:func:`align_arms`):

1. **Scanned region** (:func:`scanned_region`): the bounding box of the scan coordinates ± M/2
   (M = stitching crop size), shrunk by ``border`` pixels, clipped to the image. Every arm and the
   truth are restricted to it.
2. **Registration** (:func:`register`, :func:`shift_image`, :func:`common_crop`): sub-pixel phase
   cross-correlation (scikit-image) of each arm against the truth, on the **complex** image by
   default; the arm is shifted by the result (Fourier shift), and every arm is cropped to the *same*
   valid overlap, so all arms are scored on identical pixels. A registration beyond
   ``max_shift`` is not applied (noted), so one garbage arm cannot shrink everyone's crop.
3. **Phase** (:func:`remove_global_phase`, :func:`remove_phase_plane`): the global phase offset
   (phase of Σ pred·conj(truth)) is removed, then optionally a weighted least-squares phase plane
   (``"plane"``, default) or the weighted mean phase difference (``"mean"``).
4. **Amplitude** (:func:`scale_amplitude`): the amplitude is rescaled by the least-squares scalar
   against the truth's amplitude.

Sign conventions
----------------
* Shifts are ``(dy, dx)`` = (row, column) in pixels. :func:`shift_image` follows
  ``scipy.ndimage.fourier_shift``: ``shift_image(img, s)[y, x] = img[y - dy, x - dx]``, i.e. a
  positive shift moves content down / right.
* :func:`register` returns the shift to **apply to the prediction** to align it with the truth
  (scikit-image's convention for ``phase_cross_correlation(reference=truth, moving=pred)``, used as
  is). Hence if ``pred = shift_image(truth, d)`` then ``register(pred, truth) == -d`` and
  ``shift_image(pred, register(pred, truth)) ≈ truth``. :attr:`AlignmentResult.offsets` reports
  these applied shifts.
* Phase planes are ``a·x + b·y + c`` with ``x`` = column index and ``y`` = row index (pixels,
  origin at element ``[0, 0]`` of the array passed), fitted to angle(pred·conj(truth)) and removed
  by multiplying ``pred`` with ``exp(-i·plane)``.

Registration choices (measured on a 160 px crop of a blurred camera/astronaut complex field
moved by (3.3, -1.7) px, phase ramp 0.01 / -0.02 rad/px, complex noise σ = 0.3 or 1.0 on
amplitudes 0.3..1, 10 seeds; rms error of the recovered shift):

* ``normalization=None`` (plain cross-correlation, the matched filter for white noise) beats
  scikit-image's default ``"phase"`` (whitened, every frequency weighted equally, so
  noise-dominated high frequencies count as much as the signal): σ = 0.3: 0.07 px vs 0.60 px;
  σ = 1.0: 0.24 px vs 1.02 px (non-periodic crop; periodic: 0.05 vs 0.73, 0.17 vs 1.08).
  Both are exact without noise. :func:`register` defaults to ``None``; pinned by
  ``tests/test_align.py::test_normalization_choice``.
* A bare single ``phase_cross_correlation`` on a non-periodic crop is pulled toward zero shift by
  the image edges (~1 px error even without noise); mean removal + a Tukey(0.25) taper +
  iterative refinement (see :func:`register`) bring it to < 0.01 px without noise.
* Correlating the complex image beats the amplitude (σ = 0.3: 0.07 vs 0.2 px), provided the
  relative phase ramp is removed first (a 0.01 rad/px ramp otherwise biases it by ~0.5 px).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.ndimage import fourier_shift
from scipy.signal.windows import tukey
from skimage.registration import phase_cross_correlation

__all__ = [
    "AlignmentResult",
    "align_arms",
    "common_crop",
    "register",
    "remove_global_phase",
    "remove_phase_plane",
    "scale_amplitude",
    "scanned_region",
    "shift_image",
    "valid_margin",
]

PHASE_MODES = ("plane", "mean", "none")
REGISTER_ON = ("complex", "amplitude", "phase")
REGISTRATION_MODES = ("all", "none")
NORMALIZATIONS = (None, "phase")

# tolerance for floor/ceil of coordinates that are integers up to float rounding
_EPS = 1e-9
# a refinement step larger than this (px) is rejected as a noise peak (after the first windowed
# estimate the residual is a fraction of a pixel)
_MAX_REFINE_STEP = 1.5


# --------------------------------------------------------------------------------------------
# region and crops
# --------------------------------------------------------------------------------------------


def scanned_region(
    coords: np.ndarray, shape: tuple[int, ...], crop_size_M: float, border: int = 0
) -> tuple[slice, slice]:
    """Bounding box of the region covered by the stitched central crops.

    Each scan position ``c`` contributes the central M×M crop of its patch, covering object pixels
    ``[c - M/2, c + M/2)`` (with bilinear placement a sub-pixel position touches
    ``floor(c - M/2) … ceil(c + M/2) - 1``). The region is therefore, per axis,
    ``[floor(min - M/2) + border, ceil(max + M/2) - border)`` clipped to ``[0, size)``.

    Parameters
    ----------
    coords : (n, 2) array_like
        Scan coordinates ordered ``(x, y)`` = (column, row) in object pixels.
    shape : tuple of int
        ``(H, W)`` of the object image (extra leading entries are not allowed).
    crop_size_M : float
        Side M of the central crop used in stitching (> 0).
    border : int, optional
        Pixels removed from every side of the bounding box (>= 0).

    Returns
    -------
    (slice, slice)
        ``(rows, cols)`` slices into the ``(H, W)`` image.

    Raises
    ------
    ValueError
        Bad coordinates / parameters, or an empty region (the message gives the numbers).
    """
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] == 0:
        raise ValueError(f"coords must have shape (n, 2) with n >= 1, got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("coords contain non-finite values")
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {tuple(shape)}")
    if not (crop_size_M > 0):
        raise ValueError(f"crop_size_M must be > 0, got {crop_size_M}")
    if border < 0 or int(border) != border:
        raise ValueError(f"border must be a non-negative integer, got {border}")
    half = crop_size_M / 2.0
    slices = []
    # coords are (x, y); image axes are (y, x)
    for axis, size in zip((1, 0), shape, strict=True):
        lo = math.floor(c[:, axis].min() - half + _EPS) + int(border)
        hi = math.ceil(c[:, axis].max() + half - _EPS) - int(border)
        start, stop = max(lo, 0), min(hi, int(size))
        if stop <= start:
            name = "y (rows)" if axis == 1 else "x (cols)"
            raise ValueError(
                f"empty scanned region along {name}: coords {c[:, axis].min():.3f}..."
                f"{c[:, axis].max():.3f} ± M/2 = {half:g}, border {border} -> [{lo}, {hi}), "
                f"clipped to image size {size} -> [{start}, {stop})"
            )
        slices.append(slice(start, stop))
    return slices[0], slices[1]


def valid_margin(shift: float) -> int:
    """Pixels at each end of an axis invalidated by a Fourier shift of ``shift`` px.

    ``0`` for an exactly zero shift (no shift is applied), else ``ceil(|shift|) + 1`` (content
    wrapped in from / pushed toward the border plus one pixel of interpolation ringing).
    """
    s = abs(float(shift))
    if not math.isfinite(s):
        raise ValueError(f"non-finite shift {shift}")
    return 0 if s == 0.0 else math.ceil(s) + 1


def common_crop(
    shape: tuple[int, int], shifts: list[tuple[float, float]] | tuple[tuple[float, float], ...]
) -> tuple[slice, slice]:
    """The crop valid for every arm's shift (same crop for all arms).

    Per axis the margin removed from *both* ends is the largest :func:`valid_margin` over all
    shifts, so the crop is centred and identical for every arm.

    Parameters
    ----------
    shape : (H, W)
        Shape of the (region-restricted) images that were shifted.
    shifts : sequence of (dy, dx)
        Shifts applied to the arms (empty ⇒ the whole image).

    Returns
    -------
    (slice, slice)
        ``(rows, cols)``.

    Raises
    ------
    ValueError
        If the shifts leave no valid pixels.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {tuple(shape)}")
    my = max((valid_margin(s[0]) for s in shifts), default=0)
    mx = max((valid_margin(s[1]) for s in shifts), default=0)
    H, W = (int(v) for v in shape)
    if H - 2 * my <= 0 or W - 2 * mx <= 0:
        raise ValueError(
            f"shifts {list(shifts)} leave no valid overlap in a {H}x{W} image "
            f"(margins dy={my}, dx={mx} px per side)"
        )
    return slice(my, H - my), slice(mx, W - mx)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------


def _check_2d_finite(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        n_bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {n_bad} non-finite values")
    return a


def _registration_image(img: np.ndarray, on: str) -> np.ndarray:
    if on == "complex":
        return img.astype(np.complex128, copy=False)
    if on == "amplitude":
        return np.abs(img).astype(np.float64, copy=False)
    if on == "phase":
        return np.angle(img).astype(np.float64, copy=False)
    raise ValueError(f"on must be one of {REGISTER_ON}, got {on!r}")


def _taper(img: np.ndarray, alpha: float | None) -> np.ndarray:
    """Subtract the mean and apply a separable Tukey window (``alpha=None``: mean only)."""
    out = img - img.mean()
    if alpha is None or alpha <= 0:
        return out
    wy = tukey(img.shape[0], alpha)
    wx = tukey(img.shape[1], alpha)
    return out * (wy[:, None] * wx[None, :])


def _pcc(
    t: np.ndarray,
    p: np.ndarray,
    on: str,
    upsample_factor: int,
    normalization: str | None,
    window: float | None,
) -> np.ndarray:
    with warnings.catch_warnings():
        # scikit-image warns when an image is zero after mean removal (constant input); the
        # correlation is then flat and the shift 0, which is the right answer
        warnings.filterwarnings("ignore", message="Could not determine RMS error")
        shift, _, _ = phase_cross_correlation(
            _taper(_registration_image(t, on), window),
            _taper(_registration_image(p, on), window),
            upsample_factor=int(upsample_factor),
            space="real",
            normalization=normalization,
        )
    return np.asarray(shift, dtype=np.float64)


def _deramp(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``p`` with its phase plane relative to ``t`` removed (unchanged if the fit fails)."""
    try:
        return remove_phase_plane(p, t, mode="plane")[0]
    except ValueError:
        return p


def register(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    upsample_factor: int = 100,
    space: Literal["real", "fourier"] = "real",
    on: Literal["complex", "amplitude", "phase"] = "complex",
    normalization: Literal["phase"] | None = None,
    window: float | None = 0.25,
    max_iter: int = 4,
    deramp: bool = True,
) -> tuple[float, float]:
    """Sub-pixel shift that aligns ``pred`` to ``truth``.

    Built on ``skimage.registration.phase_cross_correlation(reference_image=truth,
    moving_image=pred)``, whose result is the shift that registers the moving image with the
    reference when applied with ``scipy.ndimage.fourier_shift``; that convention is kept, so
    ``shift_image(pred, register(pred, truth)) ≈ truth``. If ``pred`` is ``truth`` moved by
    ``+d`` (content down/right), the result is ``-d``.

    Reconstructions are cropped, non-periodic images, so a bare cross-correlation is biased
    toward zero shift by the image edges (measured: ~1 px for a 3.3 px shift of a 160 px crop),
    and on complex images by relative phase ramps. With ``space="real"`` the estimate is
    therefore refined (all steps identical for every arm):

    1. for ``on="complex"`` and ``deramp``: the phase plane of ``pred`` relative to ``truth`` is
       removed (:func:`remove_phase_plane`);
    2. both images (see ``on``) have their mean removed and are tapered by a separable Tukey
       window (``window`` = taper fraction α) and correlated -> first estimate;
    3. up to ``max_iter`` times: ``pred`` is shifted by the current estimate
       (:func:`shift_image`), both images are cropped to the valid overlap
       (:func:`common_crop`), the phase plane is removed again (complex, ``deramp``), and the
       residual shift is added; it stops when the residual is below 1/upsample_factor, and a
       residual above 1.5 px is rejected as a noise peak (the previous estimate is kept).

    A constant ``pred`` (e.g. the ``Flat`` floor arm) has no defined translation: ``(0.0, 0.0)``.
    With ``space="fourier"`` the inputs are already FFTs: one plain scikit-image call, no window,
    plane removal or refinement.

    Parameters
    ----------
    pred, truth : (H, W) ndarray
        Complex (or real) images of equal shape.
    upsample_factor : int, optional
        Precision 1/upsample_factor px (upsampled-DFT refinement).
    space : {"real", "fourier"}, optional
        ``"fourier"``: inputs are FFTs (plain call, see above).
    on : {"complex", "amplitude", "phase"}, optional
        What is correlated: the complex image (default), ``|img|`` or ``angle(img)``.
    normalization : {None, "phase"}, optional
        Cross-power normalisation. ``None`` (plain cross-correlation, default) was measured to
        register noisy images far more reliably than ``"phase"`` (see the module docstring).
    window : float or None, optional
        Tukey taper fraction α in [0, 1] (default 0.25; 1 = Hann); ``None`` or 0 disables it.
    max_iter : int, optional
        Maximum number of refinement iterations after the first estimate (0 = single shot).
    deramp : bool, optional
        Remove the relative phase plane before correlating (``on="complex"`` only).

    Returns
    -------
    (dy, dx) : tuple of float
        Shift to apply to ``pred`` (rows, columns).

    Raises
    ------
    ValueError
        Non-2-D, mismatched or non-finite inputs; invalid ``on`` / ``normalization`` / ``space`` /
        ``window``; a non-finite result.
    """
    p = _check_2d_finite(pred, "pred")
    t = _check_2d_finite(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if on not in REGISTER_ON:
        raise ValueError(f"on must be one of {REGISTER_ON}, got {on!r}")
    if space not in ("real", "fourier"):
        raise ValueError(f"space must be 'real' or 'fourier', got {space!r}")
    if window is not None and not (0.0 <= window <= 1.0):
        raise ValueError(f"window (Tukey alpha) must be in [0, 1] or None, got {window}")
    if space == "fourier":
        shift, _, _ = phase_cross_correlation(
            t,
            p,
            upsample_factor=int(upsample_factor),
            space="fourier",
            normalization=normalization,
        )
        total = np.asarray(shift, dtype=np.float64)
    elif p.size == 0 or np.all(p == p.flat[0]):
        total = np.zeros(2)
    else:
        use_plane = on == "complex" and deramp
        total = _pcc(
            t, _deramp(p, t) if use_plane else p, on, upsample_factor, normalization, window
        )
        tol = 1.0 / float(upsample_factor)
        for _ in range(int(max_iter)):
            try:
                crop = common_crop(t.shape, [(float(total[0]), float(total[1]))])
            except ValueError:
                break  # the estimate leaves no overlap: nothing to refine on
            ps = shift_image(p, (float(total[0]), float(total[1])))[crop]
            tc = t[crop]
            step = _pcc(
                tc, _deramp(ps, tc) if use_plane else ps, on, upsample_factor, normalization, window
            )
            if np.max(np.abs(step)) > _MAX_REFINE_STEP:
                break  # a residual this large is a noise peak, not a refinement
            total = total + step
            if np.max(np.abs(step)) < tol:
                break
    dy, dx = (float(v) for v in total)
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"registration produced a non-finite shift ({dy}, {dx})")
    return dy + 0.0, dx + 0.0  # + 0.0 turns -0.0 into 0.0


def shift_image(img: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    """Sub-pixel Fourier shift: ``out[y, x] = img[y - dy, x - dx]``.

    The image is first padded by symmetric reflection (``ceil(|shift|) + 1 + 16`` px per side) so
    that the periodic wrap of the FFT happens far from the image and the jump at the wrap
    boundary does not ring into the interior; it is then shifted with
    ``scipy.ndimage.fourier_shift`` and cropped back. Exact for integer shifts and for
    band-limited content; the outer :func:`valid_margin` = ``ceil(|shift|) + 1`` px on each side
    of each axis hold reflected (not measured) content and must be cropped by the caller
    (:func:`common_crop`). A zero shift returns an unchanged copy.

    Parameters
    ----------
    img : (H, W) ndarray, real or complex
    shift_yx : (dy, dx)
        Shift in pixels (rows, columns).

    Returns
    -------
    (H, W) ndarray
        Complex input stays complex (complex128); real input gives a real float64 result.
    """
    a = np.asarray(img)
    if a.ndim != 2:
        raise ValueError(f"img must be 2-D (H, W), got shape {a.shape}")
    dy, dx = (float(v) for v in shift_yx)
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"non-finite shift ({dy}, {dx})")
    if dy == 0.0 and dx == 0.0:
        return a.copy()
    py = valid_margin(dy) + 16 if dy != 0.0 else 0
    px = valid_margin(dx) + 16 if dx != 0.0 else 0
    work = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    padded = np.pad(work, ((py, py), (px, px)), mode="symmetric")
    out = np.fft.ifft2(fourier_shift(np.fft.fft2(padded), (dy, dx)))
    out = out[py : py + a.shape[0], px : px + a.shape[1]]
    return out if np.iscomplexobj(a) else out.real


# --------------------------------------------------------------------------------------------
# phase and amplitude
# --------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _check_2d_finite(pred, "pred")
    t = _check_2d_finite(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    return p.astype(np.complex128, copy=False), t.astype(np.complex128, copy=False)


def remove_global_phase(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Remove the global phase offset: ``pred · exp(-i·angle(Σ pred·conj(truth)))``.

    Parameters
    ----------
    pred, truth : (H, W) complex ndarray

    Returns
    -------
    (H, W) complex128 ndarray
        ``pred`` unchanged (copy) when Σ pred·conj(truth) is zero.
    """
    p, t = _check_pair(pred, truth)
    return p * np.exp(-1j * np.angle(np.vdot(t, p)))  # vdot(t, p) = Σ conj(t)·p


def _coarse_slopes(z: np.ndarray, pad: int = 4) -> tuple[float, float]:
    """Slopes (a, b) in rad/px of the plane maximising ``|Σ z·exp(-i(a·x + b·y))|``.

    Peak of the ``pad``-times zero-padded 2-D FFT, i.e. to within ``π/(pad·size)`` rad/px. This is
    a coherent sum over all pixels, so it is robust to noise and to ramps that wrap.
    """
    H, W = z.shape
    spec = np.abs(np.fft.fft2(z, s=(pad * H, pad * W)))
    ky, kx = np.unravel_index(int(np.argmax(spec)), spec.shape)
    a = 2 * np.pi * float(np.fft.fftfreq(pad * W)[kx]) if W > 1 else 0.0
    b = 2 * np.pi * float(np.fft.fftfreq(pad * H)[ky]) if H > 1 else 0.0
    return a, b


def remove_phase_plane(
    pred: np.ndarray,
    truth: np.ndarray,
    mode: Literal["plane", "mean", "none"] = "plane",
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Remove the global phase offset and then a phase plane (or the mean phase difference).

    Works on the wrapped phase difference ``φ = angle(pred·conj(truth))``:

    * ``"none"``: only the global phase offset ``c0 = angle(Σ pred·conj(truth))``.
    * ``"mean"``: ``c0`` plus the weighted mean of the remaining wrapped difference.
    * ``"plane"``: a plane ``a·x + b·y + c`` fitted by weighted least squares. To be robust to
      ramps that wrap across the image (and to noise), the slopes are first found to within
      π/(4·size) rad/px as the peak of the 4× zero-padded FFT of ``weights·exp(iφ)`` (the plane
      maximising the coherent sum), that coarse plane and the global offset are removed, and the
      remaining small wrapped difference is fitted by weighted least squares (twice, re-wrapping
      in between); the coefficients are the sums.

    Parameters
    ----------
    pred, truth : (H, W) complex ndarray
    mode : {"plane", "mean", "none"}
    weights : (H, W) ndarray of non-negative float, optional
        Least-squares weights; default ``|truth|``.

    Returns
    -------
    pred_aligned : (H, W) complex128 ndarray
        ``pred · exp(-i·(a·x + b·y + c))``.
    coeffs : (a, b, c)
        Slopes along x (columns) and y (rows) in rad/px and the constant in rad (x, y = pixel
        indices of the array passed); ``c`` in (-π, π]. ``a = b = 0`` unless ``mode == "plane"``.

    Raises
    ------
    ValueError
        Invalid ``mode`` (the message lists the choices), bad shapes, non-finite input or weights
        that are all zero.
    """
    if mode not in PHASE_MODES:
        raise ValueError(f"phase mode must be one of {PHASE_MODES}, got {mode!r}")
    p, t = _check_pair(pred, truth)
    if weights is None:
        w = np.abs(t)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != t.shape:
            raise ValueError(f"weights shape {w.shape} != truth shape {t.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
    d = p * np.conj(t)
    if mode != "none" and not np.any(w * np.abs(d) > 0):
        raise ValueError("phase fit impossible: weights·|pred·conj(truth)| is zero everywhere")
    H, W = t.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    a = b = 0.0
    if mode == "plane":
        u = np.divide(d, np.abs(d), out=np.zeros_like(d), where=np.abs(d) > 0)  # unit phasors
        a, b = _coarse_slopes(w * u)
    c = float(np.angle(np.sum(d * np.exp(-1j * (a * xx + b * yy)))))  # global offset
    if mode == "mean":
        r = np.angle(d * np.exp(-1j * c))  # wrapped difference, centred on 0
        c += float(np.sum(w * r) / np.sum(w))
    elif mode == "plane":
        sw = np.sqrt(w).ravel()
        A = np.stack([xx.ravel(), yy.ravel(), np.ones(H * W)], axis=1) * sw[:, None]
        for _ in range(2):  # second pass: re-wrap around the refined plane
            r = np.angle(d * np.exp(-1j * (a * xx + b * yy + c)))  # small residual
            sol, *_ = np.linalg.lstsq(A, r.ravel() * sw, rcond=None)
            a, b, c = a + float(sol[0]), b + float(sol[1]), c + float(sol[2])
    c = float(np.angle(np.exp(1j * c)))  # report the constant in (-π, π]
    plane = a * xx + b * yy + c
    return p * np.exp(-1j * plane), (a, b, c)


def scale_amplitude(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """Rescale the amplitude of ``pred`` by the least-squares scalar against ``|truth|``.

    ``s = Σ|pred|·|truth| / Σ|pred|²`` minimises ``‖s·|pred| − |truth|‖²``; the phase of ``pred``
    is kept (``s >= 0`` multiplies the complex image).

    Parameters
    ----------
    pred, truth : (H, W) complex ndarray

    Returns
    -------
    pred_scaled : (H, W) complex128 ndarray
    scale : float

    Raises
    ------
    ValueError
        ``"all-zero reconstruction"`` when ``pred`` is zero everywhere; bad shapes or non-finite
        input.
    """
    p, t = _check_pair(pred, truth)
    ap = np.abs(p)
    den = float(np.sum(ap * ap))
    if den == 0.0:
        raise ValueError("all-zero reconstruction")
    s = float(np.sum(ap * np.abs(t)) / den)
    return p * s, s


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class AlignmentResult:
    """Output of :func:`align_arms`.

    Attributes
    ----------
    aligned : dict[str, (h, w) complex128 ndarray]
        Aligned images per successful arm, on the common crop.
    truth : (h, w) complex128 ndarray
        The truth on the same crop (``truth_full[object_slices]``).
    offsets : dict[str, (dy, dx)]
        Registration shifts applied to each registered arm (see the module's sign conventions);
        ``(0.0, 0.0)`` when registration is off. Arms that failed before registration are absent.
    region : (slice, slice)
        Scanned region in object pixels.
    crop : (slice, slice)
        Common valid crop, relative to the region.
    phase_coeffs : dict[str, (a, b, c)]
        Phase plane removed per arm (coordinates relative to the crop).
    amplitude_scale : dict[str, float]
        Least-squares amplitude scale per arm.
    settings : dict
        The alignment settings (JSON-serialisable).
    errors : dict[str, str]
        Failure message per failed arm (those arms are absent from ``aligned``).
    notes : dict[str, str]
        Non-fatal remarks per arm (e.g. a registration rejected by ``max_shift``).
    """

    aligned: dict[str, np.ndarray]
    truth: np.ndarray
    offsets: dict[str, tuple[float, float]]
    region: tuple[slice, slice]
    crop: tuple[slice, slice]
    phase_coeffs: dict[str, tuple[float, float, float]]
    amplitude_scale: dict[str, float]
    settings: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def object_slices(self) -> tuple[slice, slice]:
        """The scored pixels as slices of the full object image (region ∘ crop)."""
        return tuple(  # type: ignore[return-value]
            slice(r.start + c.start, r.start + c.stop)
            for r, c in zip(self.region, self.crop, strict=True)
        )


def _fmt_exc(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def align_arms(
    arms: dict[str, np.ndarray],
    truth: np.ndarray,
    coords: np.ndarray,
    *,
    crop_size_M: float,
    border: int = 2,
    registration: Literal["all", "none"] = "all",
    phase_align: Literal["plane", "mean", "none"] = "plane",
    upsample_factor: int = 100,
    register_on: Literal["complex", "amplitude", "phase"] = "complex",
    max_shift: float | None = 16.0,
) -> AlignmentResult:
    """Align every arm to the truth with identical steps (SPEC §7.1).

    1. Restrict every arm and the truth to :func:`scanned_region` ``(coords, truth.shape,
       crop_size_M, border)``.
    2. If ``registration == "all"``: :func:`register` each arm to the truth on the region and
       :func:`shift_image` it by the result; crop the :func:`common_crop` of all successful arms'
       shifts — the same pixels for every arm. A registration larger than ``max_shift`` px on
       either axis (a reconstruction unrelated to the truth, or a frame bug) is not applied: the
       arm keeps offset ``(0, 0)`` and ``notes`` says why, so one garbage arm cannot shrink the
       crop for all the others.
    3. :func:`remove_phase_plane` (global phase, then ``phase_align``) against the cropped truth
       with weights ``|truth|``.
    4. :func:`scale_amplitude`.

    An arm that fails (wrong shape, non-finite values, all zeros, …) is recorded in
    ``errors`` and left out of ``aligned``; the other arms are unaffected.

    Parameters
    ----------
    arms : dict[str, (H, W) complex ndarray]
        Reconstructions in the object's pixel frame.
    truth : (H, W) complex ndarray
        Ground-truth object.
    coords : (n, 2) ndarray
        Scan coordinates ``(x, y)`` in object pixels.
    crop_size_M : float
        Stitching crop size M.
    border : int, optional
        Pixels removed from each side of the scanned bounding box (default 2).
    registration : {"all", "none"}
    phase_align : {"plane", "mean", "none"}
    upsample_factor : int
        Registration precision 1/upsample_factor px.
    register_on : {"complex", "amplitude", "phase"}
    max_shift : float or None, optional
        Largest registration accepted, in px per axis (default 16; ``None``: no limit).

    Returns
    -------
    AlignmentResult

    Raises
    ------
    ValueError
        Invalid settings, truth or coordinates (problems with one arm never raise).
    """
    if registration not in REGISTRATION_MODES:
        raise ValueError(f"registration must be one of {REGISTRATION_MODES}, got {registration!r}")
    if phase_align not in PHASE_MODES:
        raise ValueError(f"phase_align must be one of {PHASE_MODES}, got {phase_align!r}")
    if register_on not in REGISTER_ON:
        raise ValueError(f"register_on must be one of {REGISTER_ON}, got {register_on!r}")
    if max_shift is not None and not (max_shift >= 0):
        raise ValueError(f"max_shift must be >= 0 or None, got {max_shift}")
    t_full = _check_2d_finite(truth, "truth").astype(np.complex128, copy=False)
    region = scanned_region(coords, t_full.shape, crop_size_M, border)
    t_reg = t_full[region]

    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    offsets: dict[str, tuple[float, float]] = {}
    restricted: dict[str, np.ndarray] = {}
    for name, img in arms.items():
        try:
            a = np.asarray(img)
            if a.shape != t_full.shape:
                raise ValueError(
                    f"shape mismatch: expected {t_full.shape} (truth), found {a.shape}"
                )
            a = _check_2d_finite(a, "reconstruction").astype(np.complex128, copy=False)[region]
            if not np.any(a):
                raise ValueError("all-zero reconstruction (in the scanned region)")
            if registration == "all":
                dy, dx = register(a, t_reg, upsample_factor=upsample_factor, on=register_on)
                if max_shift is not None and max(abs(dy), abs(dx)) > max_shift:
                    notes[name] = (
                        f"registration ({dy:.2f}, {dx:.2f}) px exceeds max_shift={max_shift:g} px;"
                        " not applied"
                    )
                    dy, dx = 0.0, 0.0
                offsets[name] = (dy, dx)
            else:
                offsets[name] = (0.0, 0.0)
            restricted[name] = a
        except Exception as exc:  # one arm's failure must not break the others
            errors[name] = _fmt_exc(exc)
            offsets.pop(name, None)
    for name in list(restricted):
        try:  # a shift (max_shift=None) that alone leaves no overlap fails that arm only
            common_crop(t_reg.shape, [offsets[name]])
        except ValueError as exc:
            errors[name] = _fmt_exc(exc)
            del restricted[name]

    crop = common_crop(t_reg.shape, [offsets[n] for n in restricted])
    t_crop = t_reg[crop]

    aligned: dict[str, np.ndarray] = {}
    phase_coeffs: dict[str, tuple[float, float, float]] = {}
    amplitude_scale: dict[str, float] = {}
    for name, a in restricted.items():
        try:
            shifted = shift_image(a, offsets[name])[crop]
            phased, coeffs = remove_phase_plane(shifted, t_crop, mode=phase_align)
            scaled, s = scale_amplitude(phased, t_crop)
            aligned[name], phase_coeffs[name], amplitude_scale[name] = scaled, coeffs, s
        except Exception as exc:  # recorded per arm, as above
            errors[name] = _fmt_exc(exc)

    def _b(s: slice) -> list[int]:
        return [int(s.start), int(s.stop)]

    settings: dict[str, Any] = {
        "crop_size_M": float(crop_size_M),
        "border": int(border),
        "registration": registration,
        "register_on": register_on,
        "registration_normalization": None,
        "upsample_factor": int(upsample_factor),
        "registration_window": "tukey(0.25)",
        "registration_max_shift": None if max_shift is None else float(max_shift),
        "phase_align": phase_align,
        "phase_weights": "abs(truth)",
        "amplitude_scale": "least-squares",
        "shift_method": "fourier (symmetric pad)",
        "region_rows": _b(region[0]),
        "region_cols": _b(region[1]),
        "crop_rows": _b(crop[0]),
        "crop_cols": _b(crop[1]),
    }
    return AlignmentResult(
        aligned=aligned,
        truth=t_crop,
        offsets=offsets,
        region=region,
        crop=crop,
        phase_coeffs=phase_coeffs,
        amplitude_scale=amplitude_scale,
        settings=settings,
        errors=errors,
        notes=notes,
    )
