"""Stitching of per-pattern or per-group object patches into the object's pixel frame (SPEC §5.4).

A patch is placed so that its pixel (N//2, N//2) lands on its coordinate — the same convention as
:func:`ptychobench.physics.extract_patches` — and the canvas is the weighted average
``Σ w·patch / Σ w`` over covered pixels (``Σ w > min_weight``). Uncovered pixels are exact zeros;
the coverage map returned with the image is ``Σ w``.

Two weightings (SPEC §5.4 "Weighting"):

``"flat"`` (default, the ablation switch)
    Each patch contributes its central M×M crop with weight 1 (the coverage is a count).
``"probe"``
    A patch's pixel counts by the illumination that constrained it,
    ``w = |P|² / max |P|²`` on the decoder's support window (rows/cols ``[N/4, 3N/4)``) and 0
    outside it; M is ignored. This is pty-chi's object-update weighting: window corners where
    ``|P|² ≈ 0`` (pure network guesswork) no longer enter at full weight.

:meth:`Stitcher.add` also takes an explicit per-patch weight map (B, N, N) that replaces the
default weight of either mode (no crop); gs2 inference passes each group's merged Σ-weight map,
so that a group contributes what its members stitched one by one would.

Phase synchronisation (``phase_sync`` > 0 iterations): no diffraction pattern constrains the
constant phase of the object patch it explains (``|F(P·O·e^{iθ})| = |F(P·O)|``), so a network's
patches — one per pattern or per group — each carry their own arbitrary phase offset, and
averaging them blurs the stitched phase. Before stitching, each patch is rotated by the constant
phase that best aligns it with the weighted sum of all *other* patches where they overlap
(:func:`synchronise_phases`, repeated; the overlaps alone decide, no ground truth). The whole
image keeps one arbitrary global phase, which the scores remove anyway. Measured in
``benchmarks/pinn_ladder.py`` (rung ``phase_sync``); the Stitcher then holds every (cropped)
patch until :meth:`Stitcher.result`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ptychobench.physics import overlay_patches

__all__ = [
    "STITCH_WEIGHTINGS",
    "Stitcher",
    "probe_weight",
    "stitch",
    "support_window",
    "synchronise_phases",
    "validate_phase_sync",
    "validate_crop_size",
    "validate_weighting",
]

STITCH_WEIGHTINGS = ("flat", "probe")
"""Names of the stitching (and gs2 merge) weightings."""

Weighting = Literal["flat", "probe"]


def validate_crop_size(M: int, N: int) -> int:
    """Return M if ``0 < M <= N``, else raise ValueError naming both."""
    M = int(M)
    if not 0 < M <= N:
        raise ValueError(f"stitch crop size M: expected 0 < M <= N={N}, found {M}")
    return M


def validate_weighting(name: object, what: str = "stitch weighting") -> str:
    """Return ``name`` if it is ``"flat"`` or ``"probe"``, else raise ValueError naming ``what``."""
    if not isinstance(name, str) or name not in STITCH_WEIGHTINGS:
        raise ValueError(f"{what}: expected 'flat' or 'probe', found {name!r}")
    return name


def validate_phase_sync(iterations: object) -> int:
    """Return ``iterations`` if it is an int >= 0 (0 = off), else raise ValueError."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ValueError(
            f"phase sync: expected an integer number of iterations >= 0, found {iterations!r}"
        )
    if iterations < 0:
        raise ValueError(
            f"phase sync: expected an integer number of iterations >= 0, found {iterations}"
        )
    return int(iterations)


def synchronise_phases(
    patches: torch.Tensor,
    weights: torch.Tensor,
    coords: torch.Tensor,
    shape: tuple[int, int],
    iterations: int = 10,
) -> torch.Tensor:
    """Rotate each patch by the constant phase that aligns it with the others where they overlap.

    It refines the patches' own phases, so a network's phase convention is kept where overlaps
    say little (sparse scans): from the offsets of a trained network a few tens of iterations
    suffice; from uniformly random offsets a 12×12 raster needs ~200 (the error spreads like
    diffusion). One iteration: ``S = Σ_k overlay(w_k·p_k)`` (bilinear, the stitcher's
    placement); for every patch ``r_k = Σ_pixels w_k · conj(p_k) · (S − w_k·p_k)`` at its own
    position (the sum of the *other* patches, so a patch does not vote for itself);
    ``p_k ← p_k · e^{i·arg r_k}``. A patch no other overlaps (``r_k = 0``) keeps its phase.
    Repeated ``iterations`` times (a projected power iteration on the patches' pairwise
    overlap correlations).

    Parameters
    ----------
    patches : torch.Tensor
        (B, s, s) complex, as they will be placed (already cropped).
    weights : torch.Tensor
        (B, s, s) real >= 0, their stitching weights.
    coords : torch.Tensor
        (B, 2) float64 placement coordinates (x, y) in the canvas (origin already added).
    shape : tuple
        (H, W) canvas.
    iterations : int
        >= 0; 0 returns ``patches`` unchanged.

    Returns
    -------
    torch.Tensor
        (B, s, s) complex64, each patch times a unit-modulus constant.
    """
    from ptychobench.physics import extract_patches

    iterations = validate_phase_sync(iterations)
    p = patches.to(torch.complex64)
    w = weights.to(torch.float32)
    side = p.shape[-1]
    for _ in range(iterations):
        total, _ = overlay_patches((p * w).contiguous(), coords, shape, method="bilinear")
        others = extract_patches(total, coords, side, method="bilinear") - w * p
        r = (w * p.conj() * others).sum(dim=(-2, -1))
        unit = torch.where(r.abs() > 0, r / r.abs().clamp_min(1e-30), torch.ones_like(r))
        p = p * unit[:, None, None]
    return p


def support_window(
    N: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """(N, N) mask of the decoder's support: 1 on rows/cols ``[N/4, 3N/4)``, 0 elsewhere."""
    w = torch.zeros((N, N), dtype=dtype, device=device)
    w[N // 4 : 3 * N // 4, N // 4 : 3 * N // 4] = 1
    return w


def probe_weight(
    probe: torch.Tensor | np.ndarray, N: int | None = None, window: torch.Tensor | None = None
) -> torch.Tensor:
    """Illumination weight ``|P|² / max |P|²`` restricted to the support window, (N, N) float32.

    Parameters
    ----------
    probe : (N, N) complex (or real amplitude) probe
    N : expected side (checked when given)
    window : (N, N) real mask (default :func:`support_window`); the result is ``window · |P|²/max``
        with the maximum taken over the whole probe

    Raises
    ------
    ValueError
        Wrong shape, non-finite values, or a probe that is zero everywhere.
    """
    p = torch.as_tensor(probe).detach()
    side = int(p.shape[-1]) if p.ndim == 2 else -1
    if p.ndim != 2 or p.shape[0] != p.shape[1] or (N is not None and side != int(N)):
        want = f"({N}, {N})" if N is not None else "(N, N)"
        raise ValueError(
            f"probe weighting: expected a probe of shape {want}, found {tuple(p.shape)}"
        )
    # float64 until the end: a unit-modulus probe gives weights of exactly 1 (== "flat")
    intensity = p.to(torch.complex128 if p.is_complex() else torch.float64).abs().square()
    if not bool(torch.isfinite(intensity).all()):
        raise ValueError("probe weighting: probe has NaN or Inf values")
    peak = intensity.max()
    if not float(peak) > 0:
        raise ValueError("probe weighting: expected a probe with max |P|² > 0, found all zeros")
    win = support_window(side, device=intensity.device) if window is None else window
    return ((intensity / peak).to(torch.float32)) * win.to(intensity.device, torch.float32)


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
    M : central crop side (0 < M <= N); used by ``"flat"`` only (still validated), ignored by
        ``"probe"``, whose weight already confines each patch to the decoder's N/2 window
    origin : (x, y) added to every coordinate passed to :meth:`add` (lets callers pass centred
        positions and still land in the object frame)
    weighting : ``"flat"`` (uniform weight on the central M×M crop) or ``"probe"``
        (``w = |P|²/max|P|²`` on rows/cols ``[N/4, 3N/4)``)
    probe : (N, N) complex probe, required by ``"probe"``
    phase_sync : iterations of :func:`synchronise_phases` run by :meth:`result` before the
        patches are summed (0, the default: off, and patches are summed as they arrive)
    device : where the canvas lives (default CPU). On a GPU, patches coming from the model stay
        there: :meth:`add` neither copies them to the host nor waits for the GPU (explicit weight
        maps are checked on the device and any bad one is reported by :meth:`result`)
    """

    def __init__(
        self,
        shape: tuple[int, int],
        N: int,
        M: int,
        origin: tuple[float, float] = (0.0, 0.0),
        *,
        weighting: Weighting = "flat",
        probe: torch.Tensor | np.ndarray | None = None,
        phase_sync: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.weighting = validate_weighting(weighting)
        self.phase_sync = validate_phase_sync(phase_sync)
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.shape = (int(shape[0]), int(shape[1]))
        self.N = int(N)
        self.M = validate_crop_size(M, N)
        self.origin = torch.tensor(origin, dtype=torch.float64, device=self.device)
        self.probe_weight: torch.Tensor | None = None
        if self.weighting == "probe":
            if probe is None:
                raise ValueError(
                    "stitch weighting 'probe': expected the probe ((N, N) complex) to weight "
                    "pixels by |P|², found none"
                )
            self.probe_weight = probe_weight(probe, self.N).to(self.device)
        self.canvas = torch.zeros(self.shape, dtype=torch.complex64, device=self.device)
        self.weight = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        self._bad_weights = torch.zeros((), dtype=torch.bool, device=self.device)
        self.count = 0

    def add(
        self,
        patches: torch.Tensor | np.ndarray,
        coords: torch.Tensor | np.ndarray,
        weights: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Add (B, N, N) complex patches at (B, 2) coordinates (x, y).

        ``weights`` : optional (B, N, N) real, >= 0, one weight map per patch; replaces the
        default weight of either mode (the whole N×N patch counts, no crop).
        """
        p = torch.as_tensor(patches).detach().to(self.device, torch.complex64)
        c = torch.as_tensor(coords, dtype=torch.float64)
        if self.device.type == "cuda" and c.device.type == "cpu":
            c = c.pin_memory()  # a pageable copy would make the host wait for the GPU
        c = c.to(self.device, non_blocking=True) + self.origin
        if p.ndim != 3 or p.shape[-1] != self.N or p.shape[-2] != self.N:
            raise ValueError(f"patches: expected (B, {self.N}, {self.N}), found {tuple(p.shape)}")
        if c.shape != (p.shape[0], 2):
            raise ValueError(f"coords: expected ({p.shape[0]}, 2), found {tuple(c.shape)}")
        if weights is None and self.weighting == "flat":
            p = _central_crop(p, self.M).contiguous()
            w = torch.ones(p.shape, dtype=torch.float32)
        elif weights is None:
            w = self.probe_weight.expand(p.shape[0], self.N, self.N)
        else:
            w = torch.as_tensor(weights).detach().to(self.device)
            if w.is_complex() or tuple(w.shape) != tuple(p.shape):
                raise ValueError(
                    f"weights: expected real ({p.shape[0]}, {self.N}, {self.N}), found "
                    f"{'complex ' if w.is_complex() else ''}{tuple(w.shape)}"
                )
            w = w.to(torch.float32)
            bad = (~torch.isfinite(w)).any() | (w < 0).any()
            if self.device.type == "cpu" and bool(bad):
                raise ValueError("weights: expected finite values >= 0")
            self._bad_weights |= bad  # on a GPU: checked once, by result()
        w = w.contiguous()
        self.count += p.shape[0]
        if self.phase_sync:
            self._held.append((p, w, c))
        else:
            self._accumulate(p, w, c)

    def _accumulate(self, p: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> None:
        canvas, _ = overlay_patches((p * w).contiguous(), c, self.shape, method="bilinear")
        weight, _ = overlay_patches(w, c, self.shape, method="bilinear")
        self.canvas += canvas
        self.weight += weight.real if weight.is_complex() else weight

    def result(self, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W) complex64, coverage Σw (H, W) float32); zeros where Σw ≤ min_weight."""
        if bool(self._bad_weights):
            raise ValueError("weights: expected finite values >= 0 (a weight map added was not)")
        if self._held:
            # patches of equal side are synchronised together (flat crops, or N×N maps)
            sides = sorted({p.shape[-1] for p, _, _ in self._held})
            for side in sides:
                items = [t for t in self._held if t[0].shape[-1] == side]
                p = torch.cat([t[0] for t in items])
                w = torch.cat([t[1] for t in items])
                c = torch.cat([t[2] for t in items])
                p = synchronise_phases(p, w, c, self.shape, self.phase_sync)
                self._accumulate(p, w, c)
            self._held = []
        covered = self.weight > min_weight
        safe = torch.where(covered, self.weight, torch.ones_like(self.weight))
        img = torch.where(covered, self.canvas / safe, torch.zeros((), dtype=torch.complex64))
        return img.cpu().numpy(), self.weight.cpu().numpy()


def stitch(
    patches: np.ndarray | torch.Tensor,
    coords: np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    crop: int | None = None,
    *,
    weighting: Weighting = "flat",
    probe: torch.Tensor | np.ndarray | None = None,
    weights: torch.Tensor | np.ndarray | None = None,
    phase_sync: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stitch (B, N, N) complex patches at (B, 2) coords (x, y) into an (H, W) canvas.

    ``crop`` = M, the central crop kept from each patch by ``"flat"`` (default N/4 rounded to
    even; ignored by ``"probe"``). ``weighting``, ``probe``: see :class:`Stitcher`; ``weights``:
    optional (B, N, N) per-patch weight maps (see :meth:`Stitcher.add`); ``phase_sync``:
    iterations of :func:`synchronise_phases` (0 = off).
    Returns ``(image complex64, coverage float32)``.
    """
    p = torch.as_tensor(patches)
    N = int(p.shape[-1])
    M = max(2, 2 * round(N / 8)) if crop is None else crop
    s = Stitcher(shape, N, M, weighting=weighting, probe=probe, phase_sync=phase_sync)
    s.add(p, coords, weights)
    return s.result()
