"""Independent solvers: CDTools (autodiff ptychography) and PMACE (xptycho), fed our data.

Optional (``pip install -e '.[peers]'``). Each function takes a :class:`PtychoDataset` (its
diffraction, known probe and positions; ``objectGuess`` and ``Y`` are never read) and returns
the reconstruction-file contract in our object frame, as :func:`ptychobench.iterative.
reconstruct` does for pty-chi. Fair as the PtyChi arm is fair: the known probe, fixed, on the
photon scale the data alone give (:func:`ptychobench.iterative.probe_photon_scale`); the known
positions; a flat start (ones); no ground truth anywhere.

Conventions each library forces, and how they are mapped (tests prove each map by pushing the
true object through the library's own forward model and matching our expected counts):

CDTools 0.3
    Reads our CXI file (:func:`ptychobench.data.cxi.write_cxi`, the file a CDTools user gets)
    with ``Ptycho2DDataset.from_cxi``; ``FancyPtycho`` stores ``probe / probe_norm`` and pads its
    object by ``obj_padding`` = 200 px; our index = its index + ``min_translation`` − (N−1)/2
    (:func:`cdtools_to_our_frame`). Sub-pixel positions are kept (it sinc-shifts the probe).
PMACE (xptycho 0.1)
    Positions are (row, column) in **metres** and are **rounded to whole pixels**; the object
    grid is given explicitly (our frame plus a margin, origin at minus the margin) so its pixel
    (r, c) is ours (r − margin, c − margin). The geometry is a consistent stand-in
    (λ = 1 Å, z = 1 m, object pixel 10 nm): only the pixel frame matters to the far-field model.
    Its FFT is orthonormal and centred, as ours (intensities equal); frames are counts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.recon import Reconstruction

__all__ = [
    "CDToolsConfig",
    "PMACEConfig",
    "cdtools_reconstruct",
    "cdtools_to_our_frame",
    "missing_peer",
    "pmace_reconstruct",
    "pmace_scan",
]

#: The import name and the distribution of each peer library.
PEERS = {"cdtools": "cdtools-py", "xptycho": "xptycho"}


def missing_peer(module: str, arm: str) -> str | None:
    """One line telling how to install ``module`` for ``arm``, or None when it is importable."""
    if importlib.util.find_spec(module) is not None:
        return None
    return (
        f"install ptychobench[peers] for the {arm} arm (pip install -e '.[peers]'; "
        f"{PEERS.get(module, module)} is not installed)"
    )


def _blind(ds: PtychoDataset) -> PtychoDataset:
    """``ds`` without the truth and without the simulator's own scale (a solver cannot know
    it), so nothing truth-derived reaches a peer library through a file."""
    meta = {k: v for k, v in ds.metadata.items() if k != "scale"}
    meta["frame_shape"] = list(ds.frame_shape)
    return dataclasses.replace(ds, objectGuess=None, Y=None, metadata=meta)


def _photon_probe(ds: PtychoDataset) -> np.ndarray:
    from ptychobench.iterative import probe_photon_scale

    return (np.asarray(ds.probeGuess, np.complex128) * probe_photon_scale(ds)).astype(
        np.complex64
    )


def _meta(arm: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"arm": arm, "kind": "iterative", "seconds": seconds, "infer_s": 0.0,
            "refine_s": seconds, **extra}


# ----------------------------------------------------------------------------------- CDTools


class CDToolsConfig(BaseModel):
    """CDTools FancyPtycho, object only (probe, positions, background frozen), Adam.

    Schedule: CDTools' own ``Adam_optimize`` defaults (lr 0.005, batch 15) for the first
    ``1 - final_fraction`` of the epochs, then ``final_lr`` to settle the noise, as CDTools'
    examples end on a lower rate. Loss: its documented default ``amplitude mse`` (the Gaussian
    approximation of Poisson noise on the amplitude, stable from a flat start); ``poisson nll``
    is the alternative.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    lr: float = Field(0.005, gt=0)
    final_lr: float = Field(0.001, gt=0)
    final_fraction: float = Field(0.25, ge=0, lt=1)
    batch_size: int = Field(15, ge=1)
    loss: Literal["amplitude mse", "poisson nll"] = "amplitude mse"


def cdtools_to_our_frame(obj_cd: np.ndarray, min_t, N: int, shape: tuple[int, int]):
    """CDTools' object (its frame) → ours: our index = its index + min_translation − (N−1)/2.

    Placed at the nearest whole pixel: a sub-pixel resample spreads the large values CDTools
    leaves at the poorly lit scan edge over the image; the rest (< ½ px, zero for integer
    positions) is left to ``compare``'s registration, as for every arm. Returns (image, (row,
    col) residual px).
    """
    off = np.asarray(min_t, dtype=np.float64) - (N - 1) / 2
    whole = np.rint(off).astype(int)
    out = np.ones(shape, np.complex64)
    H, W = shape
    r0, c0 = max(0, whole[0]), max(0, whole[1])
    r1, c1 = min(H, whole[0] + obj_cd.shape[0]), min(W, whole[1] + obj_cd.shape[1])
    out[r0:r1, c0:c1] = obj_cd[r0 - whole[0] : r1 - whole[0], c0 - whole[1] : c1 - whole[1]]
    return out, (off - whole).tolist()


def cdtools_model(ds: PtychoDataset, workdir: Path, loss: str = "amplitude mse"):
    """(FancyPtycho, Ptycho2DDataset) for ``ds`` read from our CXI file, with the known
    photon-scaled probe set and every parameter but the object frozen."""
    from cdtools.datasets import Ptycho2DDataset
    from cdtools.models import FancyPtycho

    from ptychobench.data.cxi import write_cxi

    path = workdir / "scan.cxi"
    write_cxi(_blind(ds), path)
    dataset = Ptycho2DDataset.from_cxi(str(path))
    model = FancyPtycho.from_dataset(dataset, loss=loss)
    probe = torch.as_tensor(_photon_probe(ds))
    with torch.no_grad():
        model.probe.data[...] = 0
        model.probe.data[0] = probe.to(model.probe.dtype) / model.probe_norm
        model.background.data.zero_()
    for name, p in model.named_parameters():
        p.requires_grad_(name == "obj")
    return model, dataset


def cdtools_reconstruct(ds: PtychoDataset, config: CDToolsConfig | None = None, *,
                        device: str = "auto", seed: int = 0,
                        arm: str = "CDTools") -> Reconstruction:
    """CDTools on ``ds`` (see :class:`CDToolsConfig`); the object in our frame. ``seed``: the
    batch order (torch's generator)."""
    from ptychobench.iterative import _device, illumination_coverage

    cfg = config or CDToolsConfig()
    dev = _device(device)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="ptychobench_cdtools_") as tmp:
        model, dataset = cdtools_model(ds, Path(tmp), cfg.loss)
    model.to(device=dev)
    dataset.get_as(device=dev)
    tail = int(round(cfg.epochs * cfg.final_fraction))
    stages = [(cfg.epochs - tail, cfg.lr), (tail, cfg.final_lr)]
    losses: list[float] = []
    t0 = time.perf_counter()
    for n, lr in stages:
        if n:
            losses += [float(x) for x in model.Adam_optimize(
                n, dataset, lr=lr, batch_size=min(cfg.batch_size, ds.n), thread=False
            )]
    seconds = time.perf_counter() - t0
    obj = model.obj.detach().cpu().numpy()
    obj = obj[0] if obj.ndim == 3 else obj
    min_t = model.min_translation.detach().cpu().numpy().astype(np.float64)
    image, residual = cdtools_to_our_frame(obj.astype(np.complex64), min_t, ds.N, ds.frame_shape)
    if not np.isfinite(image).all():
        raise ValueError(f"{arm}: CDTools returned a non-finite object (loss {losses[-1]:.4g})")
    meta = _meta(arm, seconds, engine="cdtools FancyPtycho Adam", loss=cfg.loss,
                 epochs=cfg.epochs, final_loss=losses[-1], loss_history=losses,
                 frame_residual_px=residual, settings=cfg.model_dump(mode="json"),
                 versions={"cdtools": _version("cdtools-py")})
    return Reconstruction(image, illumination_coverage(ds, ds.frame_shape), meta)


# ------------------------------------------------------------------------------------- PMACE

#: The stand-in geometry (metres): only the pixel frame enters a far-field model.
_PMACE_WAVELENGTH = 1e-10
_PMACE_DISTANCE = 1.0
_PMACE_PIXEL = 1e-8
#: Object-grid margin (px) around our frame: a rounded position may put a patch 1 px outside.
_PMACE_MARGIN = 2


class PMACEConfig(BaseModel):
    """xptycho's PMACE with the known probe held fixed, from a flat object.

    ``object_data_fit`` and ``relaxation`` are xptycho's defaults (0.6 and 0.5); PMACE has no
    step size to tune: each patch's data-fit proximal step is exact, and the consensus averages
    the patches with ``|P|^1.25`` weights.
    """

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(100, ge=1)
    object_data_fit: float = Field(0.6, gt=0, le=1)
    relaxation: float = Field(0.5, ge=0, lt=1)


def pmace_scan(ds: PtychoDataset):
    """(xptycho Scan, PtychoModel) of ``ds`` on our frame (see the module docstring)."""
    import xptycho

    N = ds.N
    pitch = _PMACE_WAVELENGTH * _PMACE_DISTANCE / (N * _PMACE_PIXEL)  # detector pitch, m
    positions = np.stack([ds.ycoords, ds.xcoords], axis=1).astype(np.float64) * _PMACE_PIXEL
    counts = np.square(ds.diffraction.astype(np.float32))
    scan = xptycho.Scan(counts, positions, wavelength=_PMACE_WAVELENGTH,
                        det_distance=_PMACE_DISTANCE, det_pixel_pitch=pitch)
    model = xptycho.PtychoModel.from_scan(scan)
    m = _PMACE_MARGIN
    H, W = ds.frame_shape
    model.set_params(object_shape=(H + 2 * m, W + 2 * m),
                     object_origin=(-m * _PMACE_PIXEL, -m * _PMACE_PIXEL))
    assert math.isclose(model.sample_pixel_pitch, _PMACE_PIXEL, rel_tol=1e-9)
    return scan, model


def pmace_reconstruct(ds: PtychoDataset, config: PMACEConfig | None = None, *,
                      device: str = "auto", arm: str = "PMACE") -> Reconstruction:
    """PMACE on ``ds`` (see :class:`PMACEConfig`); the object in our frame."""
    from ptychobench.iterative import _device, illumination_coverage

    cfg = config or PMACEConfig()
    scan, model = pmace_scan(ds)
    model.set_params(object_data_fit=cfg.object_data_fit, relaxation=cfg.relaxation)
    model.configure_devices(devices=[_device(device)])
    m = _PMACE_MARGIN
    H, W = ds.frame_shape
    flat = np.ones((H + 2 * m, W + 2 * m), np.complex64)
    rounded = float(np.abs(ds.coords - np.rint(ds.coords)).max())
    t0 = time.perf_counter()
    sample = model.recon(scan, probe=_photon_probe(ds), init=flat, iterations=cfg.iterations,
                         verbose=0)
    seconds = time.perf_counter() - t0
    image = np.asarray(sample.object, np.complex64)[m : m + H, m : m + W]
    if not np.isfinite(image).all():
        raise ValueError(f"{arm}: PMACE returned a non-finite object")
    errors = [float(e) for e in sample.run.data_error]
    meta = _meta(arm, seconds, engine="xptycho PMACE", iterations=cfg.iterations,
                 positions_rounded_by_px=rounded, data_error_history=errors,
                 settings=cfg.model_dump(mode="json"), versions={"xptycho": _version("xptycho")})
    return Reconstruction(image, illumination_coverage(ds, ds.frame_shape), meta)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
