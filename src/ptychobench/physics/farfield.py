"""Exit wave and far-field (Fraunhofer) propagation with the orthonormal FFT.

``Ψ = P · O_patch``; ``F = fftshift(fft2(Ψ, norm="ortho"))`` with DC at ``(N//2, N//2)``;
``I = |F|²``. Parseval: ``Σ|Ψ|² = Σ I``.
"""

from __future__ import annotations

import torch

__all__ = ["exit_wave", "farfield", "intensity", "amplitude", "forward_amplitude"]


def exit_wave(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """``Ψ = P · O``: probe (N, N) complex times object patches (..., N, N) complex."""
    return probe * patches


def farfield(psi: torch.Tensor) -> torch.Tensor:
    """Complex far field (..., N, N) of exit waves (..., N, N), orthonormal, DC at (N//2, N//2)."""
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def intensity(psi: torch.Tensor) -> torch.Tensor:
    """Far-field intensity ``|farfield(Ψ)|²``, real (..., N, N)."""
    f = farfield(psi)
    return f.real.square() + f.imag.square()


def amplitude(psi: torch.Tensor) -> torch.Tensor:
    """Far-field amplitude ``|farfield(Ψ)|``, real (..., N, N)."""
    return farfield(psi).abs()


def forward_amplitude(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Noiseless far-field amplitude of ``probe · patches`` (shared by simulation and the PINN)."""
    return amplitude(exit_wave(probe, patches))
