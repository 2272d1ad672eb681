"""The built-in arms: the two networks, pty-chi (any engine, from flat or from another arm),
test-time refinement, the constant-object floor and the truth-started ceiling.

Each adapts a method of the layers below to :class:`~ptychobench.arms.base.Arm`; none knows about
the study. Their settings are the design's ``[arms.<Name>]`` tables (the older ``[pinn]``,
``[baseline]``, ``[iterative]`` and ``[hybrid]`` sections are read into them, see
:func:`ptychobench.arms.registry.legacy_tables`).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ptychobench.arms.base import Arm, ArmContext, ArmSettings, Needs
from ptychobench.iterative import Engine

__all__ = [
    "BaselineArm",
    "CeilingArm",
    "FlatArm",
    "NetworkSettings",
    "PinnArm",
    "PtyChiArm",
    "PtyChiSettings",
    "TTRArm",
    "TTRSettings",
]


# ----------------------------------------------------------------------------------- networks


class NetworkSettings(ArmSettings):
    """Training of a network arm (:class:`ptychobench.train.TrainConfig` and the model size)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    n_filters_scale: float = Field(0.5, gt=0.0, le=4.0)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    early_stopping_patience: int = Field(10, ge=0)
    min_epochs: int = Field(0, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    loss: Literal["poisson", "mae"] = "poisson"
    merge_weighting: Literal["flat", "probe"] = Field(
        "flat",
        description="PINN gs2 merge weight: flat (decoder window) or probe (window · |P|²); "
        "the baseline ignores it",
    )

    def train_config(self, ctx: ArmContext):
        from ptychobench.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=ctx.seed,
            device=ctx.device,
            val_fraction=self.val_fraction,
            early_stopping_patience=self.early_stopping_patience,
            min_epochs=self.min_epochs,
            min_delta=self.min_delta,
            num_threads=ctx.num_threads,
        )


class BaselineSettings(NetworkSettings):
    loss: Literal["poisson", "mae"] = "mae"


def train_seconds(bundle: Path) -> float | None:
    """Training wall time of a bundle: Σ of its history's per-epoch seconds."""
    p = bundle / "history.csv"
    if not p.exists():
        return None
    with p.open(newline="") as fh:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds")))


_STITCH = ("crop_size_M", "stitch_weighting", "phase_sync", "neighbor_count", "data_source")


class _NetworkArm(Arm):
    model_kind: str = "pinn"
    Settings = NetworkSettings
    context_fields = {
        "fit": ("seed", "gridsize", "neighbor_count", "data_source"),
        "reconstruct": _STITCH,
    }

    def fit(self, train, artifact: Path, ctx: ArmContext, *, resume: bool = False) -> None:
        from ptychobench.fit import fit

        s = self.settings
        merge = s.merge_weighting if (self.model_kind == "pinn" and ctx.gridsize == 2) else "flat"
        res = fit(
            train,
            self.model_kind,
            artifact,
            gridsize=ctx.gridsize,
            train_config=s.train_config(ctx),
            n_filters_scale=s.n_filters_scale,
            loss=s.loss,
            neighbor_count=ctx.neighbor_count,
            resume=resume,
            data_source=ctx.data_source,
            progress=False,
            merge_weighting=merge,
        )
        if res.interrupted:
            raise KeyboardInterrupt
        (artifact / "checkpoint.pt").unlink(missing_ok=True)

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.infer import infer
        from ptychobench.models.bundle import load_bundle

        assert artifact is not None, f"{self.name}: reconstruct needs its fit artifact"
        net, cfg = load_bundle(artifact)
        rec = infer(
            net,
            ds,
            train_stats=cfg.get("data"),
            device=ctx.device,
            crop_size_M=ctx.crop_size_M,
            data_source=ctx.data_source,
            arm=self.name,
            neighbor_count=ctx.neighbor_count,
            stitch_weighting=ctx.stitch_weighting,
            phase_sync=ctx.phase_sync,
        )
        rec.metadata["train_s"] = train_seconds(artifact)
        return rec


class PinnArm(_NetworkArm):
    type_name = "PtychoPINN"
    model_kind = "pinn"
    needs = Needs(train=True)
    color = "C0"
    summary = "physics-informed network: Poisson likelihood through the far-field model"


class BaselineArm(_NetworkArm):
    type_name = "Baseline"
    model_kind = "baseline"
    Settings = BaselineSettings
    needs = Needs(train=True, truth_patches=True)
    color = "C1"
    summary = "supervised network on ground-truth patches (same architecture, no physics)"


# ------------------------------------------------------------------------------------ pty-chi


class PtyChiSettings(ArmSettings):
    """pty-chi with the known probe, fixed; from flat, or from arm ``start``'s object."""

    engine: Engine = "lsqml"
    epochs: int = Field(100, ge=1)
    batch_size: int | None = Field(None, ge=1)
    noise_model: Literal["gaussian", "poisson"] = "gaussian"
    step_size: float | None = Field(None, gt=0, description="object step (pty-chi default: 1)")
    alpha: float | None = Field(None, gt=0, le=1, description="PIE family (pty-chi: 0.1)")
    halves: bool = Field(True, description="also reconstruct the two half-scans (half-scan FRC)")
    test_only: bool = Field(False, description="reconstruct the test split only")
    start: str | None = Field(
        None,
        description="start from this arm's reconstruction (its covered pixels) instead of flat",
    )

    def config(self, ctx: ArmContext, **update: Any):
        from ptychobench.iterative import IterativeConfig

        return IterativeConfig(
            engine=self.engine,
            epochs=self.epochs,
            batch_size=self.batch_size,
            noise_model=self.noise_model,
            step_size=self.step_size,
            alpha=self.alpha,
            device=ctx.device,
            seed=ctx.solver_seed,
            progress=False,
            **update,
        )


class PtyChiArm(Arm):
    type_name = "PtyChi"
    Settings = PtyChiSettings
    snapshots = True
    context_fields = {"reconstruct": ("solver_seed", "data_source")}
    color = "C2"
    summary = "pty-chi iterative solver, known probe fixed, flat start"

    def solver(self) -> str | None:
        return "pty-chi" if self.start is None else None

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.iterative import reconstruct

        stops = snapshots.epochs if snapshots is not None else ()
        on_snap = None
        if snapshots is not None and start is not None:  # the curve starts after the start
            lead = float(start.metadata.get("seconds") or 0.0)
            on_snap = lambda e, sec, obj: snapshots.record(e, sec + lead, obj)  # noqa: E731
        elif snapshots is not None:
            on_snap = snapshots.record
        rec = reconstruct(
            ds,
            self.settings.config(ctx),
            init_object=start,
            snapshot_epochs=stops,
            on_snapshot=on_snap,
        )
        rec.metadata["arm"] = self.name
        if start is not None:
            infer_s = float(start.metadata.get("seconds") or 0.0)
            refine_s = float(rec.metadata["seconds"])
            rec.metadata.update(
                infer_s=infer_s,
                refine_s=refine_s,
                seconds=infer_s + refine_s,
                train_s=start.metadata.get("train_s"),
            )
        return rec


class CeilingSettings(ArmSettings):
    """LSQML from the true object, known probe fixed: what these data permit (a reference).

    An upper reference, not an achievable target: where the data constrain a pixel weakly (the
    gaps of a sparse scan) the solver leaves it near the truth it started from."""

    engine: Engine = "lsqml"
    epochs: int = Field(
        100, ge=1, description="iterations from the truth: enough for the data's noise to move "
        "the object to the likelihood optimum near it"
    )
    batch_size: int | None = Field(None, ge=1)
    noise_model: Literal["gaussian", "poisson"] = "gaussian"


class CeilingArm(Arm):
    type_name = "Ceiling"
    Settings = CeilingSettings
    context_fields = {"reconstruct": ("solver_seed", "data_source")}
    role = "ceiling"
    needs = Needs(truth_object=True)
    halves = False
    color = "0.2"

    @property
    def test_only(self) -> bool:  # the verdicts' cells are the test split's
        return True
    summary = (
        "reference: pty-chi started from the true object (known probe): what the data permit, "
        "never a candidate"
    )

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.iterative import reconstruct

        s = self.settings
        cfg = PtyChiSettings(
            engine=s.engine, epochs=s.epochs, batch_size=s.batch_size, noise_model=s.noise_model
        ).config(ctx, init_from_truth=True)
        rec = reconstruct(ds, cfg)
        rec.metadata["arm"] = self.name
        return rec


# ------------------------------------------------------------------------ test-time refinement


class TTRSettings(ArmSettings):
    """Test-time refinement of a trained PtychoPINN on the test diffraction (one global object)."""

    network: str = Field(
        "PtychoPINN", description="the arm whose trained network is refined (a PtychoPINN)"
    )
    epochs: int = Field(5, ge=1, description="passes over the test patterns")
    lr: float = Field(1e-4, gt=0.0, description="Adam step of the weights")
    batch_size: int = Field(32, ge=1)
    max_seconds: float | None = Field(None, gt=0.0, description="stop after this many seconds")


class TTRArm(Arm):
    type_name = "PtychoPINN+TTR"
    Settings = TTRSettings
    context_fields = {"reconstruct": ("seed", "phase_sync", "data_source")}
    needs = Needs(train=True)
    color = "C4"
    summary = "the trained PtychoPINN fine-tuned on the test diffraction (test-time refinement)"

    @property
    def fit_from(self) -> str:
        return self.settings.network

    @property
    def test_only(self) -> bool:
        return True

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.models.bundle import load_bundle
        from ptychobench.refine import TTRConfig, refine

        assert artifact is not None, f"{self.name}: reconstruct needs the network's artifact"
        s = self.settings
        cfg = TTRConfig(
            epochs=s.epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            max_seconds=s.max_seconds,
            phase_sync=ctx.phase_sync,
            seed=ctx.seed,
            device=ctx.device,
        )
        net, _ = load_bundle(artifact)
        rec = refine(net, ds, cfg).reconstruction
        rec.metadata["train_s"] = train_seconds(artifact)
        rec.metadata["arm"] = self.name
        return rec


# ---------------------------------------------------------------------------------- the floor


class FlatArm(Arm):
    type_name = "Flat"
    role = "floor"
    needs = Needs(truth_object=True, probe=False)
    halves = False
    inline = True
    context_fields = {"reconstruct": ()}
    color = "0.45"
    summary = "reference: a constant object at the truth's mean amplitude, zero phase (the floor)"

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.data.recon import Reconstruction

        if ds.objectGuess is None:
            raise ValueError(f"{self.name}: the floor needs the true object (objectGuess)")
        t0 = time.perf_counter()
        truth = ds.objectGuess
        obj = np.full(truth.shape, float(np.abs(truth).mean()), dtype=np.complex64)
        meta = {"arm": self.name, "kind": "floor", "seconds": time.perf_counter() - t0}
        return Reconstruction(obj, np.ones(truth.shape, np.float32), meta)
