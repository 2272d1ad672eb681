"""The iterative arm: an adapter around pty-chi (SPEC §6).

Conventions that bite (pinned by tests):

* pty-chi's far field uses the unnormalised FFT; our data use the orthonormal one, so pty-chi gets
  the probe divided by N: ``|FFT(P/N · O)|² = |FFT_ortho(P · O)|²``.
* Our data have DC at ``(N//2, N//2)``: ``data_options.fft_shift = True``; pty-chi wants intensity.
* Positions: pty-chi maps ``position + origin`` to the patch centre at pixel ``(N−1)/2``; we hand it
  the patch's top-left corner ``coord − N/2`` with the origin specified at ``((N−1)/2, (N−1)/2)``,
  which reproduces our forward model for the object buffer = the object's pixel frame.
* A known, fixed probe must not be rescaled: LSQML's first-epoch probe-intensity rescaling and the
  object/probe ambiguity removal are switched off unless the probe is refined.

Fair by default: object initialised to ones, known probe, known positions, every pattern of the
dataset. ``init_from_truth`` is a labelled diagnostic only. ``init_object`` starts from another
arm's reconstruction (the PtychoPINN+LSQML hybrid): its covered pixels as they are, the uncovered
ones at the flat start value 1 — no ground truth involved.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ptychobench.data.dataset import DatasetError, PtychoDataset, photons_per_pattern
from ptychobench.data.recon import Reconstruction

__all__ = [
    "IterativeConfig",
    "InitObjectError",
    "initial_object",
    "reconstruct",
    "ptychi_available",
    "illumination_coverage",
]

log = logging.getLogger(__name__)

BUFFER_PAD = 4
FLAT_START = 1.0 + 0.0j


class InitObjectError(ValueError):
    """A start object that cannot be used (shape, values, coverage); the message says which."""


def initial_object(
    obj: np.ndarray,
    coverage: np.ndarray | None,
    shape: tuple[int, int],
    source: str = "init object",
    min_coverage: float = 1e-3,
) -> np.ndarray:
    """A reconstruction as pty-chi's start object, in the dataset's object frame.

    Parameters
    ----------
    obj : np.ndarray
        (H, W) complex reconstruction in the object frame (another arm's output).
    coverage : np.ndarray, optional
        (H, W) its weight / coverage map; pixels at or below ``min_coverage`` · max are replaced by
        the flat start value (1), so nothing the arm did not reconstruct enters the start.
    shape : tuple
        (H, W) the dataset's object frame.

    Returns
    -------
    np.ndarray
        (H, W) complex64.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2 or tuple(obj.shape) != tuple(shape):
        raise InitObjectError(
            f"{source}: expected a (H, W) = {tuple(shape)} object in the dataset's frame, "
            f"found shape {obj.shape}"
        )
    if not np.iscomplexobj(obj):
        raise InitObjectError(f"{source}: expected a complex object, found {obj.dtype}")
    cov = np.ones(shape, np.float32) if coverage is None else np.asarray(coverage)
    if cov.shape != obj.shape:
        raise InitObjectError(f"{source}: coverage: expected shape {obj.shape}, found {cov.shape}")
    peak = float(np.nanmax(cov)) if cov.size else 0.0
    covered = cov > min_coverage * peak if peak > 0 else np.zeros(shape, bool)
    if not covered.any():
        raise InitObjectError(f"{source}: expected some covered pixels (coverage > 0), found none")
    bad = covered & ~np.isfinite(obj)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise InitObjectError(
            f"{source}: expected finite values, found {int(bad.sum())} non-finite pixels "
            f"(first at y={y}, x={x})"
        )
    return np.where(covered, obj, FLAT_START).astype(np.complex64)


#: pty-chi's engines the arm can run (LSQML; the PIE family; difference map; RAAR).
Engine = Literal["lsqml", "epie", "rpie", "pie", "dm", "raar"]
PIE_FAMILY = ("epie", "rpie", "pie")
ALGORITHM = {"lsqml": "LSQML", "epie": "ePIE", "rpie": "rPIE", "pie": "PIE", "dm": "DM",
             "raar": "RAAR"}


class IterativeConfig(BaseModel):
    """Settings of the pty-chi arm."""

    model_config = ConfigDict(extra="forbid")

    engine: Engine = "lsqml"
    epochs: int = Field(100, ge=1)
    batch_size: int | None = Field(
        None, ge=1, description="default: 100 (LSQML, DM, RAAR), 10 (the PIE family)"
    )
    step_size: float | None = Field(
        None, gt=0, description="the object update's step (default: pty-chi's, 1)"
    )
    alpha: float | None = Field(
        None, gt=0, le=1, description="PIE family: the object update's regulariser (pty-chi: 0.1)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    noise_model: Literal["gaussian", "poisson"] = "gaussian"
    refine_probe: bool = False
    init_from_truth: bool = False
    probe_scale: float | None = Field(
        None, gt=0, description="probe amplitude factor to photon units (default: from the data)"
    )
    seed: int = 0
    progress: bool = True


def ptychi_available() -> tuple[bool, str]:
    """(True, version) if pty-chi imports, else (False, reason)."""
    try:
        import ptychi  # noqa: F401

        return True, importlib_metadata.version("ptychi")
    except Exception as exc:  # noqa: BLE001 - any import failure makes the arm unavailable
        return False, f"{type(exc).__name__}: {exc}"


def illumination_coverage(ds: PtychoDataset, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 Σ|P|² placed at every scan position (the illumination map)."""
    from ptychobench.physics import overlay_patches

    p2 = torch.from_numpy(np.abs(ds.probeGuess).astype(np.float32) ** 2)
    patches = p2.expand(ds.n, *p2.shape).contiguous()
    canvas, _ = overlay_patches(patches, torch.from_numpy(ds.coords), shape, method="bilinear")
    return canvas.numpy().astype(np.float32)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected an available CUDA GPU for 'cuda', found none")
    return name


def _options(
    ds: PtychoDataset, cfg: IterativeConfig, device: str, init_object: np.ndarray | None = None
):
    import ptychi.api as api

    N = ds.N
    engine = cfg.engine
    if engine == "lsqml":
        opts = api.LSQMLOptions()
        opts.reconstructor_options.noise_model = getattr(api.NoiseModels, cfg.noise_model.upper())
        opts.reconstructor_options.rescale_probe_intensity_in_first_epoch = cfg.refine_probe
    elif engine in PIE_FAMILY:
        opts = {"epie": api.EPIEOptions, "rpie": api.RPIEOptions, "pie": api.PIEOptions}[engine]()
    elif engine == "dm":
        opts = api.DMOptions()
    else:
        opts = api.RAAROptions()
    if cfg.step_size is not None:
        opts.object_options.step_size = cfg.step_size
    if cfg.alpha is not None:
        if engine not in PIE_FAMILY:
            raise ValueError(f"alpha: only the PIE family has it, found engine {engine!r}")
        opts.object_options.alpha = cfg.alpha
    batch = cfg.batch_size or (10 if engine in PIE_FAMILY else 100)
    ro = opts.reconstructor_options
    ro.num_epochs = cfg.epochs
    ro.batch_size = min(batch, ds.n)
    ro.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    ro.random_seed = cfg.seed
    ro.allow_nondeterministic_algorithms = False

    opts.data_options.fft_shift = True

    H, W = ds.frame_shape
    # pty-chi wants a few pixels of slack around the outermost patches; pad the buffer by
    # BUFFER_PAD on each side and crop it off again afterwards
    p = BUFFER_PAD
    if cfg.init_from_truth:
        if ds.objectGuess is None:
            raise DatasetError("init_from_truth: expected a dataset with objectGuess, found none")
        init = np.pad(ds.objectGuess.astype(np.complex64), p, constant_values=1)
        init = torch.from_numpy(init)[None]
    elif init_object is not None:
        init = np.pad(init_object.astype(np.complex64), p, constant_values=FLAT_START)
        init = torch.from_numpy(init)[None]
    else:
        init = torch.ones((1, H + 2 * p, W + 2 * p), dtype=torch.complex64)
    oo = opts.object_options
    oo.pixel_size_m = 1.0
    oo.optimizable = True
    oo.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    oo.position_origin_coords = np.array([(N - 1) / 2 + p, (N - 1) / 2 + p])
    oo.remove_object_probe_ambiguity.enabled = cfg.refine_probe

    po = opts.probe_options
    scale = cfg.probe_scale or probe_photon_scale(ds)
    probe = torch.from_numpy((ds.probeGuess * (scale / N)).astype(np.complex64))[None, None]
    po.optimizable = cfg.refine_probe
    opts.probe_position_options.optimizable = False
    task_data = {
        "diffraction_data": torch.from_numpy(np.square(ds.diffraction, dtype=np.float32)),
        "object_data": init,
        "probe_data": probe,
        "probe_position_x_px": torch.from_numpy(ds.xcoords - N / 2),
        "probe_position_y_px": torch.from_numpy(ds.ycoords - N / 2),
    }
    return opts, task_data


def probe_photon_scale(ds: PtychoDataset) -> float:
    """Amplitude factor that puts the probe on the data's photon scale, from the data alone.

    ``s² = mean_patterns(Σ n) / Σ|P|²``: with the object initialised to ones, the predicted mean
    photons per pattern then equal the measured ones. (A simulated dataset's own ``scale`` also
    absorbs the object's mean transmission, which a solver cannot know.)
    """
    photons = float(photons_per_pattern(ds.diffraction).mean())
    probe_energy = float(np.square(np.abs(ds.probeGuess), dtype=np.float64).sum())
    if not (photons > 0 and probe_energy > 0):
        raise DatasetError(
            f"pty-chi: expected photons and probe energy > 0, found {photons} and {probe_energy}"
        )
    return math.sqrt(photons / probe_energy)



@contextlib.contextmanager
def _deterministic():
    """Deterministic torch kernels while pty-chi runs (same data ⇒ same bytes).

    pty-chi's object update accumulates with scatter-style kernels whose multi-threaded CPU
    versions add in a run-dependent order: with 2 threads, three identical LSQML runs gave three
    different images (1e-8 apart). The deterministic versions give the 1-thread result at any
    thread count. ``warn_only`` keeps GPU kernels without a deterministic version usable.
    """
    was, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


@contextlib.contextmanager
def _quiet_ptychi():
    loggers = [logging.getLogger(n) for n in ("ptychi", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # pty-chi's own internals trip this one every epoch; it says nothing about our data
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            yield levels[1]
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def reconstruct(
    ds: PtychoDataset,
    config: IterativeConfig | None = None,
    *,
    init_object: Reconstruction | None = None,
    snapshot_epochs: tuple[int, ...] = (),
    on_snapshot: Callable[[int, float, np.ndarray], None] | None = None,
) -> Reconstruction:
    """Reconstruct ``ds`` with pty-chi; returns the object in ``ds``'s object pixel frame.

    Parameters
    ----------
    ds : PtychoDataset
        Diffraction amplitudes, known probe and positions (all patterns are used).
    config : IterativeConfig
    init_object : Reconstruction, optional
        Start from this reconstruction (see :func:`initial_object`) instead of ones; recorded in
        the metadata (``init``). Exclusive with ``init_from_truth``.
    snapshot_epochs : tuple of int
        Epochs (1 … ``epochs``) after which ``on_snapshot(epoch, seconds, object)`` is called with
        the (H, W) complex64 object so far and the seconds spent since the start (the
        convergence curve); the snapshot's own cost is not counted in the seconds.

    Returns
    -------
    Reconstruction with ``reconstructed_object`` (H, W) complex64, ``coverage`` (the illumination
    map Σ|P|²), ``reconstructed_probe`` (N, N) in our orthonormal convention, and metadata.
    """
    cfg = config or IterativeConfig()
    ok, version = ptychi_available()
    if not ok:
        raise RuntimeError(f"pty-chi is not available: {version}")
    from ptychi.api.task import PtychographyTask

    device = _device(cfg.device)
    scale = cfg.probe_scale or probe_photon_scale(ds)
    start = None
    if init_object is not None:
        if cfg.init_from_truth:
            raise InitObjectError("init object: expected either it or init_from_truth, found both")
        frame = ds.frame_shape
        start = initial_object(
            init_object.reconstructed_object,
            init_object.coverage,
            tuple(frame),
            source=str(
                init_object.metadata.get("source", f"init object ({start_name(init_object)})")
            ),
        )
    stops = sorted({int(e) for e in snapshot_epochs})
    if stops and not (1 <= stops[0] and stops[-1] <= cfg.epochs):
        raise ValueError(
            f"snapshot_epochs: expected epochs in 1..{cfg.epochs}, found {stops[0]}..{stops[-1]}"
        )
    opts, task_data = _options(ds, cfg, device, start)
    p = BUFFER_PAD
    shape = tuple(int(n) - 2 * p for n in task_data["object_data"].shape[-2:])
    t0 = time.perf_counter()
    paused = 0.0
    with (
        _deterministic(),
        _quiet_ptychi() as root_level,
        PtychographyTask(opts, **task_data) as task,
    ):
        done = 0
        for stop in sorted({*stops, cfg.epochs}):
            if stop > done:
                _run_epochs(task, cfg.model_copy(update={"epochs": stop - done}), root_level)
                done = stop
            if on_snapshot is not None and stop in stops:
                t_pause = time.perf_counter()
                snap = task.get_data_to_cpu("object", as_numpy=True)[0, p:-p, p:-p]
                on_snapshot(stop, t_pause - t0 - paused, snap.astype(np.complex64))
                paused += time.perf_counter() - t_pause
        obj = task.get_data_to_cpu("object", as_numpy=True)[0, p:-p, p:-p]
        probe = task.get_data_to_cpu("probe", as_numpy=True)[0, 0] * (ds.N / scale)
    seconds = time.perf_counter() - t0 - paused
    meta = {
        "arm": "PtyChi",
        "algorithm": ALGORITHM[cfg.engine],
        "epochs": cfg.epochs,
        "seconds": seconds,
        "infer_s": 0.0,
        "refine_s": seconds,
        "n_patterns": ds.n,
        "settings": cfg.model_dump(mode="json"),
        "init_from_truth": cfg.init_from_truth,
        "probe_photon_scale": scale,
        "diagnostic": "init_from_truth (not a fair comparison)" if cfg.init_from_truth else None,
        "init": (
            "truth"
            if cfg.init_from_truth
            else ("flat" if init_object is None else f"object of {start_name(init_object)}")
        ),
        "device": device,
        "versions": {"ptychi": version, "torch": torch.__version__},
        "geometry": ds.metadata.get("geometry"),
    }
    return Reconstruction(
        reconstructed_object=obj.astype(np.complex64),
        coverage=illumination_coverage(ds, shape),
        metadata=meta,
        reconstructed_probe=probe.astype(np.complex64),
    )


def start_name(rec: Reconstruction) -> str:
    """The arm a start object came from, as its metadata names it."""
    return str(rec.metadata.get("arm", "unknown arm"))


def _run_epochs(task, cfg: IterativeConfig, root_level: int = logging.WARNING) -> None:
    """Run epoch by epoch so a progress bar can follow; same result as one call."""
    if not cfg.progress:
        # plain log lines instead of a bar (a study shows them as the current job's progress)
        every = max(1, cfg.epochs // 10)
        for done in range(0, cfg.epochs, every):
            n = min(every, cfg.epochs - done)
            task.run(n)
            if root_level <= logging.INFO:  # pty-chi's chatter stays muted, ours does not
                log.handle(
                    log.makeRecord(
                        log.name,
                        logging.INFO,
                        __file__,
                        0,
                        "pty-chi %s: epoch %d/%d",
                        (cfg.engine, done + n, cfg.epochs),
                        None,
                    )
                )
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"pty-chi {cfg.engine}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        job = bar.add_task("epochs", total=cfg.epochs)
        for _ in range(cfg.epochs):
            task.run(1)
            bar.advance(job)
