"""The training loop for both models (SPEC §5.3): plain PyTorch, resumable, seeded, DDP-ready.

What one call of :func:`train` does::

    validate arrays → seeded train/validation split of the groups → Adam + ReduceLROnPlateau
    → for each epoch: seeded permutation → batches → loss → backward → clip → step
                      → validation loss → scheduler / early stopping → checkpoint.pt (atomic)
    → bundle (ptychobench.models.bundle) in out_dir

Stopping criterion
------------------
Training stops on a validation plateau, or else after ``cfg.epochs`` epochs. The monitored loss is
the validation loss (the training loss when there is no validation split). An epoch is an
*improvement* when its monitored loss ``L`` satisfies ``L < ref − min_delta·|ref|``, where ``ref``
is the monitored loss of the last improvement (``+inf`` before the first epoch; the threshold is
relative, so it works for negative losses such as a Poisson NLL too; ``min_delta = 0``: any
decrease). Training stops after epoch ``e`` when ``early_stopping_patience > 0``, the last
``early_stopping_patience`` epochs brought no improvement, and ``e >= min_epochs``; a plateau
reached earlier stops the run at epoch ``min_epochs``. ``min_delta`` only decides what counts as
progress: the *best* epoch (``best_epoch``, the weights bundled with ``restore_best``) is always
the epoch of the lowest monitored loss. The learning-rate schedule (``ReduceLROnPlateau``) keeps
its own threshold (PyTorch's default, relative 1e-4) and ignores ``min_delta``. The criterion is
the pure :class:`EarlyStopping` (see also :func:`should_stop`). Why a run ended is
``TrainResult.stop_reason`` and ``extra.stop_reason`` in the bundle's ``config.json``:
``"plateau"`` (early stopping), ``"max_epochs"`` (``cfg.epochs`` reached), ``"time_budget"``
(``cfg.max_seconds``: no epoch starts that would end past the cap at the mean epoch time so far —
for benchmarks that give every arm the same seconds; the epoch count then depends on the machine)
or ``"interrupted"`` (``KeyboardInterrupt``; the bundle holds the last completed epoch).

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
from collections.abc import Callable, Mapping, Sequence
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
    "EarlyStopping",
    "StopReason",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "data_fingerprint",
    "derive_seed",
    "epoch_permutation",
    "seeded_build",
    "shard_indices",
    "should_stop",
    "split_validation",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "ptychobench-checkpoint"
CHECKPOINT_VERSION = 1

StopReason = Literal["plateau", "max_epochs", "time_budget", "interrupted"]

# TrainConfig fields that may change between a run and its resumption (they do not alter the
# trajectory of the epochs already run, or only select hardware). early_stopping_patience and
# min_epochs only compare the stored count of epochs without improvement with a number, so a
# resumed run stops exactly where a fresh run with the new values would (unless it has already
# stopped). min_delta is *not* mutable: it decides which of the epochs already run were
# improvements, i.e. the stored count and reference loss; changing it on resume would give a run
# that neither value produces.
_RESUME_MUTABLE = {
    "epochs",
    "device",
    "num_threads",
    "log_every_s",
    "amp",
    "early_stopping_patience",
    "min_epochs",
    "max_seconds",
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
    min_epochs: int = Field(
        0, ge=0, description="early stopping never ends a run before this many epochs completed"
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="wall-time cap of this call's epochs (benchmarks): no epoch starts that "
        "would end past it at the mean epoch time so far (at least one epoch runs). The epoch "
        "count then depends on the machine, so same config ⇒ same bytes no longer holds",
    )
    min_delta: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="relative improvement for early stopping: an epoch improves if its monitored "
        "loss < ref − min_delta·|ref| (ref: loss of the last improvement); 0: any decrease",
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
    stop_reason : {"plateau", "max_epochs", "time_budget", "interrupted"}
        Why training ended: early stopping on a plateau, ``cfg.epochs`` reached, or a
        ``KeyboardInterrupt`` (also for a finished run resumed: its original reason).
    """

    history: list[dict[str, Any]]
    bundle_dir: Path | None
    interrupted: bool
    epochs_run: int
    seconds: float
    patterns_per_s: float
    stopped_early: bool = False
    best_epoch: int = 0
    stop_reason: StopReason = "max_epochs"


# --------------------------------------------------------------------------------------------
# stopping criterion
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EarlyStopping:
    """The stopping criterion of :func:`train` (module docstring, "Stopping criterion"); pure.

    Feed it the monitored loss of each epoch in turn with :meth:`update`; it says when to stop.

    Attributes
    ----------
    patience : int
        Epochs without improvement that end the run; 0 never stops.
    min_epochs : int
        Never stop before this many epochs.
    min_delta : float
        Relative improvement: ``loss < ref − min_delta·|ref|`` improves.
    epoch : int
        Epochs seen.
    best, best_epoch : float, int
        Lowest monitored loss and its (1-based) epoch (``inf``, 0 before any).
    ref : float
        Monitored loss of the last improvement (the reference of ``min_delta``).
    bad_epochs : int
        Epochs since the last improvement.
    stopped : bool
        The criterion has fired (stays True).

    Examples
    --------
    >>> es = EarlyStopping(patience=2)
    >>> [es.update(x) for x in (3.0, 2.0, 2.0, 2.5)]
    [False, False, False, True]
    >>> es.best_epoch
    2
    """

    patience: int = 0
    min_epochs: int = 0
    min_delta: float = 0.0
    epoch: int = 0
    best: float = math.inf
    best_epoch: int = 0
    ref: float = math.inf
    bad_epochs: int = 0
    stopped: bool = False

    def improves(self, loss: float) -> bool:
        """Whether ``loss`` would count as an improvement on :attr:`ref`."""
        if self.min_delta == 0 or not math.isfinite(self.ref):
            return loss < self.ref
        return loss < self.ref - self.min_delta * abs(self.ref)

    def update(self, loss: float) -> bool:
        """Record the monitored loss of the next epoch; True if training should stop after it."""
        self.epoch += 1
        if loss < self.best:
            self.best, self.best_epoch = loss, self.epoch
        if self.improves(loss):
            self.ref, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        self.stopped = self.stopped or (
            self.patience > 0 and self.bad_epochs >= self.patience and self.epoch >= self.min_epochs
        )
        return self.stopped


def should_stop(
    losses: Sequence[float], patience: int, min_epochs: int = 0, min_delta: float = 0.0
) -> bool:
    """Whether training stops after the last of ``losses`` (monitored loss per epoch, in order).

    Equivalent to feeding ``losses`` to a fresh :class:`EarlyStopping` and returning its last
    answer (True once the criterion has fired at or before the last epoch).

    Examples
    --------
    >>> should_stop([10, 5, 4, 4, 4], patience=3), should_stop([10, 5, 4, 4, 4, 4], patience=3)
    (False, True)
    """
    es = EarlyStopping(patience=patience, min_epochs=min_epochs, min_delta=min_delta)
    for loss in losses:
        es.update(float(loss))
    return es.stopped


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
    stop: EarlyStopping  # its .epoch: completed epochs
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    out_of_time: bool = False

    @property
    def epoch(self) -> int:
        return self.stop.epoch


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


RESIDENT_FRACTION = 0.25
"""On a GPU, the training arrays move to it once when they take at most this fraction of its free
memory (batches are then gathered on the device); otherwise they are pinned in host memory."""


def _stage(data: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The arrays where batches are gathered from: on CPU as they are; on a GPU resident when they
    fit (:data:`RESIDENT_FRACTION`), else pinned so that each batch's copy does not block."""
    if device.type != "cuda":
        return data
    size = sum(v.numel() * v.element_size() for v in data.values())
    free, _ = torch.cuda.mem_get_info(device)
    if size <= RESIDENT_FRACTION * free:
        return {k: v.to(device) for k, v in data.items()}
    return {k: v.pin_memory() for k, v in data.items()}


def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor, device: torch.device) -> dict:
    """Gather rows ``idx`` of every array onto ``device`` (asynchronously from pinned memory)."""
    return {k: v[idx.to(v.device)].to(device, non_blocking=True) for k, v in data.items()}


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
    from ptychobench.data.io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)


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
    # a setting missing from an older checkpoint had its default then
    then = {k: ckpt["training"].get(k, TrainConfig.model_fields[k].default) for k in now}
    diff = sorted(k for k in now if k not in _RESUME_MUTABLE and then[k] != now[k])
    if diff:
        raise TrainingError(
            f"{where}: training settings differ from the checkpoint's: "
            + ", ".join(f"{k} ({then[k]!r} → {now[k]!r})" for k in diff)
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
        self._shown = 0.0
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

    def step(self, epoch: int, step: int, loss: torch.Tensor | float, pps: float) -> None:
        """Advance one step; ``loss`` (a device scalar) is read only when a line is shown."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._progress is not None:
            fields: dict[str, str] = {}
            if now - self._shown >= 0.5:  # the bar refreshes a few times a second anyway
                self._shown = now
                fields = {"loss": f"{float(loss):.4g}", "pps": f"{pps:.0f}"}
            self._progress.update(
                self._task, advance=1, description=f"epoch {epoch}/{self.epochs}", **fields
            )
            return
        if now - self._last >= self.every_s:
            self._last = now
            log.info(
                "epoch %d/%d step %d/%d: loss %.4g, %.0f patterns/s",
                epoch,
                self.epochs,
                step,
                self.steps,
                float(loss),
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
        return _train(base, data, cfg, out_dir, device, dist, resume, extra_config, progress, t0)
    finally:
        if cfg.num_threads:
            torch.set_num_threads(prev_threads)
        if dist.owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train(
    base: nn.Module,
    data: dict[str, torch.Tensor],
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    dist: _Dist,
    resume: bool,
    extra_config: Mapping[str, Any] | None,
    progress: bool | None,
    t0: float,
) -> TrainResult:
    run = _setup(base, data, cfg, out_dir, device, dist, resume, extra_config)
    st = _initial_state(run, resume)
    if st.stop.stopped or st.epoch >= cfg.epochs:
        return _already_finished(run, st, t0)

    run.net = _wrap(run)
    if progress is None:
        progress = sys.stderr.isatty()
    reporter = _Reporter(
        dist.main, bool(progress), cfg.epochs, run.steps, st.epoch * run.steps, cfg.log_every_s
    )
    start_epoch = st.epoch
    train_seconds = 0.0
    patterns_done = 0
    interrupted = False
    t_loop = time.perf_counter()
    try:
        for epoch in range(st.epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            train_loss, count, lr = _run_epoch(run, epoch, t_epoch, reporter)
            t_train = time.perf_counter() - t_epoch
            val_loss = _validate(run)
            row = _end_of_epoch(run, st, train_loss, val_loss, lr, count, t_epoch, t_train)
            train_seconds += t_train
            patterns_done += int(count) * run.channels
            if dist.main:
                _save_checkpoint(run.ckpt_path, _checkpoint(run, st))
            reporter.epoch_end(row)
            _barrier(dist)
            if _out_of_time(run, epoch + 1 - start_epoch, time.perf_counter() - t_loop):
                st.out_of_time = True
                log.info("time budget %.0f s: stop after epoch %d", cfg.max_seconds, st.epoch)
                break
            if st.stop.stopped:
                log.info(
                    "early stopping (plateau) after epoch %d (best epoch %d, monitored loss %.4g)",
                    st.epoch,
                    st.stop.best_epoch,
                    st.stop.best,
                )
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reporter.close()

    if interrupted:
        st, bundle_dir = _finish_interrupted(run, st)
    else:
        bundle_dir = _finish(run, st)
    return _result(
        run,
        st,
        bundle_dir,
        interrupted=interrupted,
        epochs_run=st.epoch - start_epoch,
        seconds=time.perf_counter() - t0,
        patterns_per_s=patterns_done / train_seconds if train_seconds > 0 else 0.0,
    )


# --------------------------------------------------------------------------------------------
# the steps of _train
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """What one call of :func:`train` works with (fixed for the call)."""

    base: nn.Module
    data: dict[str, torch.Tensor]
    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    dist: _Dist
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    sha: str
    data_info: dict[str, Any]
    training_dump: dict[str, Any]
    kind: str
    model_cfg: dict[str, Any]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    net: nn.Module | None = None  # the (DDP-wrapped) loss module, set by _wrap

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    @property
    def use_val(self) -> bool:
        return self.val_idx.numel() > 0

    @property
    def channels(self) -> int:
        return int(self.data["diffraction"].shape[1])

    @property
    def steps(self) -> int:
        """Training steps per epoch and process."""
        n_mine = -(-self.train_idx.numel() // self.dist.world)
        return -(-n_mine // self.cfg.batch_size)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.cfg.amp == "auto":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def final_weights(self, st: _State) -> dict | None:
        """The weights to bundle (None: the model's current ones)."""
        return st.best_state if (self.cfg.restore_best and self.use_val and st.best_state) else None


def _setup(
    base: nn.Module,
    data: dict[str, torch.Tensor],
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    dist: _Dist,
    resume: bool,
    extra_config: Mapping[str, Any] | None,
) -> _Run:
    """Split, data facts, output directory, model on the device, Adam and the LR schedule."""
    G = data["diffraction"].shape[0]
    train_idx, val_idx = split_validation(G, cfg.val_fraction, cfg.seed)
    if cfg.val_fraction > 0 and val_idx.numel() == 0:
        log.warning("only %d group(s): no validation split; monitoring the training loss", G)
    sha = data_fingerprint({k: v.numpy() for k, v in data.items()})
    data_info = _data_summary(data, train_idx.numel(), val_idx.numel(), sha)
    if extra_config:
        data_info.update(dict(extra_config))
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
    return _Run(
        base=base,
        data=_stage(data, device),
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        dist=dist,
        train_idx=train_idx,
        val_idx=val_idx,
        sha=sha,
        data_info=data_info,
        training_dump=cfg.model_dump(mode="json"),
        kind=str(base.kind),
        model_cfg=base.config.model_dump(mode="json"),
        opt=opt,
        sched=sched,
    )


def _new_stopper(cfg: TrainConfig) -> EarlyStopping:
    return EarlyStopping(
        patience=cfg.early_stopping_patience, min_epochs=cfg.min_epochs, min_delta=cfg.min_delta
    )


def _state_from_checkpoint(ckpt: dict[str, Any], cfg: TrainConfig) -> _State:
    best = float(ckpt["best"])
    stop = dataclasses.replace(
        _new_stopper(cfg),
        epoch=int(ckpt["epoch"]),
        best=best,
        best_epoch=int(ckpt["best_epoch"]),
        ref=float(ckpt.get("stop_ref", best)),  # older checkpoints: min_delta was 0, ref == best
        bad_epochs=int(ckpt["bad_epochs"]),
        stopped=bool(ckpt["stopped_early"]),
    )
    return _State(stop=stop, history=list(ckpt["history"]), best_state=ckpt.get("best_model"))


def _initial_state(run: _Run, resume: bool) -> _State:
    """A fresh state, or (``resume``) the checkpoint's, loaded into model, Adam and schedule."""
    if resume:
        if run.ckpt_path.is_file():
            ckpt = _load_checkpoint(run.ckpt_path, run.device)
            _check_compatible(ckpt, run.cfg, run.kind, run.model_cfg, run.sha, run.dist.world)
            run.base.load_state_dict(ckpt["model"])
            run.opt.load_state_dict(ckpt["optimizer"])
            run.sched.load_state_dict(ckpt["scheduler"])
            st = _state_from_checkpoint(ckpt, run.cfg)
            log.info("resuming %s from epoch %d/%d", run.out_dir, st.epoch, run.cfg.epochs)
            return st
        log.info("no checkpoint in %s: starting fresh", run.out_dir)
    return _State(stop=_new_stopper(run.cfg))


def _out_of_time(run: _Run, epochs_done: int, elapsed: float) -> bool:
    """Would one more epoch (at the mean epoch time so far) end past ``cfg.max_seconds``?

    Every rank takes the same decision (the slowest rank's clock decides).
    """
    cap = run.cfg.max_seconds
    if cap is None or epochs_done < 1:
        return False
    late = 1.0 if elapsed + elapsed / epochs_done > cap else 0.0
    (late,) = _allreduce_sums(run.dist, run.device, late)
    return late > 0


def _stop_reason(st: _State, interrupted: bool) -> StopReason:
    if interrupted:
        return "interrupted"
    if st.stop.stopped:
        return "plateau"
    return "time_budget" if st.out_of_time else "max_epochs"


def _bundle(run: _Run, st: _State, state_dict: dict | None, reason: StopReason) -> Path:
    """Write the bundle of ``st``; ``extra`` records why and where training stopped."""
    outcome = {
        "stop_reason": reason,
        "stopped_early": st.stop.stopped,
        "epochs_completed": st.epoch,
        "best_epoch": st.stop.best_epoch,
        "best_monitored_loss": st.stop.best,
        "monitored": "val_loss" if run.use_val else "train_loss",
    }
    return save_bundle(
        run.base,
        run.out_dir,
        history=st.history,
        training=run.training_dump,
        data=run.data_info,
        extra=outcome,
        state_dict=state_dict,
    )


def _result(run: _Run, st: _State, bundle_dir: Path | None, **kw: Any) -> TrainResult:
    return TrainResult(
        history=st.history,
        bundle_dir=bundle_dir,
        stopped_early=st.stop.stopped,
        best_epoch=st.stop.best_epoch,
        stop_reason=_stop_reason(st, kw["interrupted"]),
        **kw,
    )


def _already_finished(run: _Run, st: _State, t0: float) -> TrainResult:
    """A resumed run that has nothing left to do: make sure its bundle is there."""
    log.info("%s: training already finished at epoch %d; nothing to do", run.out_dir, st.epoch)
    weights = run.final_weights(st)
    if weights is not None:
        run.base.load_state_dict(weights)
    if run.dist.main and st.epoch > 0:
        try:
            verify_bundle(run.out_dir)
        except ValueError:
            _bundle(run, st, weights, _stop_reason(st, False))
    _barrier(run.dist)
    return _result(
        run,
        st,
        run.out_dir if st.epoch > 0 else None,
        interrupted=False,
        epochs_run=0,
        seconds=time.perf_counter() - t0,
        patterns_per_s=0.0,
    )


def _wrap(run: _Run) -> nn.Module:
    """The loss module that takes the steps: DDP-wrapped under ``torchrun``."""
    net: nn.Module = _LossModule(run.base)
    if run.dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    return net


def _run_epoch(
    run: _Run, epoch: int, t_epoch: float, reporter: _Reporter
) -> tuple[float, float, float]:
    """Train epoch ``epoch`` (0-based): seeded RNG and data order, one optimiser step per batch.

    Returns
    -------
    train_loss, count, lr : float
        Mean training loss and number of groups over all processes, learning rate of the epoch.
    """
    cfg, dist, base, opt = run.cfg, run.dist, run.base, run.opt
    assert run.net is not None
    torch.manual_seed(derive_seed(cfg.seed, "torch", epoch))
    perm = run.train_idx[epoch_permutation(run.train_idx.numel(), cfg.seed, epoch)]
    mine = shard_indices(perm, dist.rank, dist.world)
    lr = float(opt.param_groups[0]["lr"])
    base.train()
    # the loss stays on the device: on a GPU reading it every step would make the host wait for
    # the step to finish; on CPU reading it is free and names the first bad step
    per_step = run.device.type == "cpu"
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    count = 0
    for step, s in enumerate(range(0, mine.numel(), cfg.batch_size)):
        idx = mine[s : s + cfg.batch_size]
        batch = _batch(run.data, idx, run.device)
        opt.zero_grad(set_to_none=True)
        with run.autocast():
            loss = run.net(batch)
        value = loss.detach().double()
        if per_step and not math.isfinite(float(value)):
            _non_finite(float(value), epoch, f"step {step + 1}")
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum += value * idx.numel()
        count += idx.numel()
        el = time.perf_counter() - t_epoch
        reporter.step(epoch + 1, step + 1, value, count * run.channels * dist.world / max(el, 1e-9))
    total = float(loss_sum)  # the epoch's one wait for the device
    if not math.isfinite(total):
        _non_finite(total, epoch, "some step")
    total, count = _allreduce_sums(dist, run.device, total, count)
    return total / max(count, 1), count, lr


def _non_finite(value: float, epoch: int, where: str) -> None:
    raise TrainingError(
        f"non-finite training loss ({value}) at epoch {epoch + 1}, {where}; "
        f"the checkpoint of epoch {epoch} is kept — lower lr or check the data"
    )


def _validate(run: _Run) -> float | None:
    """Mean validation loss over all processes (None without a validation split)."""
    if not run.use_val:
        return None
    dist, cfg = run.dist, run.cfg
    run.base.eval()
    v_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    v_n = 0
    my_val = run.val_idx[dist.rank :: dist.world]
    with torch.no_grad():
        for s in range(0, my_val.numel(), cfg.batch_size):
            idx = my_val[s : s + cfg.batch_size]
            with run.autocast():
                v = run.base.loss(_batch(run.data, idx, run.device)).double()
            v_sum += v * idx.numel()
            v_n += idx.numel()
    total, v_n = _allreduce_sums(dist, run.device, float(v_sum), v_n)
    return total / max(v_n, 1)


def _end_of_epoch(
    run: _Run,
    st: _State,
    train_loss: float,
    val_loss: float | None,
    lr: float,
    count: float,
    t_epoch: float,
    t_train: float,
) -> dict[str, Any]:
    """LR schedule, stopping criterion, best weights and the history row of the epoch."""
    monitored = val_loss if val_loss is not None else train_loss
    run.sched.step(monitored)
    st.stop.update(monitored)  # advances st.epoch
    if st.stop.best_epoch == st.epoch and run.cfg.restore_best and run.use_val:
        st.best_state = state_dict_of(run.base)
    row = {
        "epoch": st.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": lr,
        "seconds": time.perf_counter() - t_epoch,
        "patterns_per_s": count * run.channels / max(t_train, 1e-9),
    }
    st.history.append(row)
    return row


def _checkpoint(run: _Run, st: _State) -> dict[str, Any]:
    """Everything a resumed run needs, after a completed epoch."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": st.epoch,
        "model": state_dict_of(run.base),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "best": st.stop.best,
        "best_epoch": st.stop.best_epoch,
        "stop_ref": st.stop.ref,
        "bad_epochs": st.stop.bad_epochs,
        "stopped_early": st.stop.stopped,
        "best_model": st.best_state,
        "history": st.history,
        "training": run.training_dump,
        "kind": run.kind,
        "model_config": run.model_cfg,
        "data_sha256": run.sha,
        "data": run.data_info,
        "world_size": run.dist.world,
    }


def _finish(run: _Run, st: _State) -> Path:
    """After the last epoch: bundle the final weights (best epoch with ``restore_best``)."""
    weights = run.final_weights(st)
    if weights is not None:
        run.base.load_state_dict(weights)
    if run.dist.main:
        _bundle(run, st, None, _stop_reason(st, False))
    _barrier(run.dist)
    return run.out_dir


def _finish_interrupted(run: _Run, st: _State) -> tuple[_State, Path | None]:
    """After a ``KeyboardInterrupt``: go back to the checkpoint on disk and bundle it."""
    log.warning(
        "interrupted during epoch %d; keeping the checkpoint of the last completed epoch",
        st.epoch + 1,
    )
    if not run.ckpt_path.is_file():
        return st, None
    # the checkpoint on disk is the last completed epoch, whatever the model holds now
    ckpt = _load_checkpoint(run.ckpt_path, torch.device("cpu"))
    st = _state_from_checkpoint(ckpt, run.cfg)
    use_best = run.cfg.restore_best and run.use_val and ckpt.get("best_model")
    weights = ckpt["best_model"] if use_best else ckpt["model"]
    run.base.load_state_dict(weights)
    if not run.dist.main:
        return st, None
    _bundle(run, st, weights, "interrupted")
    log.warning("bundle of epoch %d written to %s; resume=True continues", st.epoch, run.out_dir)
    return st, run.out_dir
