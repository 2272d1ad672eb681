"""Scan trajectories: raster (optionally jittered), Fermat spiral and uniform random.

All functions return an ``(n, 2)`` float64 array of ``(x, y)`` positions in object pixels
(``x`` = column, ``y`` = row). A position is the object location that lands on patch pixel
``(N//2, N//2)``, so a patch at ``(x, y)`` covers columns ``x - N/2 .. x + N/2 - 1`` and rows
``y - N/2 .. y + N/2 - 1``. Every position satisfies the margin::

    N/2 <= x <= W - N/2   and   N/2 <= y <= H - N/2

so every patch lies inside the ``(H, W)`` object. The *usable area* is ``(W - N) · (H - N)``.

Spacing is given either directly (``step_px``) or as a target linear overlap with the probe's
effective diameter ``D`` (:func:`step_from_overlap`: ``step = D · (1 - overlap)``).
Randomness comes only from an explicitly passed seed or ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCAN_KINDS", "fermat", "make_scan", "random", "raster", "step_from_overlap"]

#: Kinds accepted by :func:`make_scan`.
SCAN_KINDS: tuple[str, ...] = ("random", "raster", "fermat")

_GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))  # rad, ≈137.5°
# Mean nearest-neighbour distance of a Fermat spiral r_k = c·sqrt(k), θ_k = k·golden angle, in
# units of c (measured: 1.66 for 100 points, 1.70 for 1e3-1e4 points). Used to pick c from step.
_FERMAT_NN_PER_C = 1.70


def _check_geometry(shape: tuple[int, int], N: int) -> tuple[int, int, int]:
    """Validate ``shape = (H, W)`` and ``N``; return ``(H, W, N)`` as ints."""
    if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 1:
        raise ValueError(f"patch size N must be a positive integer, got {N!r}")
    try:
        H, W = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"object shape must be (H, W), got {shape!r}") from None
    if H < N + 1 or W < N + 1:
        raise ValueError(
            f"object shape (H, W) = ({H}, {W}) is too small for N = {N} patches: "
            f"both sides must be >= N + 1 = {N + 1}"
        )
    return H, W, int(N)


def _check_step(step_px: float) -> float:
    step = float(step_px)
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step_px must be > 0, got {step_px!r}")
    return step


def _as_rng(rng: np.random.Generator | int | None, what: str) -> np.random.Generator:
    """Turn a Generator or seed into a Generator; refuse ``None`` (unseeded randomness)."""
    if rng is None:
        raise ValueError(f"{what} needs an explicit seed or numpy Generator (rng=None given)")
    return np.random.default_rng(rng)


def _axis_positions(length: int, N: int, step: float) -> np.ndarray:
    """Raster positions along one axis, centred in the usable range ``[N/2, length - N/2]``."""
    usable = length - N
    # The small tolerance keeps an exactly divisible range from losing its last position.
    count = int(np.floor(usable / step + 1e-9)) + 1
    start = N / 2 + (usable - (count - 1) * step) / 2
    return start + step * np.arange(count, dtype=np.float64)


def _clip_to_margin(coords: np.ndarray, H: int, W: int, N: int) -> np.ndarray:
    coords[:, 0] = np.clip(coords[:, 0], N / 2, W - N / 2)
    coords[:, 1] = np.clip(coords[:, 1], N / 2, H - N / 2)
    return coords


def raster(
    shape: tuple[int, int],
    N: int,
    step_px: float,
    *,
    jitter_px: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Rectangular raster scan centred in the usable range, with optional uniform jitter.

    Parameters
    ----------
    shape : tuple of int
        Object shape ``(H, W)``, px; both sides ``>= N + 1``.
    N : int
        Patch side, px.
    step_px : float
        Grid spacing along x and y, px (``> 0``). The grid has ``floor((W - N) / step) + 1``
        columns and is centred in ``[N/2, W - N/2]`` (same for rows).
    jitter_px : float
        Half-width of the uniform jitter added independently to x and y, px (``>= 0``).
        Jittered positions are clipped back into the margin.
    rng : numpy.random.Generator or int, optional
        Generator or seed for the jitter; required when ``jitter_px > 0``.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 ``(x, y)`` positions, row-major (y outer, x inner).
    """
    H, W, N = _check_geometry(shape, N)
    step = _check_step(step_px)
    jitter = float(jitter_px)
    if not np.isfinite(jitter) or jitter < 0:
        raise ValueError(f"jitter_px must be >= 0, got {jitter_px!r}")
    xs = _axis_positions(W, N, step)
    ys = _axis_positions(H, N, step)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.column_stack([gx.ravel(), gy.ravel()])
    if jitter > 0:
        gen = _as_rng(rng, "raster jitter")
        coords += gen.uniform(-jitter, jitter, size=coords.shape)
        coords = _clip_to_margin(coords, H, W, N)
    return coords


def fermat(shape: tuple[int, int], N: int, step_px: float) -> np.ndarray:
    """Fermat-spiral scan centred on the object, clipped to the usable range.

    Point ``k`` sits at radius ``c·sqrt(k)`` and angle ``k · 137.5°`` (golden angle) around
    ``(W/2, H/2)``, which gives near-uniform density; ``c = step_px / 1.70`` so the mean
    nearest-neighbour distance is ``≈ step_px``.

    Parameters
    ----------
    shape : tuple of int
        Object shape ``(H, W)``, px; both sides ``>= N + 1``.
    N : int
        Patch side, px.
    step_px : float
        Target mean nearest-neighbour spacing, px (``> 0``).

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 ``(x, y)`` positions in spiral order (centre first).
    """
    H, W, N = _check_geometry(shape, N)
    step = _check_step(step_px)
    c = step / _FERMAT_NN_PER_C
    cx, cy = W / 2.0, H / 2.0
    # Enough points to reach the corners of the usable rectangle; the rest are clipped away.
    half_diagonal = np.hypot(W - N, H - N) / 2.0
    k = np.arange(int(np.ceil((half_diagonal / c) ** 2)) + 1, dtype=np.float64)
    radius = c * np.sqrt(k)
    angle = k * _GOLDEN_ANGLE
    coords = np.column_stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)])
    inside = (
        (coords[:, 0] >= N / 2)
        & (coords[:, 0] <= W - N / 2)
        & (coords[:, 1] >= N / 2)
        & (coords[:, 1] <= H - N / 2)
    )
    return coords[inside]


def random(
    shape: tuple[int, int],
    N: int,
    n_positions: int,
    rng: np.random.Generator | int,
) -> np.ndarray:
    """Positions drawn independently and uniformly over the usable range.

    Parameters
    ----------
    shape : tuple of int
        Object shape ``(H, W)``, px; both sides ``>= N + 1``.
    N : int
        Patch side, px.
    n_positions : int
        Number of positions (``>= 1``).
    rng : numpy.random.Generator or int
        Generator or seed (required: no unseeded draws).

    Returns
    -------
    np.ndarray
        ``(n_positions, 2)`` float64 ``(x, y)``, ``x ~ U[N/2, W - N/2]``, ``y ~ U[N/2, H - N/2]``.
    """
    H, W, N = _check_geometry(shape, N)
    if isinstance(n_positions, bool) or not isinstance(n_positions, int | np.integer):
        raise ValueError(f"n_positions must be an integer, got {n_positions!r}")
    if n_positions < 1:
        raise ValueError(f"scan would have zero positions (n_positions = {n_positions})")
    gen = _as_rng(rng, "random scan")
    x = gen.uniform(N / 2, W - N / 2, size=int(n_positions))
    y = gen.uniform(N / 2, H - N / 2, size=int(n_positions))
    return np.column_stack([x, y])


def step_from_overlap(overlap: float, diameter_px: float) -> float:
    """Scan step that gives a target linear overlap of probe discs.

    Parameters
    ----------
    overlap : float
        Linear overlap ``1 - step / D``, ``0 <= overlap < 1``.
    diameter_px : float
        Probe effective diameter ``D``, px (``> 0``).

    Returns
    -------
    float
        ``D · (1 - overlap)``, px.
    """
    ov = float(overlap)
    if not np.isfinite(ov) or not 0.0 <= ov < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    d = float(diameter_px)
    if not np.isfinite(d) or d <= 0:
        raise ValueError(f"probe diameter_px must be > 0, got {diameter_px!r}")
    return d * (1.0 - ov)


def make_scan(
    kind: str,
    shape: tuple[int, int],
    N: int,
    *,
    step_px: float | None = None,
    overlap: float | None = None,
    n_positions: int | None = None,
    probe_diameter_px: float | None = None,
    jitter_px: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Build a scan from a kind and exactly one density parameter.

    Parameters
    ----------
    kind : str
        ``'random'``, ``'raster'`` or ``'fermat'`` (case-insensitive).
    shape : tuple of int
        Object shape ``(H, W)``, px; both sides ``>= N + 1``.
    N : int
        Patch side, px.
    step_px : float, optional
        Spacing, px. For ``random`` it sets ``n = round(usable_area / step²)``.
    overlap : float, optional
        Target linear overlap in ``[0, 1)``; needs ``probe_diameter_px``; converted with
        :func:`step_from_overlap` and then used like ``step_px``.
    n_positions : int, optional
        Number of positions. For ``raster``/``fermat`` it sets
        ``step = sqrt(usable_area / n_positions)``, so the realised count is approximate.
    probe_diameter_px : float, optional
        Probe effective diameter, px (see :func:`ptychobench.physics.probes.probe_info`).
    jitter_px : float
        Raster jitter half-width, px (``raster`` only).
    seed : int
        Seed for ``numpy.random.default_rng`` (random positions, raster jitter).

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 ``(x, y)`` positions, all within the margin ``N/2``.

    Raises
    ------
    ValueError
        Unknown kind; not exactly one of ``step_px``/``overlap``/``n_positions``; ``overlap``
        without ``probe_diameter_px``; jitter with a non-raster kind; an object smaller than
        ``N + 1``; a scan with zero positions.
    """
    key = kind.strip().lower() if isinstance(kind, str) else kind
    if key not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}: expected one of {', '.join(SCAN_KINDS)}")
    given = [
        name
        for name, value in (
            ("step_px", step_px),
            ("overlap", overlap),
            ("n_positions", n_positions),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of step_px, overlap, n_positions for the scan density, got "
            + (", ".join(given) if given else "none")
        )
    if jitter_px and key != "raster":
        raise ValueError(f"jitter_px applies to raster scans only, got kind {kind!r}")
    H, W, N = _check_geometry(shape, N)
    usable_area = float((W - N) * (H - N))

    if overlap is not None:
        if probe_diameter_px is None:
            raise ValueError("overlap needs probe_diameter_px (the probe's effective diameter)")
        step_px = step_from_overlap(overlap, probe_diameter_px)

    rng = np.random.default_rng(seed)
    if key == "random":
        if n_positions is None:
            step = _check_step(step_px)  # type: ignore[arg-type]
            n_positions = round(usable_area / step**2)
        return random((H, W), N, n_positions, rng)

    if n_positions is not None:
        if isinstance(n_positions, bool) or not isinstance(n_positions, int | np.integer):
            raise ValueError(f"n_positions must be an integer, got {n_positions!r}")
        if n_positions < 1:
            raise ValueError(f"scan would have zero positions (n_positions = {n_positions})")
        step_px = float(np.sqrt(usable_area / n_positions))
    if key == "raster":
        return raster((H, W), N, step_px, jitter_px=jitter_px, rng=rng)  # type: ignore[arg-type]
    return fermat((H, W), N, step_px)  # type: ignore[arg-type]
