"""Shared steps of the science benchmarks (``paper_regime.py``, ``pinn_ladder.py``).

Each benchmark simulates data, trains network arms, reconstructs with pty-chi, scores every arm with
:func:`ptychobench.evaluate.compare.compare` and prints one JSON line per result. The helpers here
keep those steps identical across benchmarks so their numbers are comparable. Not a library: the
benchmarks import it from their own directory.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychobench.data.dataset import PtychoDataset
from ptychobench.data.grouping import group_offsets, make_view
from ptychobench.evaluate.compare import compare
from ptychobench.fit import fit, model_config_for, training_arrays
from ptychobench.infer import dataset_groups, infer
from ptychobench.iterative import IterativeConfig, reconstruct
from ptychobench.models.blocks import ModelConfig
from ptychobench.models.bundle import load_bundle
from ptychobench.models.pinn import PtychoPINN as PINN
from ptychobench.models.pinn import central_window, poisson_nll

__all__ = [
    "BudgetError",
    "FreePatches",
    "align_patch_phases",
    "fit_free_patches",
    "check_budget",
    "emit",
    "likelihood_rungs",
    "run_ptychi",
    "score",
    "train_and_infer",
    "view_for",
]


class BudgetError(ValueError):
    """A budget that cannot be used."""


def check_budget(budget_s: float) -> float:
    """Return ``budget_s`` if it is a positive finite number of seconds, else raise."""
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise BudgetError(f"--budget-s: expected a number of seconds > 0, found {budget_s}")
    return float(budget_s)


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (the CLI's convention)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (floats rounded to 4 significant decimals)."""
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
    print(json.dumps(out), flush=True)


def view_for(
    ds: PtychoDataset,
    gridsize: int,
    neighbor_count: int,
    seed: int = 0,
    n_groups: int | None = None,
):
    """The dataset a PINN of ``gridsize`` trains or infers on (gs1: every position).

    gs2: ``n_groups`` groups (None: one per position, so each pattern sits in ~C groups).
    """
    if gridsize != 2:
        return ds
    return make_view(ds, 2, n_groups=n_groups, neighbor_count=neighbor_count, seed=seed)


def train_and_infer(
    kind: str,
    train_ds: PtychoDataset,
    test_ds: PtychoDataset,
    out: Path,
    *,
    gridsize: int = 1,
    neighbor_count: int = 4,
    train_config: dict[str, Any],
    n_filters_scale: float,
    crop_size_M: int | None = None,
    infer_kwargs: dict[str, Any] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
    train_groups: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one arm on ``train_ds`` and reconstruct ``test_ds``; returns (recon, facts).

    ``train_groups``: gs2 training groups (None: one per position); the test view always has one
    group per position.
    """
    g = gridsize if kind == "pinn" else 1
    tv = train_ds
    if kind == "pinn":
        tv = view_for(train_ds, g, neighbor_count, n_groups=train_groups)
    t0 = time.perf_counter()
    res = fit(
        tv,
        kind,
        out,
        gridsize=g,
        train_config=train_config,
        n_filters_scale=n_filters_scale,
        loss="poisson" if kind == "pinn" else "mae",
        neighbor_count=neighbor_count,
        progress=False,
        **(fit_kwargs or {}),
    )
    train_s = time.perf_counter() - t0
    net, cfg = load_bundle(out)
    test_view = view_for(test_ds, g, neighbor_count) if kind == "pinn" else test_ds
    t0 = time.perf_counter()
    rec = infer(
        net,
        test_view,
        train_stats=cfg["data"],
        crop_size_M=crop_size_M,
        neighbor_count=neighbor_count,
        **(infer_kwargs or {}),
    )
    infer_s = time.perf_counter() - t0
    n_train = int(tv.n)
    facts = {
        "n_train": n_train,
        "epochs": res.epochs_run,
        "best_epoch": res.best_epoch,
        "stop_reason": res.stop_reason,
        "train_s": train_s,
        "infer_s": infer_s,
        "train_patterns_per_s": res.patterns_per_s,
        "final_val_loss": res.history[-1]["val_loss"] if res.history else None,
        "model": net,
        "bundle": out,
    }
    return rec, facts


def run_ptychi(test_ds: PtychoDataset, epochs: int) -> tuple[Any, float]:
    """pty-chi LSQML on every test pattern, flat start, known probe; (recon, seconds)."""
    t0 = time.perf_counter()
    rec = reconstruct(test_ds, IterativeConfig(epochs=epochs, progress=False, device="cpu"))
    return rec, time.perf_counter() - t0


def score(test_ds: PtychoDataset, recs: dict[str, Any], out: Path) -> dict[str, dict[str, float]]:
    """Compare every arm (plus Flat) on ``test_ds``; per arm the benchmark's metric keys."""
    res = compare(test_ds, recs, out)
    table = {}
    for arm, m in res.metrics.items():
        table[arm] = {
            "amp_ssim": m["ssim"][0],
            "phase_ssim": m["ssim"][1],
            "amp_psnr": m["psnr"][0],
            "phase_psnr": m["psnr"][1],
            "nrmse": m["nrmse"],
        }
    for arm, err in res.errors.items():
        table[arm] = {"error": str(err)}
    return table


@torch.no_grad()
def likelihood_rungs(
    model: torch.nn.Module,
    ds: PtychoDataset,
    gridsize: int,
    neighbor_count: int,
    max_groups: int = 512,
) -> dict[str, float]:
    """Poisson NLL per pixel of the trained model, the oracle and a flat object on ``ds``.

    * ``nll_model``: the network's own prediction through its physics layer.
    * ``nll_oracle``: the true patches ``Y`` (restricted to the decoder's N/2 window, what the
      network can represent) through the same physics layer, at the data's true scale.
    * ``nll_flat``: a constant object (the truth's mean amplitude, zero phase) on the window,
      same physics and scale.
    * ``gap_covered``: ``(flat − model) / (flat − oracle)`` — 1 means the network fits the data
      as well as the truth does (so what remains is ambiguity, not optimisation or capacity).
    """
    arrays = training_arrays(ds, gridsize, neighbor_count=neighbor_count, seed=0)
    G = min(max_groups, len(arrays["diffraction"]))
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(arrays["diffraction"]), size=G, replace=False))
    diff = torch.from_numpy(arrays["diffraction"][idx])
    off = torch.from_numpy(arrays["offsets"][idx]) if gridsize == 2 else None
    Y = torch.from_numpy(arrays["Y"][idx])
    counts = diff.square()
    model = model.cpu().eval()
    window = central_window(ds.N)
    scale = float(ds.metadata.get("scale", model.intensity_scale))

    def nll_of(patches: torch.Tensor, at_true_scale: bool) -> float:
        amp = model.forward_physics(patches * window, off)
        if at_true_scale:
            amp = amp / model.intensity_scale * scale
        return float(poisson_nll(amp.square(), counts))

    flat_value = float(np.abs(ds.objectGuess).mean())
    flat = torch.full_like(Y, flat_value)
    nll_model = float(poisson_nll(model(diff, off).square(), counts))
    nll_oracle = nll_of(Y, True)
    nll_flat = nll_of(flat, True)
    gap = nll_flat - nll_oracle
    return {
        "nll_model": nll_model,
        "nll_oracle": nll_oracle,
        "nll_flat": nll_flat,
        "gap_covered": (nll_flat - nll_model) / gap if gap > 0 else float("nan"),
        "scale_learned_over_true": model.intensity_scale / scale,
    }


class FreePatches(PINN):
    """A PtychoPINN whose network is replaced by one free patch per pattern of a dataset.

    The ladder's "no network" rung: the same heads (``amplitude_max·sigmoid``, ``π·tanh``), the
    same N/2 window, gs2 merge, scale, physics and Poisson loss as the PINN — only the decoder's
    output is a free parameter per pattern instead of a function of the pattern. Fitted to
    convergence on the test diffraction it shows what the PINN's output structure (independent
    patches coupled only through the gs2 merge, then stitched) can reach with an unlimited,
    perfectly optimised network.

    Patterns are looked up by a fingerprint of their diffraction (a fixed random projection), so
    :func:`ptychobench.infer.infer` runs it unchanged. Benchmark-only.
    """

    def __init__(self, config, probe: torch.Tensor, diffraction: np.ndarray, init_amp: float):
        super().__init__(config, probe)
        P, N = diffraction.shape[0], config.N
        h = N // 2
        a = min(max(init_amp / config.amplitude_max, 1e-3), 1 - 1e-3)
        self.amp_logit = torch.nn.Parameter(torch.full((P, h, h), math.log(a / (1 - a))))
        self.phase_logit = torch.nn.Parameter(torch.zeros(P, h, h))
        g = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.rand(N * N, generator=g, dtype=torch.float64))
        self.register_buffer("keys", self._fingerprint(torch.from_numpy(diffraction)))

    def _fingerprint(self, diffraction: torch.Tensor) -> torch.Tensor:
        return diffraction.reshape(diffraction.shape[0], -1).double() @ self.projection

    def index_of(self, diffraction: torch.Tensor) -> torch.Tensor:
        """(B, N, N) patterns → (B,) their rows in the fitted dataset (exact match required)."""
        q = self._fingerprint(diffraction)
        idx = (q[:, None] - self.keys[None, :]).abs().argmin(dim=1)
        if not torch.allclose(self.keys[idx], q, rtol=1e-9, atol=0):
            raise ValueError("FreePatches: a pattern that was not fitted")
        return idx

    def patches(self, idx: torch.Tensor) -> torch.Tensor:
        """(…) pattern rows → (…, N, N) complex64 patches, zero outside the central window."""
        amp = self.config.amplitude_max * torch.sigmoid(self.amp_logit[idx])
        phase = math.pi * torch.tanh(self.phase_logit[idx])
        q = self.config.N // 4
        return torch.nn.functional.pad(torch.polar(amp, phase), (q, q, q, q))

    def decode(self, diffraction: torch.Tensor) -> torch.Tensor:
        B, C, N, _ = diffraction.shape
        idx = self.index_of(diffraction.reshape(B * C, N, N)).reshape(B, C)
        return self.patches(idx)

    def decode_patterns(self, diffraction: torch.Tensor) -> torch.Tensor:
        return self.patches(self.index_of(diffraction))


def fit_free_patches(
    ds: PtychoDataset,
    gridsize: int,
    neighbor_count: int,
    *,
    steps: int = 400,
    batch_groups: int = 128,
    lr: float = 0.05,
    seed: int = 0,
) -> tuple[FreePatches, dict[str, float]]:
    """Fit :class:`FreePatches` on ``ds``'s own diffraction (Adam, minibatches of groups).

    The config (scales, canvas) is the one :func:`ptychobench.fit.fit` would give a PINN on
    ``ds``; the probe is ``ds.probeGuess``. Returns the fitted model and
    ``{"steps", "fit_s", "final_loss"}``.
    """
    groups = dataset_groups(ds, gridsize, neighbor_count=neighbor_count, seed=0)
    offsets_np = group_offsets(ds.coords, groups).astype(np.float32)
    cfg = model_config_for(
        "pinn", ds, gridsize, n_filters_scale=0.25, max_offset=float(np.abs(offsets_np).max())
    )
    cfg["channel_mode"] = "shared"
    model = FreePatches(
        ModelConfig.model_validate(cfg),
        torch.from_numpy(np.asarray(ds.probeGuess, dtype=np.complex64)),
        np.ascontiguousarray(ds.diffraction, dtype=np.float32),
        float(np.abs(ds.objectGuess).mean()),
    )
    diff = torch.from_numpy(np.ascontiguousarray(ds.diffraction, dtype=np.float32))
    offsets = torch.from_numpy(offsets_np)
    groups_t = torch.from_numpy(groups)
    params = [model.amp_logit, model.phase_logit]
    if model.log_intensity_scale.requires_grad:
        params.append(model.log_intensity_scale)
    opt = torch.optim.Adam(params, lr=lr)
    rng = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        pick = torch.randperm(len(groups_t), generator=rng)[:batch_groups]
        g = groups_t[pick]
        off = offsets[pick] if gridsize > 1 else None
        amp = model.forward_physics(model.patches(g), off)
        loss = poisson_nll(amp.square(), diff[g].square())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, {"steps": steps, "fit_s": time.perf_counter() - t0, "final_loss": loss.item()}


def align_patch_phases(model: FreePatches, ds: PtychoDataset) -> None:
    """Oracle diagnostic: rotate each free patch by the constant phase that best matches ``ds.Y``.

    Removes the per-pattern global-phase gauge (which no diffraction pattern constrains); a score
    that rises after this says the stitched image lost that much to per-patch phase offsets.
    """
    with torch.no_grad():
        idx = torch.arange(model.amp_logit.shape[0])
        p = model.patches(idx)
        Y = torch.from_numpy(np.ascontiguousarray(ds.Y, dtype=np.complex64))
        theta = torch.angle((p.conj() * Y * model.window).sum(dim=(-2, -1)))
        q = model.config.N // 4
        rotated = (p * torch.polar(torch.ones_like(theta), theta)[:, None, None])[
            :, q : 3 * q, q : 3 * q
        ]
        # the π·tanh head cannot reach ±π exactly; clamp inside it before inverting
        t = (torch.angle(rotated) / math.pi).clamp(-0.999, 0.999)
        model.phase_logit.copy_(torch.atanh(t))
