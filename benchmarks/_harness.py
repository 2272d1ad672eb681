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
from ptychobench.data.grouping import make_view
from ptychobench.evaluate.compare import compare
from ptychobench.fit import fit, training_arrays
from ptychobench.infer import infer
from ptychobench.iterative import IterativeConfig, reconstruct
from ptychobench.models.bundle import load_bundle
from ptychobench.models.pinn import central_window, poisson_nll

__all__ = [
    "BudgetError",
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
