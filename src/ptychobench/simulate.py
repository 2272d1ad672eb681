"""Simulation: object + probe + scan + dose + seeds → :class:`PtychoDataset` with ground truth.

The forward model is the physics package's: Fourier-interpolated patch extraction at the scan
coordinates, ``Ψ = P · O_patch``, orthonormal far field, one dataset-level dose scale ``s`` and
seeded Poisson counts (SPEC §2). Everything is vectorised over chunks of positions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptychobench import __version__
from ptychobench.data.dataset import SCHEMA_VERSION, PtychoDataset
from ptychobench.physics import (
    dose_scale,
    extract_patches,
    intensity,
    make_generator,
    poisson_counts,
)
from ptychobench.physics.geometry import (
    DEFAULT_DETECTOR_DISTANCE_M,
    DEFAULT_DETECTOR_PIXEL_M,
    DEFAULT_ENERGY_EV,
    Geometry,
)
from ptychobench.physics.objects import make_object
from ptychobench.physics.probes import make_probe, probe_info
from ptychobench.physics.scans import make_scan

__all__ = ["SimulationConfig", "simulate", "resolve_probe", "resolve_object", "scan_positions"]


class SimulationConfig(BaseModel):
    """Everything that determines a simulated dataset (same config ⇒ same bytes on CPU).

    Units: pixels for sizes and steps, photons per pattern for ``dose``, radians for phases;
    the X-ray geometry (energy, distance, detector pixel) only sets the physical length of an
    object pixel, λz/(N·p) (:mod:`ptychobench.physics.geometry`), recorded in the metadata.
    """

    @property
    def geometry(self) -> Geometry:
        return Geometry(
            self.energy_ev,
            self.detector_distance_m,
            self.detector_pixel_m,
            self.detector_pixel_m,
            self.N,
        )

    model_config = ConfigDict(extra="forbid")

    N: int = Field(64, ge=8, le=1024, description="diffraction pattern side (px)")
    object: str = Field(
        "image:camera+astronaut",
        description="lines | lines:coupled | grf | image:A+B | path to .npz/.cxi",
    )
    object_size: int = Field(256, ge=16, description="object side (px) for generated objects")
    a_min: float = Field(0.5, ge=0.0, lt=1.0, description="minimum object amplitude")
    phi_max: float = Field(math.pi / 2, gt=0.0, le=math.pi, description="phase range ±phi_max")
    probe: str = Field("fly64", description="fly64 | gaussian | disk | kb | path to .npz/.cxi")
    scan: Literal["random", "raster", "fermat"] = "raster"
    step_px: float | None = Field(None, gt=0.0)
    overlap: float | None = Field(None, ge=0.0, lt=1.0)
    n_positions: int | None = Field(None, ge=1)
    jitter_px: float = Field(0.0, ge=0.0, description="raster jitter (uniform ± px)")
    dose: float = Field(1e4, gt=0.0, description="expected photons per pattern")
    noise: Literal["poisson", "none"] = "poisson"
    seed: int = Field(0, ge=0, description="seed of object and scan draws")
    scan_seed: int | None = Field(
        None, ge=0, description="seed of the scan draw (jitter, random/fermat) (default: seed)"
    )
    noise_seed: int | None = Field(
        None, ge=0, description="seed of the Poisson draw (default seed+1)"
    )
    energy_ev: float = Field(
        DEFAULT_ENERGY_EV, gt=0.0, description="photon energy (eV); fly64-like default 8.8 keV"
    )
    detector_distance_m: float = Field(
        DEFAULT_DETECTOR_DISTANCE_M, gt=0.0, description="sample-detector distance (m)"
    )
    detector_pixel_m: float = Field(
        DEFAULT_DETECTOR_PIXEL_M, gt=0.0, description="detector pixel pitch (m)"
    )
    interpolation: Literal["fourier", "bilinear"] = "fourier"
    chunk_size: int = Field(1024, ge=1, description="patterns per vectorised chunk")
    device: str = "cpu"

    @model_validator(mode="after")
    def _one_spacing(self) -> SimulationConfig:
        given = [k for k in ("step_px", "overlap", "n_positions") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of step_px, overlap, n_positions; found {given}")
        if not given:
            self.overlap = 0.7
        if not math.isfinite(self.dose):
            raise ValueError(f"dose: expected a finite number of photons, found {self.dose}")
        return self

    @property
    def resolved_scan_seed(self) -> int:
        return self.seed if self.scan_seed is None else self.scan_seed

    @property
    def resolved_noise_seed(self) -> int:
        return self.seed + 1 if self.noise_seed is None else self.noise_seed


_SPACING = ("step_px", "overlap", "n_positions")


def _is_path(name: str) -> bool:
    # a generator name never has an extension or a slash; a stray file called "grf" must not win
    return not name.startswith("image:") and (
        Path(name).suffix.lower() in (".npz", ".cxi", ".h5") or "/" in name or "\\" in name
    )


def resolve_probe(name: str, N: int) -> np.ndarray:
    """(N, N) complex64 probe by name (fly64, gaussian, disk, kb) or from an NPZ/CXI file."""
    if _is_path(name):
        from ptychobench.data.io import load_probe

        probe = load_probe(name)
        if probe.shape != (N, N):
            raise ValueError(f"probe file {name}: expected shape ({N}, {N}), found {probe.shape}")
        return probe
    return make_probe(name, N)


def resolve_object(cfg: SimulationConfig) -> np.ndarray:
    """(H, W) complex64 object by generator spec or from an NPZ/CXI file."""
    if _is_path(cfg.object):
        from ptychobench.data.io import load_object

        return load_object(cfg.object)
    return make_object(
        cfg.object, cfg.object_size, a_min=cfg.a_min, phi_max=cfg.phi_max, seed=cfg.seed
    )


def scan_positions(
    cfg: SimulationConfig, probe: np.ndarray, object_shape: tuple[int, int]
) -> np.ndarray:
    """(n, 2) float64 scan coordinates (x, y) that :func:`simulate` uses for ``cfg`` — cheap
    (no diffraction), so a study can count its positions before it runs."""
    return make_scan(
        cfg.scan,
        object_shape,
        cfg.N,
        step_px=cfg.step_px,
        overlap=cfg.overlap,
        n_positions=cfg.n_positions,
        probe_diameter_px=probe_info(probe).effective_diameter_px,
        jitter_px=cfg.jitter_px,
        seed=cfg.resolved_scan_seed,
    )


def simulate(config: SimulationConfig | None = None, **overrides) -> PtychoDataset:
    """Simulate a ptychography dataset with ground truth.

    Parameters
    ----------
    config : SimulationConfig, optional
        Defaults to ``SimulationConfig()``; keyword ``overrides`` update it.

    Returns
    -------
    PtychoDataset with ``diffraction`` (n, N, N) float32 amplitude = sqrt(counts),
    ``probeGuess``, ``xcoords``/``ycoords``, ``objectGuess`` and ``Y`` (n, N, N) complex64 object
    patches; ``metadata`` records dose, scale, realised photons, seeds and the config.
    """
    cfg = config or SimulationConfig()
    if overrides:
        base = cfg.model_dump()
        if any(overrides.get(k) is not None for k in _SPACING):
            # one spacing at a time: an override replaces the base's (possibly defaulted) one
            base = {k: v for k, v in base.items() if k not in _SPACING}
        cfg = SimulationConfig.model_validate({**base, **overrides})
    N = cfg.N
    device = torch.device(cfg.device)
    probe_np = resolve_probe(cfg.probe, N)
    obj_np = resolve_object(cfg)
    info = probe_info(probe_np)
    coords = scan_positions(cfg, probe_np, obj_np.shape)
    n = coords.shape[0]
    obj = torch.from_numpy(np.ascontiguousarray(obj_np, dtype=np.complex64)).to(device)
    probe = torch.from_numpy(np.ascontiguousarray(probe_np, dtype=np.complex64)).to(device)
    coords_t = torch.from_numpy(coords).to(device)

    Y = torch.empty((n, N, N), dtype=torch.complex64, device=device)
    energy = torch.empty(n, dtype=torch.float64, device=device)
    for start in range(0, n, cfg.chunk_size):
        sl = slice(start, start + cfg.chunk_size)
        Y[sl] = extract_patches(obj, coords_t[sl], N, method=cfg.interpolation)
        energy[sl] = (probe * Y[sl]).abs().square().sum(dim=(-2, -1), dtype=torch.float64)
    scale = dose_scale(float(energy.mean()), cfg.dose)

    generator = make_generator(cfg.resolved_noise_seed, device)
    diffraction = torch.empty((n, N, N), dtype=torch.float32, device=device)
    photons = torch.empty(n, dtype=torch.float64, device=device)
    for start in range(0, n, cfg.chunk_size):
        sl = slice(start, start + cfg.chunk_size)
        expected = intensity(probe * Y[sl]).to(torch.float64) * scale**2
        counts = poisson_counts(expected, generator) if cfg.noise == "poisson" else expected
        photons[sl] = counts.sum(dim=(-2, -1))
        diffraction[sl] = counts.sqrt().to(torch.float32)

    metadata = {
        "schema_version": SCHEMA_VERSION,
        "creator": f"ptychobench {__version__} simulate",
        "dose": cfg.dose,
        "scale": scale,
        "realised_mean_photons": float(photons.mean()),
        "realised_photons_std": float(photons.std()) if n > 1 else 0.0,
        "noise": cfg.noise,
        "seeds": {
            "simulation": cfg.seed,
            "scan": cfg.resolved_scan_seed,
            "noise": cfg.resolved_noise_seed,
        },
        "probe": {
            "name": cfg.probe,
            "fwhm_px": info.fwhm_px,
            "effective_diameter_px": info.effective_diameter_px,
        },
        "geometry": cfg.geometry.to_metadata(),
        "simulation": cfg.model_dump(mode="json", exclude={"device"}),
        "transformations": [],
        "parents": [],
    }
    return PtychoDataset(
        diffraction=diffraction.cpu().numpy(),
        probeGuess=probe_np.astype(np.complex64),
        xcoords=coords[:, 0].astype(np.float64).copy(),
        ycoords=coords[:, 1].astype(np.float64).copy(),
        objectGuess=obj_np.astype(np.complex64),
        Y=Y.cpu().numpy(),
        metadata=metadata,
    )
