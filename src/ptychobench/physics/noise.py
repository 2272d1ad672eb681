"""Dose scaling and seeded Poisson counting (SPEC §2).

Dose = expected total photons per diffraction pattern averaged over the dataset. One dataset-level
amplitude scale ``s`` satisfies ``s² · mean_patterns(Σ|P·O_patch|²) = dose``; counts are
``n ~ Poisson(s² · I)`` and the stored data is the amplitude ``sqrt(n)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dose_scale", "poisson_counts", "make_generator"]


def dose_scale(mean_energy: float, dose: float) -> float:
    """Amplitude scale ``s = sqrt(dose / mean_energy)``.

    Parameters
    ----------
    mean_energy : float
        Mean over patterns of ``Σ|P·O_patch|²`` (= mean total intensity, by Parseval).
    dose : float
        Expected photons per pattern.
    """
    if not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"dose: expected a positive number of photons per pattern, found {dose}")
    if not (math.isfinite(mean_energy) and mean_energy > 0):
        raise ValueError(
            f"mean exit-wave energy: expected > 0 (all-zero probe or object?), found {mean_energy}"
        )
    return math.sqrt(dose / mean_energy)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def poisson_counts(expected: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photon counts ``n ~ Poisson(expected)`` (same shape, float) from a seeded generator."""
    if bool((expected < 0).any()):
        raise ValueError("expected counts: found negative values")
    return torch.poisson(expected, generator=generator)
