"""An example ptychobench arm from a separate package: a few sweeps of ePIE in plain numpy.

Registered under the entry-point group ``ptychobench.arms`` as ``Backprojection`` (see this
package's ``pyproject.toml``), so a design can list it like a built-in arm. It uses only what a
fair arm may see: the diffraction amplitudes, the scan positions and the known probe; no
training, no ground truth (``objectGuess`` and ``Y`` are never read).

Forward model (ptychobench's, :mod:`ptychobench.physics`): the object location at scan position
``r = (x, y)`` lands on patch pixel ``(N//2, N//2)``; ``psi = P * O_patch``;
``F = fftshift(fft2(psi, norm="ortho"))``; the data are ``|F|`` on the photon scale. Sub-pixel
positions are handled by moving the *probe* by the fractional part of ``r`` (a Fourier shift)
over an integer object window, which leaves the far-field modulus unchanged.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from ptychobench.arms import Arm, ArmSettings, Needs
from ptychobench.data.recon import Reconstruction

__all__ = ["BackprojectionArm", "BackprojectionSettings"]


class BackprojectionSettings(ArmSettings):
    """``[arms.Backprojection]``: ePIE sweeps over every pattern and the object step size."""

    iterations: int = Field(20, ge=1, description="ePIE sweeps over all diffraction patterns")
    alpha: float = Field(0.5, gt=0, le=1, description="ePIE object step (fraction of max|P|²)")


def _shifted(probe: np.ndarray, shift_xy: np.ndarray) -> np.ndarray:
    """``probe(k - shift)`` on the same N×N grid for each (x, y) shift: (n, N, N)."""
    k = np.fft.fftfreq(probe.shape[-1])
    rx = np.exp(-2j * np.pi * k[None, :] * shift_xy[:, 0, None])
    ry = np.exp(-2j * np.pi * k[None, :] * shift_xy[:, 1, None])
    spec = np.fft.fft2(probe)[None] * ry[:, :, None] * rx[:, None, :]
    return np.fft.ifft2(spec)


class BackprojectionArm(Arm):
    """ePIE with the known probe (fixed), flat start, numpy only, deterministic."""

    type_name = "Backprojection"
    Settings = BackprojectionSettings
    needs = Needs()  # the probe, nothing else: no training split, no truth
    summary = "example plugin: numpy ePIE with the known probe, flat start"

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        if ds.probeGuess is None:
            raise ValueError(f"{self.name}: the data have no probe (probeGuess)")
        t0 = time.perf_counter()
        s = self.settings
        N, (H, W) = ds.N, ds.frame_shape
        amp = np.fft.ifftshift(ds.diffraction.astype(np.float64), axes=(-2, -1))  # DC at [0, 0]
        # the probe on the data's photon scale: a flat object then predicts the measured photons
        photons = float(np.mean(np.sum(amp**2, axis=(-2, -1))))
        probe = ds.probeGuess.astype(np.complex128)
        probe *= np.sqrt(photons / float(np.sum(np.abs(probe) ** 2)))
        # integer window corners (in a canvas padded by N) and the probe moved by the remainder
        r = np.stack([ds.xcoords, ds.ycoords], axis=-1).astype(np.float64)
        base = np.round(r).astype(np.int64)
        probes = _shifted(probe, r - base)
        corner = base - N // 2 + N  # (x, y) of the window's top-left pixel in the canvas
        if corner.min() < 0 or np.any(corner + N > [W + 2 * N, H + 2 * N]):
            raise ValueError(f"{self.name}: scan positions lie outside the frame {H}x{W}")
        step = s.alpha / np.max(np.abs(probes) ** 2, axis=(-2, -1))
        obj = np.ones((H + 2 * N, W + 2 * N), np.complex128)
        rng = np.random.default_rng(ctx.solver_seed)
        for _ in range(s.iterations):
            for j in rng.permutation(ds.n):
                x, y = corner[j]
                win = obj[y : y + N, x : x + N]  # a view: updated in place
                psi = probes[j] * win
                spec = np.fft.fft2(psi, norm="ortho")
                spec = amp[j] * np.exp(1j * np.angle(spec))  # measured modulus, kept phase
                dpsi = np.fft.ifft2(spec, norm="ortho") - psi
                win += step[j] * np.conj(probes[j]) * dpsi
        coverage = np.zeros(obj.shape, np.float64)
        p2 = np.abs(ds.probeGuess.astype(np.complex128)) ** 2
        for x, y in corner:
            coverage[y : y + N, x : x + N] += p2
        seconds = time.perf_counter() - t0
        meta = {
            "arm": self.name,
            "algorithm": "ePIE (numpy, known probe)",
            "iterations": s.iterations,
            "n_patterns": ds.n,
            "seconds": seconds,
            "infer_s": 0.0,
            "refine_s": seconds,
            "train_s": 0.0,
        }
        crop = (slice(N, N + H), slice(N, N + W))
        return Reconstruction(
            obj[crop].astype(np.complex64), coverage[crop].astype(np.float32), meta
        )
