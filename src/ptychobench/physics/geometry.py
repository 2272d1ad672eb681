"""X-ray far-field geometry: photon energy, detector distance and pixel → object pixel size.

Pure numbers, no files. A far-field pattern of side ``N`` detector pixels of size ``p`` at
distance ``z`` samples the exit wave on an object-plane grid of pitch

    dx = λ z / (N p),        λ = h c / E.

Defaults are those of a fly64-like hard X-ray setup (an APS Velociprobe-style scan): 8.8 keV
photons (λ = 0.1409 nm), an Eiger-class 75 µm detector pixel at 2.0 m. At N = 64 that gives an
object pixel of 58.7 nm; at N = 32, 117.4 nm (a smaller detector crop samples the object more
coarsely — the field of view of a pattern is λz/p whatever N is).

A dataset records its geometry in ``metadata["geometry"]`` (:meth:`Geometry.to_metadata`); files
without one stay valid and are measured in pixels (:func:`geometry_of` returns ``None``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = [
    "DEFAULT_DETECTOR_DISTANCE_M",
    "DEFAULT_DETECTOR_PIXEL_M",
    "DEFAULT_ENERGY_EV",
    "Geometry",
    "energy_ev_from_wavelength",
    "format_length",
    "geometry_of",
    "probe_centre_offset",
    "wavelength_m",
]

#: Planck constant × speed of light (J·m), CODATA 2018 exact values.
HC_J_M = 6.62607015e-34 * 299792458.0
#: One electronvolt in joules (exact).
EV_J = 1.602176634e-19

DEFAULT_ENERGY_EV = 8800.0
DEFAULT_DETECTOR_DISTANCE_M = 2.0
DEFAULT_DETECTOR_PIXEL_M = 75e-6


def wavelength_m(energy_ev: float) -> float:
    """Photon wavelength (m) for an energy in eV: λ = hc / E."""
    if not (energy_ev > 0 and math.isfinite(energy_ev)):
        raise ValueError(f"photon energy: expected a positive number of eV, found {energy_ev}")
    return HC_J_M / (energy_ev * EV_J)


def energy_ev_from_wavelength(wavelength: float) -> float:
    """Photon energy (eV) for a wavelength in metres."""
    if not (wavelength > 0 and math.isfinite(wavelength)):
        raise ValueError(f"wavelength: expected a positive length in m, found {wavelength}")
    return HC_J_M / (wavelength * EV_J)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A far-field ptychography geometry (SI units; pixel sizes may differ in x and y).

    Attributes
    ----------
    energy_ev : float
        Photon energy (eV).
    detector_distance_m : float
        Sample-to-detector distance (m).
    detector_pixel_x_m, detector_pixel_y_m : float
        Detector pixel pitch along columns (x) and rows (y) (m).
    N : int
        Pattern side (detector pixels used).
    """

    energy_ev: float
    detector_distance_m: float
    detector_pixel_x_m: float
    detector_pixel_y_m: float
    N: int

    def __post_init__(self) -> None:
        wavelength_m(self.energy_ev)  # validates the energy
        for name in ("detector_distance_m", "detector_pixel_x_m", "detector_pixel_y_m"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"geometry: {name}: expected a positive length in m, found {v}")
        if self.N < 1:
            raise ValueError(f"geometry: N: expected >= 1, found {self.N}")

    @classmethod
    def default(cls, N: int) -> Geometry:
        """The fly64-like default geometry for patterns of side ``N``."""
        return cls(
            DEFAULT_ENERGY_EV,
            DEFAULT_DETECTOR_DISTANCE_M,
            DEFAULT_DETECTOR_PIXEL_M,
            DEFAULT_DETECTOR_PIXEL_M,
            int(N),
        )

    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.energy_ev)

    @property
    def energy_j(self) -> float:
        return self.energy_ev * EV_J

    @property
    def object_pixel_x_m(self) -> float:
        """Object-plane pitch along x (m): λ z / (N p_x)."""
        return self.wavelength_m * self.detector_distance_m / (self.N * self.detector_pixel_x_m)

    @property
    def object_pixel_y_m(self) -> float:
        """Object-plane pitch along y (m): λ z / (N p_y)."""
        return self.wavelength_m * self.detector_distance_m / (self.N * self.detector_pixel_y_m)

    @property
    def object_pixel_m(self) -> float:
        """The object pixel size (m); requires square object pixels."""
        if not math.isclose(self.object_pixel_x_m, self.object_pixel_y_m, rel_tol=1e-9):
            raise ValueError(
                "geometry: expected square object pixels, found "
                f"{self.object_pixel_x_m:.6g} m × {self.object_pixel_y_m:.6g} m"
            )
        return self.object_pixel_x_m

    def to_metadata(self) -> dict[str, Any]:
        """JSON record for ``metadata["geometry"]`` (derived lengths included, for readers)."""
        return {
            "energy_eV": self.energy_ev,
            "wavelength_m": self.wavelength_m,
            "detector_distance_m": self.detector_distance_m,
            "detector_pixel_x_m": self.detector_pixel_x_m,
            "detector_pixel_y_m": self.detector_pixel_y_m,
            "N": self.N,
            "object_pixel_x_m": self.object_pixel_x_m,
            "object_pixel_y_m": self.object_pixel_y_m,
        }

    @classmethod
    def from_metadata(cls, record: dict[str, Any], N: int | None = None) -> Geometry:
        """Inverse of :meth:`to_metadata` (derived lengths are recomputed, not trusted)."""
        try:
            geo = cls(
                float(record["energy_eV"]),
                float(record["detector_distance_m"]),
                float(record["detector_pixel_x_m"]),
                float(record["detector_pixel_y_m"]),
                int(record["N"] if N is None else N),
            )
        except KeyError as exc:
            raise ValueError(
                f"metadata 'geometry': expected key {exc.args[0]!r}, found keys {sorted(record)}"
            ) from None
        return geo


def geometry_of(metadata: dict[str, Any], N: int | None = None) -> Geometry | None:
    """The dataset's :class:`Geometry` from its metadata, or ``None`` (lengths in pixels)."""
    record = metadata.get("geometry")
    if not record:
        return None
    return Geometry.from_metadata(record, N)


def probe_centre_offset(N: int) -> float:
    """``δ = N // 2 − (N − 1) / 2`` (px): 0.5 for even N, 0 for odd N.

    A ptychobench coordinate lands on patch pixel ``N // 2`` (the FFT's zero frequency);
    CDTools, Ptychodus and pty-chi put a scan position on the probe array's geometric centre
    ``(N − 1) / 2``. The same patch is cut when their position is ours minus δ, so every file
    in metres writes ``(x − δ) · dx``.
    """
    return N // 2 - (N - 1) / 2


def format_length(metres: float) -> str:
    """A length with a readable unit: ``'58.7 nm'``, ``'1.23 µm'``, ``'0.45 mm'``."""
    a = abs(metres)
    if a < 1e-6:
        return f"{metres * 1e9:.3g} nm"
    if a < 1e-3:
        return f"{metres * 1e6:.3g} µm"
    return f"{metres * 1e3:.3g} mm"
