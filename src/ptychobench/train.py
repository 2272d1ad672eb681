"""The training loop for both models (SPEC §5.3): plain PyTorch, resumable, seeded, DDP-ready.

What one call of :func:`train` does::

    validate arrays → seeded train/validation split of the groups → Adam + ReduceLROnPlateau
    → for each epoch: seeded permutation → batches → loss → backward → clip → step
                      → validation loss → scheduler / early stopping → checkpoint.pt (atomic)
    → bundle (ptychobench.models.bundle) in out_dir

Determinism and exact resume
----------------------------
Everything random that :func:`train` does is drawn from generators seeded by ``(cfg.seed, what,
epoch)`` only, never from state carried across epochs:

* the validation groups: ``torch.Generator`` seeded by ``(seed, "val")``;
* the data order of epoch ``e``: ``torch.randperm`` from a generator seeded by
  ``(seed, "perm", e)``;
* the global torch RNG (dropout and any other in-model randomness) is re-seeded with
  ``(seed, "torch", e)`` at the start of epoch ``e``.

So the trajectory depends only on the seed, the data, the initial weights and the config; after
every epoch ``checkpoint.pt`` stores the model, Adam and scheduler state, the early-stopping state
and the history, and a run resumed from it (``resume=True``) is bit-identical on CPU to one that
was never stopped. :func:`train` does *not* initialise the model: seed its construction yourself,
e.g. with :func:`seeded_build`. (``train`` leaves the global torch RNG seeded from ``cfg.seed``.)

Interrupts
----------
``KeyboardInterrupt`` (Ctrl-C) during an epoch is caught: the checkpoint of the last completed epoch
stays as it is, a bundle of that epoch is written into ``out_dir``, and :func:`train` **returns** a
:class:`TrainResult` with ``interrupted=True`` (callers such as the CLI should exit non-zero, e.g.
130). A ``SIGKILL`` leaves the checkpoint of the last completed epoch; ``resume=True`` continues.

Distributed data parallel
-------------------------
Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) :func:`train` initialises
``torch.distributed`` (gloo on CPU, nccl on CUDA, one GPU per ``LOCAL_RANK``) unless it is already
initialised, wraps the model in ``DistributedDataParallel``, gives rank ``r`` the indices
``perm[r::world]`` of each epoch's permutation (padded by wrap-around to equal length, like
``DistributedSampler``), averages losses over ranks for logging, the scheduler and early stopping,
and lets only rank 0 write the checkpoint and the bundle. ``batch_size`` is per process: a step
of ``W`` processes sees ``W × batch_size`` groups.

Output directory
----------------
``out_dir`` holds the bundle files (``model.pt``, ``config.json``, ``history.csv``,
``SHA256SUMS``; see :mod:`ptychobench.models.bundle`) and the resume checkpoint ``checkpoint.pt``,
so ``load_bundle(out_dir)`` works on a training output directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ptychobench.models.bundle import save_bundle, state_dict_of, unwrap, verify_bundle

__all__ = [
    "CHECKPOINT_FILE",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "data_fingerprint",
    "derive_seed",
    "epoch_permutation",
    "seeded_build",
    "shard_indices",
    "split_validation",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "ptychobench-checkpoint"
CHECKPOINT_VERSION = 1

# TrainConfig fields that may change between a run and its resumption (they do not alter the
# trajectory of the epochs already run, or only select hardware)
_RESUME_MUTABLE = {
    "epochs",
    "device",
    "num_threads",
    "log_every_s",
    "amp",
    "early_stopping_patience",
}

M = TypeVar("M", bound=nn.Module)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint, ...)."""


class TrainConfig(BaseModel):
    """Settings of :func:`train` (both models)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(50, ge=1, description="maximum number of epochs")
    batch_size: int = Field(16, ge=1, description="groups per step and per process")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    seed: int = Field(0, description="seeds the validation split, data order and in-model RNG")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if available")
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="held-out groups for validation (≥ 1 group when > 0)"
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="LR factor on a plateau")
    plateau_patience: int = Field(2, ge=0, description="epochs without improvement before LR drop")
    min_lr: float = Field(1e-4, ge=0, description="lower bound of the LR schedule")
    early_stopping_patience: int = Field(
        10, ge=0, description="stop after this many epochs without improvement; 0 disables"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; None disables")
    amp: Literal["auto", "off"] = Field("auto", description="auto: bf16 autocast on CUDA only")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: default)")
    log_every_s: float = Field(10.0, gt=0, description="seconds between plain log lines")
    restore_best: bool = Field(
        True, description="bundle the weights of the best validation epoch (if validation is on)"
    )


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    history : list of dict
        One row per completed epoch (all epochs, including those of a resumed run):
        ``epoch, train_loss, val_loss, lr, seconds, patterns_per_s``.
    bundle_dir : pathlib.Path or None
        The bundle directory (``out_dir``), None if no epoch completed.
    interrupted : bool
        True if a ``KeyboardInterrupt`` stopped training (the bundle holds the last completed
        epoch).
    epochs_run : int
        Epochs completed by this call.
    seconds : float
        Wall time of this call.
    patterns_per_s : float
        Training throughput of this call (diffraction patterns, all processes together).
    stopped_early : bool
        Early stopping ended the run.
    best_epoch : int
        Epoch with the lowest monitored loss (0 if none).
    """

    history: list[dict[str, Any]]
    bundle_dir: Path | None
    interrupted: bool
    epochs_run: int
    seconds: float
    patterns_per_s: float
    stopped_early: bool = False
    best_epoch: int = 0


# --------------------------------------------------------------------------------------------
# seeding, splitting, sharding
# --------------------------------------------------------------------------------------------


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (stable across processes).

    Examples
    --------
    >>> derive_seed(0, "perm", 3) == derive_seed(0, "perm", 3)
    True
    """
    key = repr((int(seed), *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch`` (0-based): ``randperm(n)`` seeded by ``(seed, "perm", epoch)``.

    Returns
    -------
    torch.Tensor
        ``(n,) int64``.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "perm", epoch))
    return torch.randperm(n, generator=g)


def shard_indices(perm: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's permutation: ``perm[rank::world_size]``.

    The permutation is padded by wrap-around to a multiple of ``world_size`` so every rank gets
    the same number of items (DDP needs the same number of steps on every rank). With
    ``world_size == 1`` this is ``perm`` itself. Step ``k`` of all ranks together covers
    ``perm[k·W·b : (k+1)·W·b]`` for per-rank batch size ``b``.

    Parameters
    ----------
    perm : torch.Tensor
        ``(n,) int64``.
    rank, world_size : int
        ``0 <= rank < world_size``.

    Returns
    -------
    torch.Tensor
        ``(ceil(n / world_size),) int64``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    n = perm.numel()
    if world_size == 1 or n == 0:
        return perm
    total = -(-n // world_size) * world_size
    if total > n:
        perm = (
            torch.cat([perm, perm[: total - n]])
            if total - n <= n
            else perm.repeat(-(-total // n))[:total]
        )
    return perm[rank:total:world_size]


def split_validation(
    n_groups: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded choice of held-out validation groups.

    ``round(fraction · n_groups)`` groups, at least 1 when ``fraction > 0`` and at least one group
    is left for training; none when ``fraction == 0`` or ``n_groups < 2``.

    Returns
    -------
    train_idx, val_idx : torch.Tensor
        Sorted ``int64`` group indices.
    """
    n_val = 0
    if fraction > 0 and n_groups >= 2:
        n_val = min(max(1, round(fraction * n_groups)), n_groups - 1)
    g = torch.Generator().manual_seed(derive_seed(seed, "val"))
    perm = torch.randperm(n_groups, generator=g)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def seeded_build(build_fn: Callable[[], M], seed: int) -> M:
    """Build a model with the global torch RNG seeded by ``seed``, without disturbing it after.

    Parameters
    ----------
    build_fn : callable
        ``build_fn() -> nn.Module``, e.g. ``lambda: build_model(cfg, probe)``.
    seed : int
        Initialisation seed (use the training seed for a reproducible run).

    Returns
    -------
    torch.nn.Module
        Same weights for the same seed, on every run.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_fn()


def data_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the training arrays."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        flat = a.reshape(-1).view(np.uint8)
        step = 1 << 26
        for i in range(0, flat.size, step):
            h.update(memoryview(flat[i : i + step]))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group (and destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclasses.dataclass
class _State:
    epoch: int = 0  # completed epochs
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None


class _LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``, so DDP's gradient hooks see the loss call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


def _init_dist() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not torch_dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but torch.distributed is not available")
    owned = False
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
        owned = True
    return _Dist(
        rank=torch_dist.get_rank(),
        world=torch_dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owned=owned,
    )


def _resolve_device(choice: str, dist: _Dist) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device 'cuda' requested but CUDA is not available")
        if dist.world > 1:
            torch.cuda.set_device(dist.local_rank)
            return torch.device("cuda", dist.local_rank)
        return torch.device("cuda")
    return torch.device("cpu")


def _prepare_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    unknown = set(arrays) - {"diffraction", "offsets", "Y"}
    if unknown:
        raise ValueError(
            f"unknown training arrays {sorted(unknown)}; expected diffraction, "
            "offsets and optionally Y"
        )
    for key in ("diffraction", "offsets"):
        if key not in arrays:
            raise ValueError(f"training arrays: {key!r} is missing")
    d = np.asarray(arrays["diffraction"])
    o = np.asarray(arrays["offsets"])
    if d.ndim != 4 or d.shape[-1] != d.shape[-2]:
        raise ValueError(f"diffraction must be (G, C, N, N), got {d.shape}")
    G, C, N, _ = d.shape
    if G < 1:
        raise ValueError("diffraction holds no groups")
    if o.shape != (G, C, 2):
        raise ValueError(f"offsets must be (G, C, 2) = {(G, C, 2)}, got {o.shape}")
    if np.iscomplexobj(d):
        raise ValueError("diffraction must be real amplitude (sqrt of counts), not complex")
    out = {
        "diffraction": torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)),
        "offsets": torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)),
    }
    if not torch.isfinite(out["diffraction"]).all() or not torch.isfinite(out["offsets"]).all():
        raise ValueError("diffraction/offsets contain NaN or Inf")
    if "Y" in arrays and arrays["Y"] is not None:
        y = np.asarray(arrays["Y"])
        if y.shape != d.shape:
            raise ValueError(f"Y must be (G, C, N, N) = {d.shape}, got {y.shape}")
        out["Y"] = torch.from_numpy(np.ascontiguousarray(y, dtype=np.complex64))
    return out


def _data_summary(data: dict[str, torch.Tensor], n_train: int, n_val: int, sha: str) -> dict:
    d, o = data["diffraction"], data["offsets"]
    G, C, N, _ = d.shape
    photons = torch.zeros((), dtype=torch.float64)
    for i in range(0, G, 256):
        photons += d[i : i + 256].double().square().sum()
    gs = math.isqrt(C)
    od = o.double().reshape(-1, 2)
    return {
        "N": N,
        "gridsize": gs if gs * gs == C else None,
        "channels": C,
        "n_groups": G,
        "n_train_groups": n_train,
        "n_val_groups": n_val,
        "mean_photons_per_pattern": float(photons / (G * C)),
        "offset_mean": od.mean(0).tolist(),
        "offset_std": od.std(0, correction=0).tolist(),
        "train_data_sha256": sha,
        "has_Y": "Y" in data,
    }


def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor, device: torch.device) -> dict:
    return {k: v[idx].to(device) for k, v in data.items()}


def _allreduce_sums(dist: _Dist, device: torch.device, *values: float) -> list[float]:
    if dist.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def _barrier(dist: _Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()


def _save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise TrainingError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); delete it to start "
            "fresh"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a ptychobench training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: unknown checkpoint version {ckpt.get('version')!r}")
    return ckpt


def _check_compatible(
    ckpt: dict[str, Any], cfg: TrainConfig, kind: str, model_cfg: dict, sha: str, world: int
) -> None:
    where = "checkpoint"
    if ckpt["kind"] != kind or ckpt["model_config"] != model_cfg:
        raise TrainingError(
            f"{where}: the model config differs from the checkpoint's (kind {ckpt['kind']!r}); "
            "resume with the same model, or start fresh"
        )
    if ckpt["data_sha256"] != sha:
        raise TrainingError(
            f"{where}: the training data differ from the checkpoint's "
            f"(sha256 {ckpt['data_sha256'][:12]}… vs {sha[:12]}…)"
        )
    now = cfg.model_dump(mode="json")
    diff = sorted(k for k in now if k not in _RESUME_MUTABLE and ckpt["training"].get(k) != now[k])
    if diff:
        raise TrainingError(
            f"{where}: training settings differ from the checkpoint's: "
            + ", ".join(f"{k} ({ckpt['training'].get(k)!r} → {now[k]!r})" for k in diff)
        )
    if ckpt.get("world_size", 1) != world:
        log.warning(
            "resuming a run of %d process(es) with %d: the data order per step changes",
            ckpt.get("world_size", 1),
            world,
        )


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


class _Reporter:
    """Rich progress bar (TTY) or plain log lines every ``every_s`` seconds."""

    def __init__(
        self, enabled: bool, use_rich: bool, epochs: int, steps: int, done: int, every_s: float
    ) -> None:
        self.enabled, self.epochs, self.steps, self.every_s = enabled, epochs, steps, every_s
        self._last = time.perf_counter()
        self._progress = None
        self._task = None
        if enabled and use_rich:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[pps]} patterns/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                f"epoch {min(done // max(steps, 1) + 1, epochs)}/{epochs}",
                total=epochs * steps,
                completed=done,
                loss="—",
                pps="—",
            )

    def step(self, epoch: int, step: int, loss: float, pps: float) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(
                self._task,
                advance=1,
                description=f"epoch {epoch}/{self.epochs}",
                loss=f"{loss:.4g}",
                pps=f"{pps:.0f}",
            )
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            log.info(
                "epoch %d/%d step %d/%d: loss %.4g, %.0f patterns/s",
                epoch,
                self.epochs,
                step,
                self.steps,
                loss,
                pps,
            )

    def epoch_end(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        val = "—" if row["val_loss"] is None else f"{row['val_loss']:.4g}"
        msg = (
            f"epoch {row['epoch']}/{self.epochs}: train {row['train_loss']:.4g}, val {val}, "
            f"lr {row['lr']:.3g}, {row['seconds']:.1f} s, {row['patterns_per_s']:.0f} "
            "patterns/s"
        )
        self._last = time.perf_counter()
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            log.info(msg)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    cfg: TrainConfig | Mapping[str, Any] | None,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    extra_config: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` on grouped diffraction data; checkpoint every epoch; write a bundle.

    Parameters
    ----------
    model : torch.nn.Module
        A ptychobench model (``kind``, ``config``, ``loss(batch)``, ``predict``), already
        initialised (seed it, e.g. with :func:`seeded_build`). Moved to the training device and
        trained in place.
    arrays : mapping of str to numpy.ndarray
        ``diffraction`` ``(G, C, N, N) float32`` amplitudes, ``offsets`` ``(G, C, 2) float32``
        group-relative offsets, optionally ``Y`` ``(G, C, N, N) complex64`` ground-truth patches
        (needed by the supervised baseline).
    cfg : TrainConfig or mapping or None
        Settings (None: defaults).
    out_dir : path
        Output directory: ``checkpoint.pt`` and the bundle files.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (start fresh, with a log line, if there is none).
        A finished run (all epochs, or early-stopped) does nothing more; raising ``cfg.epochs``
        continues it. Settings that change the trajectory (seed, lr, batch size, ...), the model
        config and the data must match the checkpoint, else :class:`TrainingError`.
    extra_config : mapping, optional
        Extra facts for the bundle's ``data`` section (absolute position mean/std, data file hash,
        dose, ...); they override the computed ones of the same name (``N``, ``gridsize``,
        ``mean_photons_per_pattern``, ``offset_mean``, ``offset_std``, ``train_data_sha256``).
    progress : bool, optional
        Rich progress bar (True), plain log lines (False), or decide by whether stderr is a TTY
        (None, the default). Only rank 0 reports.

    Returns
    -------
    TrainResult
        ``interrupted=True`` after a ``KeyboardInterrupt`` (not re-raised).

    Notes
    -----
    On return ``model`` holds the weights written to the bundle: those of the best validation
    epoch when ``cfg.restore_best`` and validation is on, else those of the last completed epoch
    (after an interrupt: of the last checkpointed epoch; untouched if no epoch completed).
    ``checkpoint.pt`` always holds the last epoch's weights, for resuming.

    Raises
    ------
    ValueError
        Bad arrays (shapes, dtypes, non-finite values).
    TrainingError
        Non-finite training loss, unreadable or incompatible checkpoint, CUDA requested but absent.
    """
    t0 = time.perf_counter()
    if cfg is None:
        cfg = TrainConfig()
    elif not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.model_validate(dict(cfg))
    out_dir = Path(out_dir)
    base = unwrap(model)
    for attr in ("kind", "config", "loss"):
        if not hasattr(base, attr):
            raise TypeError(f"model has no {attr!r}; expected a ptychobench model")
    data = _prepare_arrays(arrays)
    dist = _init_dist()
    prev_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        device = _resolve_device(cfg.device, dist)
        return _train(
            base, data, arrays, cfg, out_dir, device, dist, resume, extra_config, progress, t0
        )
    finally:
        if cfg.num_threads:
            torch.set_num_threads(prev_threads)
        if dist.owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train(
    base: nn.Module,
    data: dict[str, torch.Tensor],
    arrays: Mapping[str, np.ndarray],
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    dist: _Dist,
    resume: bool,
    extra_config: Mapping[str, Any] | None,
    progress: bool | None,
    t0: float,
) -> TrainResult:
    G, C = data["diffraction"].shape[:2]
    train_idx, val_idx = split_validation(G, cfg.val_fraction, cfg.seed)
    if cfg.val_fraction > 0 and val_idx.numel() == 0:
        log.warning("only %d group(s): no validation split; monitoring the training loss", G)
    sha = data_fingerprint({k: v.numpy() for k, v in data.items()})
    data_info = _data_summary(data, train_idx.numel(), val_idx.numel(), sha)
    if extra_config:
        data_info.update(dict(extra_config))
    training_dump = cfg.model_dump(mode="json")
    kind = str(base.kind)
    model_cfg = base.config.model_dump(mode="json")
    ckpt_path = out_dir / CHECKPOINT_FILE
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt_path.exists():
            log.warning(
                "%s: starting fresh (resume=False); the old checkpoint is replaced", ckpt_path
            )
            ckpt_path.unlink()
    _barrier(dist)

    base.to(device)
    opt = torch.optim.Adam(base.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        min_lr=cfg.min_lr,
    )
    st = _State()
    use_val = val_idx.numel() > 0

    def bundle(state_dict: dict | None, history: list[dict]) -> Path:
        return save_bundle(
            base,
            out_dir,
            history=history,
            training=training_dump,
            data=data_info,
            state_dict=state_dict,
        )

    if resume:
        if ckpt_path.is_file():
            ckpt = _load_checkpoint(ckpt_path, device)
            _check_compatible(ckpt, cfg, kind, model_cfg, sha, dist.world)
            base.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            st = _State(
                epoch=int(ckpt["epoch"]),
                best=float(ckpt["best"]),
                best_epoch=int(ckpt["best_epoch"]),
                bad_epochs=int(ckpt["bad_epochs"]),
                stopped_early=bool(ckpt["stopped_early"]),
                history=list(ckpt["history"]),
                best_state=ckpt.get("best_model"),
            )
            log.info("resuming %s from epoch %d/%d", out_dir, st.epoch, cfg.epochs)
        else:
            log.info("no checkpoint in %s: starting fresh", out_dir)

    def final_weights() -> dict | None:
        return st.best_state if (cfg.restore_best and use_val and st.best_state) else None

    if st.stopped_early or st.epoch >= cfg.epochs:
        log.info("%s: training already finished at epoch %d; nothing to do", out_dir, st.epoch)
        if final_weights() is not None:
            base.load_state_dict(final_weights())
        if dist.main and st.epoch > 0:
            try:
                verify_bundle(out_dir)
            except ValueError:
                bundle(final_weights(), st.history)
        _barrier(dist)
        return TrainResult(
            history=st.history,
            bundle_dir=out_dir if st.epoch > 0 else None,
            interrupted=False,
            epochs_run=0,
            seconds=time.perf_counter() - t0,
            patterns_per_s=0.0,
            stopped_early=st.stopped_early,
            best_epoch=st.best_epoch,
        )

    net: nn.Module = _LossModule(base)
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = device.type == "cuda" and cfg.amp == "auto"

    def autocast() -> contextlib.AbstractContextManager:
        if amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    n_mine = -(-train_idx.numel() // dist.world)
    steps = -(-n_mine // cfg.batch_size)
    if progress is None:
        progress = sys.stderr.isatty()
    reporter = _Reporter(
        dist.main, bool(progress), cfg.epochs, steps, st.epoch * steps, cfg.log_every_s
    )
    start_epoch = st.epoch
    train_seconds = 0.0
    patterns_done = 0
    interrupted = False
    try:
        for epoch in range(st.epoch, cfg.epochs):
            e1 = epoch + 1
            t_epoch = time.perf_counter()
            torch.manual_seed(derive_seed(cfg.seed, "torch", epoch))
            perm = train_idx[epoch_permutation(train_idx.numel(), cfg.seed, epoch)]
            mine = shard_indices(perm, dist.rank, dist.world)
            lr = float(opt.param_groups[0]["lr"])
            base.train()
            loss_sum, count = 0.0, 0
            for step, s in enumerate(range(0, mine.numel(), cfg.batch_size)):
                idx = mine[s : s + cfg.batch_size]
                batch = _batch(data, idx, device)
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = net(batch)
                value = float(loss.detach().float())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"non-finite training loss ({value}) at epoch {e1}, step {step + 1}; "
                        f"the checkpoint of epoch {st.epoch} is kept — lower lr or check the data"
                    )
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip)
                opt.step()
                loss_sum += value * idx.numel()
                count += idx.numel()
                el = time.perf_counter() - t_epoch
                reporter.step(e1, step + 1, value, count * C * dist.world / max(el, 1e-9))
            t_train = time.perf_counter() - t_epoch
            loss_sum, count = _allreduce_sums(dist, device, loss_sum, count)
            train_loss = loss_sum / max(count, 1)

            val_loss: float | None = None
            if use_val:
                base.eval()
                v_sum, v_n = 0.0, 0
                my_val = val_idx[dist.rank :: dist.world]
                with torch.no_grad():
                    for s in range(0, my_val.numel(), cfg.batch_size):
                        idx = my_val[s : s + cfg.batch_size]
                        with autocast():
                            v = float(base.loss(_batch(data, idx, device)).float())
                        v_sum += v * idx.numel()
                        v_n += idx.numel()
                v_sum, v_n = _allreduce_sums(dist, device, v_sum, v_n)
                val_loss = v_sum / max(v_n, 1)

            monitored = val_loss if val_loss is not None else train_loss
            sched.step(monitored)
            if monitored < st.best:
                st.best, st.best_epoch, st.bad_epochs = monitored, e1, 0
                if cfg.restore_best and use_val:
                    st.best_state = state_dict_of(base)
            else:
                st.bad_epochs += 1
            if cfg.early_stopping_patience and st.bad_epochs >= cfg.early_stopping_patience:
                st.stopped_early = True
            seconds = time.perf_counter() - t_epoch
            pps = count * C / max(t_train, 1e-9)
            row = {
                "epoch": e1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": lr,
                "seconds": seconds,
                "patterns_per_s": pps,
            }
            st.history.append(row)
            st.epoch = e1
            train_seconds += t_train
            patterns_done += int(count) * C
            if dist.main:
                _save_checkpoint(
                    ckpt_path,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "version": CHECKPOINT_VERSION,
                        "epoch": st.epoch,
                        "model": state_dict_of(base),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "best": st.best,
                        "best_epoch": st.best_epoch,
                        "bad_epochs": st.bad_epochs,
                        "stopped_early": st.stopped_early,
                        "best_model": st.best_state,
                        "history": st.history,
                        "training": training_dump,
                        "kind": kind,
                        "model_config": model_cfg,
                        "data_sha256": sha,
                        "data": data_info,
                        "world_size": dist.world,
                    },
                )
            reporter.epoch_end(row)
            _barrier(dist)
            if st.stopped_early:
                log.info(
                    "early stopping after epoch %d (best epoch %d, monitored loss %.4g)",
                    e1,
                    st.best_epoch,
                    st.best,
                )
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reporter.close()

    bundle_dir: Path | None = None
    if interrupted:
        log.warning(
            "interrupted during epoch %d; keeping the checkpoint of the last completed epoch",
            st.epoch + 1,
        )
        if ckpt_path.is_file():
            # the checkpoint on disk is the last completed epoch, whatever the model holds now
            ckpt = _load_checkpoint(ckpt_path, torch.device("cpu"))
            use_best = cfg.restore_best and use_val and ckpt.get("best_model")
            weights = ckpt["best_model"] if use_best else ckpt["model"]
            base.load_state_dict(weights)
            st.history, st.epoch = list(ckpt["history"]), int(ckpt["epoch"])
            if dist.main:
                bundle(weights, st.history)
                bundle_dir = out_dir
                log.warning(
                    "bundle of epoch %d written to %s; resume=True continues", st.epoch, out_dir
                )
    else:
        if final_weights() is not None:
            base.load_state_dict(final_weights())
        if dist.main:
            bundle(None, st.history)
        _barrier(dist)
        bundle_dir = out_dir
    return TrainResult(
        history=st.history,
        bundle_dir=bundle_dir,
        interrupted=interrupted,
        epochs_run=st.epoch - start_epoch,
        seconds=time.perf_counter() - t0,
        patterns_per_s=patterns_done / train_seconds if train_seconds > 0 else 0.0,
        stopped_early=st.stopped_early,
        best_epoch=st.best_epoch,
    )
