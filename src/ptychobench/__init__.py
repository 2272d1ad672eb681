"""ptychobench: which ptychographic reconstruction method works best at which dose and overlap.

Conventions (SPEC §1) hold everywhere in the package:

* arrays are ``(row, col) = (y, x)``; scan coordinates are ``x`` = column, ``y`` = row, in object
  pixels, float64; a coordinate is the object location that lands on patch pixel ``(N//2, N//2)``;
* translations ``t`` are given as ``(..., 2)`` arrays ordered ``(x, y)``;
* diffraction is amplitude = sqrt(photon counts), float32;
* FFTs are orthonormal and ``fftshift`` puts DC at ``(N//2, N//2)``;
* every random draw comes from an explicitly seeded generator.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
