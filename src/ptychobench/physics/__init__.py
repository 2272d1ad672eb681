"""Physics: pure, batched, differentiable torch operators (SPEC §2).

Knows nothing about files, models or studies. Probes, objects and scans are numpy generators.
"""

from ptychobench.physics.farfield import (
    amplitude,
    exit_wave,
    farfield,
    forward_amplitude,
    intensity,
)
from ptychobench.physics.noise import dose_scale, make_generator, poisson_counts
from ptychobench.physics.patches import extract_patches, normalise_overlay, overlay_patches
from ptychobench.physics.translate import shift, shift_bilinear, shift_fourier

__all__ = [
    "amplitude",
    "dose_scale",
    "exit_wave",
    "extract_patches",
    "farfield",
    "forward_amplitude",
    "intensity",
    "make_generator",
    "normalise_overlay",
    "overlay_patches",
    "poisson_counts",
    "shift",
    "shift_bilinear",
    "shift_fourier",
]
