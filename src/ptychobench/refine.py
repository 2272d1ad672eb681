"""Test-time refinement (TTR): a trained PtychoPINN fine-tuned on the diffraction it reconstructs.

The PtychoPINN+TTR arm. Unsupervised and fair: it reads only the data's diffraction, known probe
and positions — never ``objectGuess`` or ``Y``. Unlike training, where a pattern is coupled to at
most its group's members, every pattern's patch enters **one global object** and every pattern's
predicted diffraction comes from that object re-extracted at its position: the whole scan's overlap
constraint, as an iterative solver sees it.

* Global object: ``O = Σ_k overlay(w·e^{iθ_k}·p_k) / Σ_k overlay(w)`` with ``w`` the decoder's
  N/2 window (``weighting="flat"``, the default: every pixel a patch predicts must agree with the
  consensus) or ``|P|²/max|P|²`` on it (``"probe"``), bilinear placement; zero where
  ``Σ w <= MIN_WEIGHT``.
* Per-pattern phase offsets ``θ_k``: no pattern fixes the constant phase of its patch, so each is
  a free parameter, started from phase synchronisation (:func:`ptychobench.stitch.
  synchronise_phases`) of the trained network's patches.
* Loss: Poisson NLL of the measured counts given ``|F(P·extract(O, r_k))|² · exp(2λ)`` (the
  network's own physics and learned scale), as in training.
* Minibatches: ``Σ w·p`` over all patterns is kept from the last time each pattern was decoded
  (detached); a step decodes a batch, swaps its fresh patches into the sum and takes the batch's
  loss. One epoch visits every pattern once.

The result is the global object of the refined network (decoded afresh), in the data's object
frame, with ``Σ w`` as coverage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.recon import Reconstruction
from ptychobench.models.pinn import poisson_nll
from ptychobench.physics import extract_patches, forward_amplitude, overlay_patches
from ptychobench.stitch import probe_weight, support_window, synchronise_phases

__all__ = ["ARM", "TTRConfig", "TTRResult", "refine"]

ARM = "PtychoPINN+TTR"
MIN_WEIGHT = 1e-3


class TTRConfig(BaseModel):
    """Settings of test-time refinement (passes, step size, budget)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(
        5, ge=0, description="passes over the data's patterns (0: the start, unrefined)"
    )
    batch_size: int = Field(32, ge=1, description="patterns per step")
    lr: float = Field(1e-4, gt=0.0, description="Adam step for the network's weights")
    phase_lr: float = Field(1e-2, gt=0.0, description="Adam step for the per-pattern offsets")
    max_seconds: float | None = Field(
        None, gt=0.0, description="stop after the step that passes this many seconds"
    )
    phase_sync: int = Field(20, ge=0, description="synchronisation iterations for the offsets")
    weighting: Literal["flat", "probe"] = Field(
        "flat",
        description="weight of a patch pixel in the global object: flat (the decoder's N/2 "
        "window) or probe (|P|²/max|P|² on it)",
    )
    seed: int = Field(0, description="batch order")
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class TTRResult:
    """The refined reconstruction, its per-epoch loss history and cost."""

    reconstruction: Reconstruction
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    epochs_run: int = 0
    stop_reason: str = "epochs"



def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected an available CUDA GPU for 'cuda', found none")
    return torch.device(name)


class _GlobalObject:
    """Σ w·p of every pattern (detached) and Σ w, with per-batch swaps that keep gradients."""

    def __init__(self, coords: torch.Tensor, weight: torch.Tensor, shape: tuple[int, int]):
        self.coords, self.w, self.shape = coords, weight, shape
        n = coords.shape[0]
        ones = weight.expand(n, *weight.shape).contiguous()
        self.wsum, _ = overlay_patches(ones, coords, shape, method="bilinear")
        self.covered = self.wsum > MIN_WEIGHT
        self.safe = torch.where(self.covered, self.wsum, torch.ones_like(self.wsum))
        self.stale: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    def reset(self, patches: torch.Tensor) -> None:
        """All (P, N, N) patches (offsets applied), detached."""
        self.stale = patches.detach().clone()
        self.total, _ = overlay_patches(
            (self.w * self.stale).contiguous(), self.coords, self.shape, method="bilinear"
        )

    def image(self, total: torch.Tensor) -> torch.Tensor:
        return torch.where(self.covered, total / self.safe, torch.zeros((), dtype=total.dtype))

    def with_batch(self, idx: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """The global object with the batch's stale patches replaced by ``fresh`` (grad flows)."""
        delta = self.w * (fresh - self.stale[idx])
        moved, _ = overlay_patches(delta.contiguous(), self.coords[idx], self.shape, "bilinear")
        return self.image(self.total + moved)

    def commit(self, idx: torch.Tensor, fresh: torch.Tensor) -> None:
        fresh = fresh.detach()
        delta = self.w * (fresh - self.stale[idx])
        moved, _ = overlay_patches(delta.contiguous(), self.coords[idx], self.shape, "bilinear")
        self.total = self.total + moved
        self.stale[idx] = fresh


def _decode_all(model, diffraction: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                model.decode_single(diffraction[i : i + batch])
                for i in range(0, len(diffraction), batch)
            ]
        )


def refine(model: torch.nn.Module, ds: PtychoDataset, config: TTRConfig | None = None) -> TTRResult:
    """Fine-tune ``model`` (a PtychoPINN, changed in place) on ``ds``'s diffraction alone.

    Parameters
    ----------
    model : PtychoPINN
        Trained; gridsize 1 or channel mode ``"shared"`` (each pattern decoded on its own).
    ds : PtychoDataset
        The data to reconstruct: ``diffraction`` (P, N, N), ``probeGuess``, ``coords``. Its
        ``objectGuess`` (if any) is used for the frame's shape only; ``Y`` is never read.
    config : TTRConfig

    Returns
    -------
    TTRResult with the (H, W) reconstruction (arm ``PtychoPINN+TTR``; metadata ``infer_s``
    = the refined network's final decode and global object, ``refine_s`` = everything before
    it, ``epochs``, ``loss_start``/``loss_end``) and the loss history per epoch.
    """
    cfg = config or TTRConfig()
    if getattr(model, "kind", None) != "pinn":
        raise ValueError(f"TTR: expected a PtychoPINN, found {getattr(model, 'kind', type(model))}")
    if model.config.channel_mode != "shared" and model.config.channels != 1:
        raise ValueError("TTR: expected a gridsize-1 or channel_mode 'shared' PtychoPINN")
    dev = _device(cfg.device)
    model = model.to(dev).train()
    N = ds.N
    diff = torch.from_numpy(np.ascontiguousarray(ds.diffraction, dtype=np.float32)).to(dev)
    counts = diff.square()
    coords = torch.from_numpy(np.ascontiguousarray(ds.coords, dtype=np.float64)).to(dev)
    probe = model.probe.detach().to(torch.complex64)
    w = (probe_weight(probe, N) if cfg.weighting == "probe" else support_window(N)).to(dev)
    glob = _GlobalObject(coords, w, ds.frame_shape)
    P = diff.shape[0]

    t0 = time.perf_counter()
    start = _decode_all(model, diff, cfg.batch_size)
    synced = synchronise_phases(
        start.cpu(), w.cpu().expand(P, N, N), coords.cpu(), glob.shape, cfg.phase_sync
    )
    theta0 = torch.angle((start.cpu().conj() * synced).sum(dim=(-2, -1)))
    theta = torch.nn.Parameter(theta0.to(dev, torch.float32))
    glob.reset(start * torch.polar(torch.ones_like(theta), theta.detach())[:, None, None])

    nets = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam(
        [{"params": nets, "lr": cfg.lr}, {"params": [theta], "lr": cfg.phase_lr}]
    )
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch_loss(idx: torch.Tensor, keep_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        fresh = model.decode_single(diff[idx])
        fresh = fresh * torch.polar(torch.ones_like(theta[idx]), theta[idx])[:, None, None]
        obj = glob.with_batch(idx, fresh if keep_grad else fresh.detach())
        seen = extract_patches(obj, coords[idx], N, method="bilinear")
        amp = forward_amplitude(probe, seen) * model.log_intensity_scale.float().exp()
        return poisson_nll(amp.square(), counts[idx]), fresh

    history: list[dict[str, float]] = []
    stop_reason, epochs_run = "epochs", 0
    loss_start = _full_loss(glob, coords, probe, model, counts, N)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(P, generator=gen).to(dev)
        total, n = 0.0, 0
        for s in range(0, P, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss, fresh = batch_loss(idx, True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            glob.commit(idx, fresh)
            total, n = total + loss.item() * len(idx), n + len(idx)
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stop_reason = "time_budget"
                break
        epochs_run = epoch
        history.append(
            {"epoch": epoch, "loss": total / max(n, 1), "seconds": time.perf_counter() - t0}
        )
        if stop_reason == "time_budget":
            break

    model.eval()
    t_final = time.perf_counter()
    final = _decode_all(model, diff, cfg.batch_size)
    glob.reset(final * torch.polar(torch.ones_like(theta), theta.detach())[:, None, None])
    loss_end = _full_loss(glob, coords, probe, model, counts, N)
    image = glob.image(glob.total)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    seconds, infer_s = t_end - t0, t_end - t_final
    meta: dict[str, Any] = {
        "arm": ARM,
        "kind": "pinn",
        "gridsize": int(model.config.gridsize),
        "seconds": seconds,
        "infer_s": infer_s,
        "refine_s": seconds - infer_s,
        "epochs": epochs_run,
        "stop_reason": stop_reason,
        "n_patterns": P,
        "loss_start": loss_start,
        "loss_end": loss_end,
        "settings": cfg.model_dump(mode="json"),
        "device": str(dev),
        "stitch_weighting": cfg.weighting,
        "versions": {"torch": torch.__version__},
        "geometry": ds.metadata.get("geometry"),
    }
    rec = Reconstruction(
        reconstructed_object=image.detach().cpu().numpy().astype(np.complex64),
        coverage=glob.wsum.detach().cpu().numpy().astype(np.float32),
        metadata=meta,
    )
    return TTRResult(rec, history, seconds, epochs_run, stop_reason)


@torch.no_grad()
def _full_loss(
    glob: _GlobalObject, coords, probe, model, counts, N: int, batch: int = 256
) -> float:
    """Poisson NLL per pixel of every pattern given the current global object."""
    obj = glob.image(glob.total)
    scale = model.log_intensity_scale.float().exp()
    total = 0.0
    for s in range(0, coords.shape[0], batch):
        seen = extract_patches(obj, coords[s : s + batch], N, method="bilinear")
        amp = forward_amplitude(probe, seen) * scale
        total += float(poisson_nll(amp.square(), counts[s : s + batch])) * seen.shape[0]
    return total / coords.shape[0]
