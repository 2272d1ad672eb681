"""Stitching of per-pattern or per-group object patches into the object's pixel frame (SPEC §5.4).

Each patch contributes its central M×M crop, placed so that the patch's pixel (N//2, N//2) lands on
its coordinate — the same convention as :func:`ptychobench.physics.extract_patches` — and the canvas
is the coverage-weighted average. Uncovered pixels are exact zeros and come with a coverage map.
"""

from __future__ import annotations

import numpy as np
import torch

from ptychobench.physics import overlay_patches

__all__ = ["Stitcher", "stitch", "validate_crop_size"]


def validate_crop_size(M: int, N: int) -> int:
    """Return M if ``0 < M <= N``, else raise ValueError naming both."""
    M = int(M)
    if not 0 < M <= N:
        raise ValueError(f"stitch crop size M: expected 0 < M <= N={N}, found {M}")
    return M


def _central_crop(patches: torch.Tensor, M: int) -> torch.Tensor:
    N = patches.shape[-1]
    lo = N // 2 - M // 2
    return patches[..., lo : lo + M, lo : lo + M]


class Stitcher:
    """Accumulates patches chunk by chunk; memory is the (H, W) canvas, whatever the count.

    Parameters
    ----------
    shape : (H, W) of the object frame
    N : patch side
    M : central crop side (0 < M <= N)
    origin : (x, y) added to every coordinate passed to :meth:`add` (lets callers pass centred
        positions and still land in the object frame)
    """

    def __init__(
        self, shape: tuple[int, int], N: int, M: int, origin: tuple[float, float] = (0.0, 0.0)
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self.N = int(N)
        self.M = validate_crop_size(M, N)
        self.origin = torch.tensor(origin, dtype=torch.float64)
        self.canvas = torch.zeros(self.shape, dtype=torch.complex64)
        self.weight = torch.zeros(self.shape, dtype=torch.float32)
        self.count = 0

    def add(self, patches: torch.Tensor | np.ndarray, coords: torch.Tensor | np.ndarray) -> None:
        """Add (B, N, N) complex patches at (B, 2) coordinates (x, y)."""
        p = torch.as_tensor(patches).detach().to("cpu", torch.complex64)
        c = torch.as_tensor(coords, dtype=torch.float64).cpu() + self.origin
        if p.ndim != 3 or p.shape[-1] != self.N or p.shape[-2] != self.N:
            raise ValueError(f"patches: expected (B, {self.N}, {self.N}), found {tuple(p.shape)}")
        if c.shape != (p.shape[0], 2):
            raise ValueError(f"coords: expected ({p.shape[0]}, 2), found {tuple(c.shape)}")
        crop = _central_crop(p, self.M).contiguous()
        canvas, weight = overlay_patches(crop, c, self.shape, method="bilinear")
        self.canvas += canvas
        self.weight += weight.real if weight.is_complex() else weight
        self.count += p.shape[0]

    def result(self, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W) complex64, coverage (H, W) float32); zeros where coverage ≤ min_weight."""
        covered = self.weight > min_weight
        safe = torch.where(covered, self.weight, torch.ones_like(self.weight))
        img = torch.where(covered, self.canvas / safe, torch.zeros((), dtype=torch.complex64))
        return img.numpy(), self.weight.numpy()


def stitch(
    patches: np.ndarray | torch.Tensor,
    coords: np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    crop: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stitch (B, N, N) complex patches at (B, 2) coords (x, y) into an (H, W) canvas.

    ``crop`` = M, the central crop kept from each patch (default N/4 rounded to even).
    Returns ``(image complex64, coverage float32)``.
    """
    p = torch.as_tensor(patches)
    N = int(p.shape[-1])
    M = max(2, 2 * round(N / 8)) if crop is None else crop
    s = Stitcher(shape, N, M)
    s.add(p, coords)
    return s.result()
