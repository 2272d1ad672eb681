"""Synthetic illumination probes and their size descriptors.

Every probe is an ``(N, N)`` complex64 numpy array centred on pixel ``(N//2, N//2)`` (the pixel that
holds zero frequency after ``fftshift``, and the pixel a scan coordinate lands on), normalised so
that its brightest pixel is exactly ``1 + 0j`` (unit maximum amplitude, global phase removed).

Size descriptors (:func:`probe_info`), all in pixels and computed from the intensity ``|P|²``:

``fwhm_px``
    Diameter of the circle whose area equals the area of the connected region with intensity
    ``>= max/2`` that contains the intensity peak (the central lobe). The region boundary is found
    with sub-pixel marching squares (:func:`skimage.measure.find_contours`), so the value is
    accurate well below one pixel. For a round beam this is the usual full width at half maximum;
    for an elliptical or irregular beam it is the equal-area diameter, which is more robust than
    widths along two cuts through the peak.
``effective_diameter_px``
    Diameter of the circle, centred on the intensity centroid, that encloses ``1 - e⁻² ≈ 86.5 %``
    of the total intensity. For a Gaussian beam this equals the ``1/e²`` diameter; for beams with
    rings it grows with the energy in the rings. This is the diameter overlap metrics and
    overlap-based scan spacing use.

File loading (NPZ/CXI probes) lives in the data layer, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = [
    "PROBE_NAMES",
    "ProbeInfo",
    "disk",
    "fly64",
    "gaussian",
    "kb",
    "make_probe",
    "probe_info",
]

#: Names accepted by :func:`make_probe`.
PROBE_NAMES: tuple[str, ...] = ("fly64", "gaussian", "disk", "kb")

# Fraction of the total intensity inside the effective diameter: 1 - e^-2, the fraction a Gaussian
# beam carries inside its 1/e² radius.
_ENCLOSED_FRACTION = 1.0 - np.exp(-2.0)

# Sub-pixel sampling per axis for the enclosed-energy curve: treating each pixel as one point at
# its centre biases small beams low by several %; 4x4 sub-samples keep it within ~1-2 %.
_ENCLOSED_SUBSAMPLES = 4

# --- fly64 design parameters (all scale with N, so N=128 is the N=64 probe at twice the pixels) ---
# Outer pupil radius in cycles/px is _FLY_PUPIL_RADIUS / N; the focal spot size is ~N / that.
_FLY_PUPIL_RADIUS = 4.5
# Central stop radius as a fraction of the outer radius (zone plates use ~0.3-0.5).
_FLY_CENTRAL_STOP = 0.4
# Quadratic defocus phase at the pupil edge, radians (~0.4 wave): fills the first zero a little
# and curves the phase across the core, as a slightly defocused zone-plate focus does.
_FLY_DEFOCUS_RAD = 2.5
# The pupil is sampled on an (oversample * N)^2 grid so the annulus is ~36 pupil pixels across and
# smooth; the central N x N crop of the inverse FFT is the sample-plane field at 1 px sampling.
_FLY_OVERSAMPLE = 8
# Soft real-space support (raised-cosine taper between these radii, as fractions of N): keeps the
# core and the first ring, cuts the slowly decaying Airy tail so the probe fits in ~0.45 N.
_FLY_SUPPORT_INNER = 0.16
_FLY_SUPPORT_OUTER = 0.23

# --- kb design parameters: a Kirkpatrick-Baez mirror pair focus, the other common X-ray optic ---
# Each mirror is a 1-D rectangular pupil (half-width _KB_PUPIL_HALF[axis] / N cycles/px, so the
# two axes focus to different sizes as two mirrors of different length do) with its own defocus
# phase at the pupil edge (radians; the mirrors are never focused on the same plane) and a little
# coma-like cubic phase (an imperfect figure): the sinc lobes decay as 1/x² and are *not* cut,
# so the tails reach the window edge, as a measured probe's do.
_KB_PUPIL_HALF = (4.0, 5.0)  # (y, x)
_KB_DEFOCUS_RAD = (3.0, 2.0)
_KB_CUBIC_RAD = 1.0
_KB_OVERSAMPLE = 8

# Default sizes for the simple probes, chosen so their effective diameters (~0.3-0.34 N) are close
# to fly64's (~0.32 N). The disk default matches the reference system's default probe (a blurred
# disk of radius ~0.17 N).
_GAUSSIAN_DEFAULT_FWHM = 0.2
_DISK_DEFAULT_DIAMETER = 0.34


@dataclass(frozen=True)
class ProbeInfo:
    """Size descriptors of a probe, in pixels (see the module docstring for the definitions).

    Attributes
    ----------
    fwhm_px : float
        Equal-area diameter of the central half-maximum region of ``|P|²``, px.
    effective_diameter_px : float
        Diameter of the centroid-centred circle enclosing ``1 - e⁻²`` of the intensity, px.
    """

    fwhm_px: float
    effective_diameter_px: float


def _check_n(N: int) -> int:
    """Validate a probe side length and return it as ``int``."""
    if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 8:
        raise ValueError(f"probe size N must be an integer >= 8, got {N!r}")
    return int(N)


def _radius_grid(N: int) -> np.ndarray:
    """Distance of every pixel of an ``(N, N)`` grid from pixel ``(N//2, N//2)``, px, float64."""
    offsets = np.arange(N, dtype=np.float64) - N // 2
    return np.hypot(offsets[:, None], offsets[None, :])


def _normalise(field: np.ndarray) -> np.ndarray:
    """Divide by the complex value at the amplitude peak: peak becomes exactly ``1 + 0j``.

    Dividing by the complex peak (rather than its modulus) also removes the arbitrary global
    phase, so probes are comparable and the peak is exactly representable in complex64.
    """
    peak = field.flat[int(np.argmax(np.abs(field)))]
    if peak == 0 or not np.isfinite(peak):
        raise ValueError("probe is all zero or non-finite; cannot normalise")
    return (field / peak).astype(np.complex64)


def probe_info(probe: np.ndarray) -> ProbeInfo:
    """Measure the FWHM and effective diameter of a probe.

    Parameters
    ----------
    probe : np.ndarray
        ``(N, M)`` complex (or real) probe field; only the intensity ``|probe|²`` is used.

    Returns
    -------
    ProbeInfo
        ``fwhm_px``: equal-area diameter of the half-maximum region containing the intensity
        peak, px. ``effective_diameter_px``: diameter of the circle centred on the intensity
        centroid enclosing ``1 - e⁻² ≈ 86.5 %`` of the total intensity, px. For a Gaussian beam
        these are the FWHM and the ``1/e²`` diameter of its intensity.

    Raises
    ------
    ValueError
        If the probe is not 2-D, not finite, or has zero total intensity.
    """
    arr = np.asarray(probe)
    if arr.ndim != 2:
        raise ValueError(f"probe must be 2-D (N, N), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probe contains NaN or Inf")
    intensity = np.abs(arr).astype(np.float64) ** 2
    total = intensity.sum()
    if total <= 0:
        raise ValueError("probe has zero total intensity")
    return ProbeInfo(
        fwhm_px=_fwhm_equal_area(intensity),
        effective_diameter_px=_enclosed_diameter(intensity, _ENCLOSED_FRACTION),
    )


def _fwhm_equal_area(intensity: np.ndarray) -> float:
    """Equal-area diameter of the half-maximum region around the intensity peak, px."""
    # Zero padding closes every iso-contour, even for a beam that touches the array edge.
    padded = np.pad(intensity, 1)
    peak = np.unravel_index(int(np.argmax(padded)), padded.shape)
    best_area: float | None = None
    for contour in measure.find_contours(padded, level=0.5 * intensity.max()):
        if not np.allclose(contour[0], contour[-1]):
            continue
        if not measure.points_in_poly(np.array([peak], dtype=np.float64), contour)[0]:
            continue
        # Shoelace formula. The smallest closed contour around the peak bounds the central lobe
        # (contours of a bright ring around it enclose the peak too, but have larger areas).
        rows, cols = contour[:, 0], contour[:, 1]
        area = 0.5 * abs(np.dot(rows[:-1], cols[1:]) - np.dot(rows[1:], cols[:-1]))
        best_area = area if best_area is None else min(best_area, area)
    if best_area is None:  # pragma: no cover - marching squares always closes around the peak
        best_area = float(np.count_nonzero(intensity >= 0.5 * intensity.max()))
    return float(2.0 * np.sqrt(best_area / np.pi))


def _enclosed_diameter(intensity: np.ndarray, fraction: float) -> float:
    """Diameter of the centroid-centred circle enclosing ``fraction`` of the intensity, px."""
    cy, cx = ndimage.center_of_mass(intensity)
    s = _ENCLOSED_SUBSAMPLES
    # Each pixel is split into s x s equal sub-samples so the enclosed-energy curve is smooth on a
    # sub-pixel scale (a pixel's energy is spread over its area, not put at its centre).
    sub = (np.arange(s, dtype=np.float64) + 0.5) / s - 0.5
    rows = (np.arange(intensity.shape[0], dtype=np.float64)[:, None] + sub[None, :]).ravel() - cy
    cols = (np.arange(intensity.shape[1], dtype=np.float64)[:, None] + sub[None, :]).ravel() - cx
    radius = np.hypot(rows[:, None], cols[None, :]).ravel()
    weight = np.repeat(np.repeat(intensity, s, axis=0), s, axis=1).ravel()
    order = np.argsort(radius, kind="stable")
    cumulative = np.cumsum(weight[order])
    cumulative /= cumulative[-1]
    r_sorted = radius[order]
    i = int(np.searchsorted(cumulative, fraction))
    if i == 0:
        return float(2.0 * r_sorted[0])
    # Linear interpolation between the two sub-samples that bracket the target fraction.
    c0, c1 = cumulative[i - 1], cumulative[i]
    t = 0.0 if c1 == c0 else (fraction - c0) / (c1 - c0)
    return float(2.0 * (r_sorted[i - 1] + t * (r_sorted[i] - r_sorted[i - 1])))


def gaussian(N: int, fwhm_px: float | None = None) -> np.ndarray:
    """Gaussian probe with flat phase.

    Parameters
    ----------
    N : int
        Probe side, px (``>= 8``).
    fwhm_px : float, optional
        Full width at half maximum of the **intensity** ``|P|²``, px. Default ``0.2 * N``, which
        gives a ``1/e²`` (effective) diameter of ``≈0.34 N``.

    Returns
    -------
    np.ndarray
        ``(N, N)`` complex64, amplitude ``exp(-r² / (2 s²))`` with ``s = fwhm / (2 sqrt(ln 2))``,
        centred on ``(N//2, N//2)``, peak exactly 1.
    """
    N = _check_n(N)
    fwhm = _GAUSSIAN_DEFAULT_FWHM * N if fwhm_px is None else float(fwhm_px)
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise ValueError(f"gaussian probe fwhm_px must be > 0, got {fwhm_px!r}")
    # Intensity exp(-r²/s²) has FWHM 2 s sqrt(ln 2); the amplitude is its square root.
    s = fwhm / (2.0 * np.sqrt(np.log(2.0)))
    amplitude = np.exp(-(_radius_grid(N) ** 2) / (2.0 * s**2))
    return _normalise(amplitude.astype(np.complex128))


def disk(N: int, diameter_px: float | None = None, blur_px: float = 1.0) -> np.ndarray:
    """Blurred circular aperture with flat phase.

    Parameters
    ----------
    N : int
        Probe side, px (``>= 8``).
    diameter_px : float, optional
        Aperture diameter before blurring, px, ``0 < diameter_px <= N``. Default ``0.34 * N``
        (the reference system's default probe size).
    blur_px : float
        Standard deviation of the Gaussian blur applied to the aperture, px (``>= 0``; 0 gives a
        hard-edged disk, anti-aliased over one pixel). Because the FWHM is measured on the
        intensity, a blurred disk has ``fwhm_px ≈ diameter_px - 1.09 * blur_px`` (the edge
        crosses amplitude ``1/√2`` at ``0.545 σ`` inside the aperture edge).

    Returns
    -------
    np.ndarray
        ``(N, N)`` complex64 real-valued aperture centred on ``(N//2, N//2)``, peak exactly 1.
    """
    N = _check_n(N)
    diameter = _DISK_DEFAULT_DIAMETER * N if diameter_px is None else float(diameter_px)
    if not np.isfinite(diameter) or not 0 < diameter <= N:
        raise ValueError(f"disk probe diameter_px must be in (0, N={N}], got {diameter_px!r}")
    if not np.isfinite(blur_px) or blur_px < 0:
        raise ValueError(f"disk probe blur_px must be >= 0, got {blur_px!r}")
    # Anti-aliased edge: a pixel's value is ~the fraction of it inside the circle (linear ramp one
    # pixel wide), so the aperture area and centroid do not jump with the pixel grid.
    aperture = np.clip(diameter / 2.0 - _radius_grid(N) + 0.5, 0.0, 1.0)
    if blur_px > 0:
        aperture = ndimage.gaussian_filter(aperture, sigma=float(blur_px), mode="constant")
    return _normalise(aperture.astype(np.complex128))


def fly64(N: int = 64) -> np.ndarray:
    """Synthetic focused-beam probe in the spirit of the experimental fly64 scan.

    A zone-plate-like focus: an annular pupil (outer radius ``4.5 / N`` cycles/px, central stop
    at 0.4 of it) with a quadratic defocus phase of 2.5 rad at the pupil edge is inverse-Fourier
    transformed to the sample plane (pupil oversampled 8x, centre crop), then multiplied by a soft
    raised-cosine support (1 inside ``0.16 N``, 0 beyond ``0.23 N`` radius) that keeps the core
    and first ring but cuts the slowly decaying tail.

    The result has a bright core (intensity FWHM ≈ 6.9 px at N=64), a weak first ring (≈8 % of
    the peak intensity), phase curving by ≈1 rad across the core, an effective diameter of
    ≈20.6 px and a support (``|P| > 1e-3``) of ≈0.45 N. All lengths scale with ``N``: ``N=128``
    gives the same beam sampled at twice the pixels.

    Parameters
    ----------
    N : int
        Probe side, px (``>= 8``; 64 and 128 are the supported study sizes).

    Returns
    -------
    np.ndarray
        ``(N, N)`` complex64, centred on ``(N//2, N//2)``, peak exactly ``1 + 0j``.
    """
    N = _check_n(N)
    M = _FLY_OVERSAMPLE * N
    # Pupil radius in cycles/px proportional to 1/N makes the focal spot proportional to N.
    freq = np.fft.fftfreq(M)
    rho = np.hypot(freq[:, None], freq[None, :]) / (_FLY_PUPIL_RADIUS / N)
    pupil = ((rho <= 1.0) & (rho >= _FLY_CENTRAL_STOP)) * np.exp(1j * _FLY_DEFOCUS_RAD * rho**2)
    field = np.fft.fftshift(np.fft.ifft2(pupil))
    # After fftshift the optical axis is at (M//2, M//2); crop so it lands on (N//2, N//2).
    start = M // 2 - N // 2
    field = field[start : start + N, start : start + N]
    r = _radius_grid(N) / N
    taper = 0.5 * (
        1.0 + np.cos(np.pi * (r - _FLY_SUPPORT_INNER) / (_FLY_SUPPORT_OUTER - _FLY_SUPPORT_INNER))
    )
    support = np.where(r <= _FLY_SUPPORT_INNER, 1.0, np.where(r >= _FLY_SUPPORT_OUTER, 0.0, taper))
    return _normalise(field * support)


def _kb_axis(N: int, half_width: float, defocus: float) -> np.ndarray:
    """One mirror's focus along one axis: ``(N,)`` complex field at 1 px sampling."""
    M = _KB_OVERSAMPLE * N
    u = np.fft.fftfreq(M) / (half_width / N)  # pupil coordinate, ±1 at the mirror's edges
    pupil = (np.abs(u) <= 1.0) * np.exp(1j * (defocus * u**2 + _KB_CUBIC_RAD * u**3))
    line = np.fft.fftshift(np.fft.ifft(pupil))
    start = M // 2 - N // 2
    line = line[start : start + N]
    # the odd (cubic) phase moves the peak off axis; put it back on pixel N//2, the convention
    return np.roll(line, N // 2 - int(np.argmax(np.abs(line))))


def kb(N: int = 64) -> np.ndarray:
    """Synthetic Kirkpatrick-Baez focus: a wide probe with long, uncut tails.

    The separable product of two 1-D mirror foci: a rectangular pupil per axis (half-widths
    ``4.0 / N`` and ``5.0 / N`` cycles/px in y and x), defocus phases of 3.0 and 2.0 rad at the
    pupil edges and a cubic figure error of 1 rad. Unlike :func:`fly64` the field is not
    tapered: its sinc side lobes decay as ``1/x²`` along both axes and still carry intensity at
    the window edge — the regime of a measured KB or zone-plate probe, where a reconstruction is
    probed far from the scan position.

    At ``N = 64``: intensity FWHM ≈ 9 px (elongated along y), effective diameter ≈ 33 px (fly64:
    21), ≈ 16 % of the intensity outside a radius of ``N/4`` (fly64: none). Lengths scale with
    ``N``.

    Returns
    -------
    np.ndarray
        ``(N, N)`` complex64, the peak normalised to exactly ``1 + 0j``.
    """
    N = _check_n(N)
    fy = _kb_axis(N, _KB_PUPIL_HALF[0], _KB_DEFOCUS_RAD[0])
    fx = _kb_axis(N, _KB_PUPIL_HALF[1], _KB_DEFOCUS_RAD[1])
    return _normalise(fy[:, None] * fx[None, :])


def make_probe(name: str, N: int) -> np.ndarray:
    """Build a named synthetic probe with its default parameters.

    Parameters
    ----------
    name : str
        One of ``'fly64'``, ``'gaussian'``, ``'disk'``, ``'kb'`` (case-insensitive).
    N : int
        Probe side, px.

    Returns
    -------
    np.ndarray
        ``(N, N)`` complex64 probe, centred on ``(N//2, N//2)``, unit peak amplitude.

    Raises
    ------
    ValueError
        For an unknown name (file paths are resolved by the data layer, not here).
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "fly64":
        return fly64(N)
    if key == "gaussian":
        return gaussian(N)
    if key == "disk":
        return disk(N)
    if key == "kb":
        return kb(N)
    raise ValueError(
        f"unknown probe {name!r}: expected one of {', '.join(PROBE_NAMES)}, "
        "or a path to an .npz/.cxi file"
    )
