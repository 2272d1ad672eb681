"""Reference-free scores: how good is a reconstruction when no ground truth exists?

Two yardsticks of the field, usable on measured data:

**Held-out-pattern Poisson NLL** (:func:`heldout_nll`). A fixed random fraction of the test
positions (:func:`heldout_indices`) is withheld from every arm. A reconstruction ``O`` predicts
each withheld pattern through the known probe, ``λ_k = s · |F(P · O_k)|²`` (the physics package's
far field; ``O_k`` the object patch at the pattern's position, ``s`` one scale fitted by maximum
likelihood, ``s = Σ counts / Σ |F(P·O_k)|²``, because a network's amplitude scale is arbitrary).
Its Poisson NLL per pattern (with the ``log k!`` term, so it is ≥ 0) is divided by that of the
*mean-pattern predictor* — every withheld pattern predicted by the pixel-wise mean of the
withheld counts. ``relative < 1``: the object explains patterns it never saw better than their
own average does; it is comparable across doses (both terms scale with the counts). Lower is
better.

**Half-scan FRC** (:func:`interleaved_halves`, :func:`half_scan_frc`). The test scan is split
into two interleaved halves (every other position in scan order); each arm reconstructs both
independently and the Fourier ring correlation of the two reconstructions (amplitude, and phase
after removing the constant phase between them) over the scanned box gives the ½-bit and 1/7
cut-offs in cycles/px (:mod:`ptychobench.evaluate.frc`). Higher is better.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ptychobench.evaluate.frc import frc
from ptychobench.physics import extract_patches, intensity

__all__ = [
    "HeldoutScore",
    "half_scan_frc",
    "heldout_count",
    "heldout_indices",
    "heldout_nll",
    "interleaved_halves",
    "scanned_box",
]

LAMBDA_FLOOR = 1e-6
"""Smallest predicted count (photons) per pixel: a prediction of exactly 0 where a photon
arrived would make the NLL infinite."""


def heldout_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a fixed random ``fraction`` of ``n`` positions (``round(f·n)``; at least
    one when ``fraction > 0`` and ``n >= 2``, never all of them)."""
    k = heldout_count(n, fraction)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def heldout_count(n: int, fraction: float) -> int:
    """How many of ``n`` positions :func:`heldout_indices` withholds."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction: expected 0 <= fraction < 1, found {fraction}")
    k = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return k


def interleaved_halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, interleaved halves of ``n`` positions in scan order: even and odd indices."""
    if n < 2:
        raise ValueError(f"half-scan split: expected at least 2 positions, found {n}")
    idx = np.arange(n, dtype=np.int64)
    return idx[0::2], idx[1::2]


@dataclasses.dataclass(frozen=True)
class HeldoutScore:
    """Held-out NLL of one reconstruction (nats per pattern)."""

    nll: float  # the reconstruction's prediction
    nll_mean_pattern: float  # the mean-pattern predictor's
    relative: float  # nll / nll_mean_pattern (lower is better)
    scale: float  # the fitted photons-per-intensity scale s
    n_patterns: int


def _poisson_nll(lam: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Poisson NLL per pattern, summed over pixels: ``Σ λ − k log λ + log k!``."""
    lam = lam.clamp_min(LAMBDA_FLOOR)
    return (lam - counts * torch.log(lam) + torch.lgamma(counts + 1)).sum(dim=(-2, -1))


def heldout_nll(
    obj: np.ndarray, probe: np.ndarray, coords: np.ndarray, counts: np.ndarray
) -> HeldoutScore:
    """Score ``obj`` by how well it predicts the withheld patterns ``counts``.

    Parameters
    ----------
    obj : (H, W) complex, the reconstruction in the scan's pixel frame
    probe : (N, N) complex, the known probe
    coords : (K, 2) float, the withheld positions (x, y)
    counts : (K, N, N) float ≥ 0, the withheld photon counts (``diffraction²``)
    """
    counts_t = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float64))
    if counts_t.ndim != 3 or counts_t.shape[0] != len(coords) or counts_t.shape[0] < 1:
        raise ValueError(
            f"held-out patterns: expected (K, N, N) counts for K = {len(coords)} positions, "
            f"found {tuple(counts_t.shape)}"
        )
    if not torch.isfinite(counts_t).all():
        raise ValueError("held-out patterns: expected finite counts, found NaN/Inf")
    N = counts_t.shape[-1]
    o = torch.from_numpy(np.ascontiguousarray(obj, dtype=np.complex64))
    p = torch.from_numpy(np.ascontiguousarray(probe, dtype=np.complex64))
    c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float64))
    pred = intensity(p * extract_patches(o, c, N)).to(torch.float64)
    total = float(pred.sum())
    scale = float(counts_t.sum()) / total if total > 0 else 0.0
    nll = float(_poisson_nll(scale * pred, counts_t).mean())
    mean_pattern = counts_t.mean(dim=0, keepdim=True).expand_as(counts_t)
    ref = float(_poisson_nll(mean_pattern, counts_t).mean())
    return HeldoutScore(nll, ref, nll / ref if ref > 0 else float("nan"), scale, len(coords))


def scanned_box(coords: np.ndarray, shape: tuple[int, int], margin: float = 0.0):
    """(rows, cols) slices of the box spanned by the scan positions, grown by ``margin`` px and
    clipped to ``shape`` — the pixels every half of a dense scan illuminates."""
    x, y = np.asarray(coords, dtype=np.float64).T
    r0, r1 = int(np.floor(y.min() - margin)), int(np.ceil(y.max() + margin)) + 1
    c0, c1 = int(np.floor(x.min() - margin)), int(np.ceil(x.max() + margin)) + 1
    return (
        slice(max(r0, 0), min(r1, shape[0])),
        slice(max(c0, 0), min(c1, shape[1])),
    )


def half_scan_frc(a: np.ndarray, b: np.ndarray, box) -> dict[str, tuple[float, float]]:
    """FRC cut-offs between two half-scan reconstructions over ``box``.

    ``b`` is first rotated by the constant phase that best aligns it with ``a`` (no pattern fixes
    an object's global phase). Returns ``{"halfbit": (amplitude, phase), "1over7": (amplitude,
    phase)}`` in cycles/px.
    """
    x = np.asarray(a)[box].astype(np.complex128)
    y = np.asarray(b)[box].astype(np.complex128)
    inner = np.vdot(y, x)  # Σ conj(y)·x
    if abs(inner) > 0:
        y = y * (inner / abs(inner))
    fa = frc(np.abs(x), np.abs(y))
    fp = frc(np.angle(x), np.angle(y))
    return {"halfbit": (fa.frc_halfbit, fp.frc_halfbit), "1over7": (fa.frc1over7, fp.frc1over7)}
