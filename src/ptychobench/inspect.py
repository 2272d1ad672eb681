"""Dataset summary and figure (``ptychobench inspect``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.data.dataset import PtychoDataset, photons_per_pattern

__all__ = ["summarize", "write_figure"]


def summarize(ds: PtychoDataset, neighbor_count: int = 4) -> dict[str, Any]:
    """JSON-ready summary: sizes, dose and realised photons, coordinate ranges, probe, overlap.

    With a geometry in the metadata, lengths are also given in physical units: the object pixel
    (nm), the scan step (median nearest-neighbour distance) and the probe diameter (µm).
    Without one, ``lengths`` says they are in pixels only.
    """
    from scipy.spatial import cKDTree

    from ptychobench.data.overlap import overlap_report
    from ptychobench.physics.geometry import geometry_of
    from ptychobench.physics.probes import probe_info

    photons = photons_per_pattern(ds.diffraction)
    info = probe_info(ds.probeGuess) if ds.probeGuess is not None else None
    meta = ds.metadata
    if ds.n > 1:
        dist, _ = cKDTree(ds.coords).query(ds.coords, k=2)
        step_px = float(np.median(dist[:, 1]))
    else:
        step_px = None
    summary: dict[str, Any] = {
        "n": ds.n,
        "N": ds.N,
        "dose": meta.get("dose"),
        "realised_mean_photons": float(photons.mean()),
        "photons_std": float(photons.std()),
        "x_range": [float(ds.xcoords.min()), float(ds.xcoords.max())],
        "y_range": [float(ds.ycoords.min()), float(ds.ycoords.max())],
        "x_mean": float(ds.xcoords.mean()),
        "y_mean": float(ds.ycoords.mean()),
        "scan_step_px": step_px,
        "object_shape": None if ds.objectGuess is None else list(ds.objectGuess.shape),
        "has_Y": ds.Y is not None,
        "has_probe": ds.probeGuess is not None,
        "probe_fwhm_px": None if info is None else info.fwhm_px,
        "probe_effective_diameter_px": None if info is None else info.effective_diameter_px,
        "groups": None if ds.groups is None else list(ds.groups.shape),
        "transformations": [t.get("op", "?") for t in meta.get("transformations", [])],
    }
    geo = geometry_of(meta, ds.N)
    if geo is None:
        summary["lengths"] = "pixels only (no geometry in the file)"
    else:
        px = geo.object_pixel_m
        summary["lengths"] = "pixels and metres (geometry in the file)"
        summary["energy_keV"] = geo.energy_ev / 1e3
        summary["wavelength_nm"] = geo.wavelength_m * 1e9
        summary["detector_distance_m"] = geo.detector_distance_m
        summary["detector_pixel_um"] = geo.detector_pixel_x_m * 1e6
        summary["object_pixel_nm"] = px * 1e9
        summary["scan_step_um"] = None if step_px is None else step_px * px * 1e6
        if info is not None:
            summary["probe_fwhm_um"] = info.fwhm_px * px * 1e6
            summary["probe_effective_diameter_um"] = info.effective_diameter_px * px * 1e6
    if info is None:
        summary["overlap"] = "not computed: no probe (its diameter sets the overlap)"
    else:
        summary["overlap"] = overlap_report(
            ds, info.effective_diameter_px, neighbor_count=neighbor_count
        )
    return summary


def write_figure(ds: PtychoDataset, path: str | os.PathLike, n_patterns: int = 3) -> None:
    """PNG: object amplitude and phase with scan positions, probe, a few patterns (log scale).

    Written atomically (temporary file in the same directory, then renamed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ncols = 2 + 2 + n_patterns
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 * ncols, 3.4), constrained_layout=True)
    if ds.objectGuess is not None:
        amp = np.abs(ds.objectGuess)
        phase = np.angle(ds.objectGuess)
        for ax, img, title, cmap in (
            (axes[0], amp, "object amplitude", "gray"),
            (axes[1], phase, "object phase (rad)", "twilight"),
        ):
            im = ax.imshow(img, cmap=cmap)
            ax.plot(ds.xcoords, ds.ycoords, ".", ms=1.5, color="tab:orange")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
    else:
        for ax in axes[:2]:
            ax.plot(ds.xcoords, ds.ycoords, ".", ms=1.5)
            ax.invert_yaxis()
            ax.set_aspect("equal")
            ax.set_title("scan positions (no object)")
    if ds.probeGuess is not None:
        im = axes[2].imshow(np.abs(ds.probeGuess), cmap="magma")
        axes[2].set_title("probe amplitude")
        fig.colorbar(im, ax=axes[2], shrink=0.8)
        im = axes[3].imshow(np.angle(ds.probeGuess), cmap="twilight")
        axes[3].set_title("probe phase (rad)")
        fig.colorbar(im, ax=axes[3], shrink=0.8)
    else:
        for ax in axes[2:4]:
            ax.set_title("no probe in the file")
    picks = np.linspace(0, ds.n - 1, n_patterns).round().astype(int)
    for ax, i in zip(axes[4:], picks, strict=False):
        im = ax.imshow(np.log10(1 + np.square(ds.diffraction[i], dtype=np.float64)), cmap="viridis")
        ax.set_title(f"pattern {i}: log10(1+counts)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=90)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
