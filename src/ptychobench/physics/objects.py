"""Synthetic complex objects (transmission functions) for simulation.

An object is ``O = A · exp(i φ)``, an ``(H, W)`` complex64 numpy array with amplitude ``A`` in
``[a_min, 1]`` and phase ``φ`` in ``[-phi_max, phi_max]`` radians. Each source produces one or two
real maps that are min-max normalised to ``[0, 1]`` and then mapped linearly::

    A = a_min + (1 - a_min) · m_A          (so min A = a_min and max A = 1 exactly)
    φ = phi_max · (2 · m_B - 1)            (so φ spans [-phi_max, phi_max] exactly)

(``lines:coupled`` is the one exception: its phase is a fixed function of ``m_A``, see below.)

Sources (the ``spec`` string of :func:`make_object`):

``lines``
    Random line segments (:func:`skimage.draw.line`), endpoints uniform in a ``2H × 2W`` canvas,
    blurred as ``G₁ + 2·G₅ + 5·G₁₀`` (Gaussian filters with σ = 1, 5, 10 px), centre-cropped to
    ``H × W`` (the reference system's "lines" object). The number of segments scales with the
    area (400 for a 392 × 392 object, at least 1) so the texture density does not depend on size.
    Amplitude and phase come from **two independent draws** (two different line sets), so the
    phase is not a function of the amplitude and both channels carry their own structure.
``lines:coupled``
    The PtychoPINN paper's synthetic regime: **one** lines map ``m`` (the first draw of
    ``lines`` with the same seed, so the amplitude equals the ``lines`` amplitude) gives both
    channels, ``A = a_min + (1 - a_min) · m`` and the paper's fixed phase formula with the map
    taken as ``m`` in ``[0, 1]``::

        φ = π · tanh((m - max(m) / 2) / (3 · mean(m)))

    The phase is a function of the amplitude and **ignores** ``phi_max``; since ``|tanh| < 1``
    it lies strictly inside ``(-π, π)`` (its actual span depends on ``mean(m)``).
``grf``
    Gaussian random field with power spectrum ``S(k) ∝ (k² + k₀²)^(-β/2)``, ``β = 3``,
    ``k₀ = 1/32`` cycles/px (white noise filtered with numpy FFTs). The roll-off below ``k₀``
    keeps the structure at the scale of a diffraction patch (32-64 px) instead of one
    object-wide gradient. Amplitude and phase are two independent fields.
``image:A+B`` / ``image:A``
    Images bundled with scikit-image (no download; see :func:`list_images`), colour converted to
    grey with :func:`skimage.color.rgb2gray`, centre-cropped to the target aspect ratio (so they
    are not distorted) and resized with :func:`skimage.transform.resize` (anti-aliased). ``A``
    gives the amplitude and ``B`` the phase; ``image:A`` alone gives amplitude from ``A`` and
    **zero phase**.

File-backed objects (NPZ) are loaded by the data layer, not here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import skimage.data
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.draw import line
from skimage.transform import resize

__all__ = ["list_images", "make_object"]

# scikit-image images that ship inside the wheel and load without network access (checked with a
# blocked socket and an empty data cache). Images that need pooch downloads are excluded, and so
# are RGBA / binary ones (logo, horse, colorwheel) that make poor transmission maps.
_IMAGES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "text",
)

# Reference "lines" object: 400 segments for a 392 x 392 object (canvas 784 x 784).
_LINES_PER_PIXEL = 400 / 392**2
_LINES_BLUR: tuple[tuple[float, float], ...] = ((1.0, 1.0), (5.0, 2.0), (10.0, 5.0))  # (σ, weight)

# Gaussian random field spectrum (see module docstring).
_GRF_BETA = 3.0
_GRF_K0 = 1.0 / 32.0

_MIN_SIZE = 8


def list_images() -> list[str]:
    """Names of the bundled scikit-image images usable in ``image:A+B`` specs.

    Returns
    -------
    list[str]
        Sorted image names; each loads offline via ``getattr(skimage.data, name)()``.
    """
    return sorted(_IMAGES)


def _unknown(spec: object) -> ValueError:
    """The error for an unparseable spec or an unknown image name."""
    return ValueError(
        f"unknown object {spec!r}: expected lines, lines:coupled, grf, image:A+B "
        f"(A, B in {', '.join(list_images())}) or a path to an .npz file"
    )


def _parse_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """Validate ``size`` (int or (H, W)) and return ``(H, W)``."""
    dims = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(dims) != 2 or any(
        isinstance(d, bool) or not isinstance(d, int | np.integer) or d < _MIN_SIZE for d in dims
    ):
        raise ValueError(
            f"object size must be an int or (H, W) of ints >= {_MIN_SIZE}, got {size!r}"
        )
    return int(dims[0]), int(dims[1])


def _minmax(values: np.ndarray) -> np.ndarray:
    """Map ``values`` linearly onto ``[0, 1]`` (float64); a constant map becomes all zeros."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    # Clip guards against rounding just outside [0, 1].
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _lines_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Blurred random line segments, ``(H, W)`` float64 (not normalised)."""
    H, W = shape
    canvas = np.zeros((2 * H, 2 * W), dtype=np.float64)
    n_lines = max(1, round(_LINES_PER_PIXEL * H * W))
    rows = rng.integers(0, 2 * H, size=(n_lines, 2))
    cols = rng.integers(0, 2 * W, size=(n_lines, 2))
    for (r0, r1), (c0, c1) in zip(rows, cols, strict=True):
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        canvas[rr, cc] = 1.0
    blurred = sum(w * ndimage.gaussian_filter(canvas, sigma=s) for s, w in _LINES_BLUR)
    # Centre crop: the 2x canvas keeps segment ends and filter edge effects out of the object.
    r_start, c_start = H // 2, W // 2
    return blurred[r_start : r_start + H, c_start : c_start + W]


def _coupled_phase(m: np.ndarray) -> np.ndarray:
    """The PtychoPINN phase of a normalised map ``m``: ``π·tanh((m - max m / 2) / (3·mean m))``."""
    mean = float(m.mean())
    if mean <= 0.0:  # constant (all-zero) map: no structure, flat phase
        return np.zeros(m.shape, dtype=np.float64)
    return np.pi * np.tanh((m - 0.5 * float(m.max())) / (3.0 * mean))


def _grf_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with a rolled-off power-law spectrum, ``(H, W)`` float64."""
    H, W = shape
    noise = rng.standard_normal((H, W))
    k = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.rfftfreq(W)[None, :])
    # Amplitude filter = sqrt of the power spectrum; drop the mean (k = 0) term.
    filt = (k**2 + _GRF_K0**2) ** (-_GRF_BETA / 4.0)
    filt[0, 0] = 0.0
    return np.fft.irfft2(np.fft.rfft2(noise) * filt, s=(H, W))


@lru_cache(maxsize=8)
def _load_grey(name: str) -> np.ndarray:
    """Load a bundled scikit-image image as a read-only float64 grey map in [0, 1]."""
    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = rgb2gray(img)
    elif np.issubdtype(img.dtype, np.integer):
        img = img / float(np.iinfo(img.dtype).max)
    grey = np.asarray(img, dtype=np.float64)
    grey.setflags(write=False)  # cached: callers must not modify it
    return grey


def _image_map(name: str, shape: tuple[int, int]) -> np.ndarray:
    """Bundled image ``name`` centre-cropped to the aspect of ``shape`` and resized to it."""
    grey = _load_grey(name)
    h, w = grey.shape
    H, W = shape
    # Crop to the target aspect ratio first so resizing does not distort the image.
    if h * W > w * H:
        ch, cw = max(1, round(w * H / W)), w
    else:
        ch, cw = h, max(1, round(h * W / H))
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    crop = grey[r0 : r0 + ch, c0 : c0 + cw]
    return resize(crop, (H, W), anti_aliasing=True, preserve_range=True)


def make_object(
    spec: str,
    size: int | tuple[int, int],
    *,
    a_min: float = 0.5,
    phi_max: float = np.pi / 2,
    seed: int = 0,
) -> np.ndarray:
    """Make a synthetic complex transmission object.

    Parameters
    ----------
    spec : str
        ``'lines'``, ``'lines:coupled'``, ``'grf'``, ``'image:A+B'`` or ``'image:A'`` (see the
        module docstring; case-insensitive, image names from :func:`list_images`).
    size : int or tuple of int
        Object side ``S`` (square ``S × S``) or ``(H, W)``, px; each side ``>= 8``.
    a_min : float
        Minimum amplitude, ``0 <= a_min < 1``; the maximum amplitude is 1.
    phi_max : float
        Phase half-range, radians, ``0 < phi_max <= π``; phase spans ``[-phi_max, phi_max]``.
        Ignored by ``lines:coupled``, whose phase is the paper's fixed formula inside ``(-π, π)``.
    seed : int
        Seed for ``numpy.random.default_rng`` (``lines``, ``lines:coupled`` and ``grf``; images
        ignore it).
        The same seed gives identical arrays.

    Returns
    -------
    np.ndarray
        ``(H, W)`` complex64 ``A · exp(i φ)``.

    Raises
    ------
    ValueError
        Unknown spec or image name (the message lists the valid choices), or an out-of-range
        ``size``, ``a_min`` or ``phi_max``.
    """
    shape = _parse_shape(size)
    if not np.isfinite(a_min) or not 0.0 <= a_min < 1.0:
        raise ValueError(f"a_min must be in [0, 1), got {a_min!r}")
    if not np.isfinite(phi_max) or not 0.0 < phi_max <= np.pi:
        raise ValueError(f"phi_max must be in (0, pi], got {phi_max!r}")
    if not isinstance(spec, str):
        raise _unknown(spec)

    key = spec.strip().lower()
    head, colon, variant = key.partition(":")
    if head.strip() in ("lines", "grf") and colon:
        # lines/grf variants: only lines:coupled exists.
        if (head.strip(), variant.strip()) != ("lines", "coupled"):
            raise _unknown(spec)
        key = "lines:coupled"
    m_phase: np.ndarray | None
    if key == "lines:coupled":
        # One draw (the same as the amplitude draw of "lines"); the phase is a function of it.
        m_amp = _minmax(_lines_map(shape, np.random.default_rng(seed)))
        amplitude = a_min + (1.0 - a_min) * m_amp
        return (amplitude * np.exp(1j * _coupled_phase(m_amp))).astype(np.complex64)
    if key in ("lines", "grf"):
        rng = np.random.default_rng(seed)
        draw = _lines_map if key == "lines" else _grf_map
        # Two independent draws from one generator: amplitude first, then phase.
        m_amp = _minmax(draw(shape, rng))
        m_phase = _minmax(draw(shape, rng))
    elif key.startswith("image:"):
        names = [n.strip() for n in key[len("image:") :].split("+")]
        if not 1 <= len(names) <= 2 or any(n not in _IMAGES for n in names):
            raise _unknown(spec)
        m_amp = _minmax(_image_map(names[0], shape))
        m_phase = _minmax(_image_map(names[1], shape)) if len(names) == 2 else None
    else:
        raise _unknown(spec)

    amplitude = a_min + (1.0 - a_min) * m_amp
    phase = np.zeros(shape) if m_phase is None else phi_max * (2.0 * m_phase - 1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)
