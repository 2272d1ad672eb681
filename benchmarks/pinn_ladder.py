"""What limits the networks on the study's data? A ladder of rungs, each changing one thing.

Data: ``image:camera+astronaut`` (amplitude camera, phase astronaut, independent), the ``fly64``
probe, the study's jittered raster (overlap 0.7), split along y; views ``dense`` (gs2, K = 6
nearest neighbours, one group per kept position) and ``sparse`` (gs1, 30 % of the positions,
stitch crop M = 32), doses 1e3 and 1e4. Every rung is scored on the **test** split with
:func:`ptychobench.evaluate.compare.compare` (so the Flat floor comes with it) unless it says
otherwise. The base rung: PtychoPINN, width ``--scale``, ``--n-train`` training patterns (a seeded
subset of the train split's kept positions), ``--epochs`` epochs, flat stitching.

Rungs (``--rungs``, comma-separated):

``base``          the base rung, + the likelihood rungs (model, oracle = true patches through the
                  same physics, flat object) on the test split: ``gap_covered`` near 1 with a low
                  SSIM means ambiguity / weak constraints; far below 1 means optimisation/capacity
``train_split``   the base model scored on its own **train** split (the generalisation gap)
``fit_on_test``   the PINN trained on the test split's own diffraction (no gap; unsupervised, so
                  fair) and scored there
``stitch_probe``  the base model, |P|²-weighted stitching at inference (no retraining)
``merge_probe``   retrained with the |P|²-weighted gs2 merge + |P|²-weighted stitching (dense)
``width``         n_filters_scale 0.25 / 1 / 2 (``--widths``), everything else as base
``lr``            Adam learning rates ``--lrs`` (default 3e-3), everything else as base
``n_train``       training-set size ``--sizes`` (default 256, 1024, 4096) for PINN **and** Baseline
``baseline``      the Baseline at the base settings (supervised on true patches)
``free_patches``  no network: one free patch per **test** pattern (same heads, window, gs2 merge,
                  scale, physics and loss), fitted by Adam on the test diffraction, stitched like
                  the PINN (flat, then probe-weighted), + its likelihood rungs; then each patch
                  rotated by the constant phase that best matches the truth (an oracle
                  diagnostic: the per-pattern phase gauge no pattern constrains) and stitched
                  again (``scored_on`` = ``test_gauge_aligned``). The ceiling of the PINN's
                  output structure with an unlimited, perfectly optimised network. Also
                  stitched with phase synchronisation (``phase_sync`` = iterations), which
                  estimates those offsets from the overlaps alone.
``phase_sync``    the base PINN and the Baseline stitched with ``--sync-iterations`` of phase
                  synchronisation (:func:`ptychobench.stitch.synchronise_phases`; no retraining,
                  no ground truth), beside the same models without it

One JSON line per rung × dose × view: ``bench, rung, arm, view, dose, gridsize, n_train, epochs,
n_filters_scale, scored_on, amp_ssim, phase_ssim, nrmse, flat_phase_ssim, flat_amp_ssim,
train_s, infer_s`` (+ ``nll_*``/``gap_covered`` on ``base``).

Usage: python benchmarks/pinn_ladder.py [--doses 1e3,1e4] [--views dense,sparse]
       [--rungs base,train_split,...] [--epochs 20] [--scale 0.5] [--n-train 1024]
       [--object-size 640] [--out runs/pinn_ladder]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _harness import (
    align_patch_phases,
    emit,
    fail,
    fit_free_patches,
    likelihood_rungs,
    score,
    train_and_infer,
)

from ptychobench.data.grouping import make_view, subsample
from ptychobench.data.split import split
from ptychobench.infer import infer
from ptychobench.models.bundle import load_bundle
from ptychobench.simulate import SimulationConfig, simulate

BENCH = "pinn_ladder"
RUNGS = (
    "base",
    "train_split",
    "fit_on_test",
    "stitch_probe",
    "merge_probe",
    "width",
    "lr",
    "n_train",
    "baseline",
    "free_patches",
    "phase_sync",
)
VIEWS = {
    "dense": {"gridsize": 2, "s_img": 1.0, "neighbor_count": 6, "crop": None},
    "sparse": {"gridsize": 1, "s_img": 0.3, "neighbor_count": 6, "crop": 32},
}


def _limit(ds, n: int, seed: int = 0):
    """A seeded subset of at most ``n`` positions (sorted)."""
    if ds.n <= n:
        return ds
    keep = np.sort(np.random.default_rng(seed).choice(ds.n, size=n, replace=False))
    return ds.select(keep, {"op": "limit", "n": n, "seed": seed})


class Ladder:
    """Trains, infers and scores the rungs of one dose × view."""

    def __init__(self, args, dose: float, view: str, train_ds, test_ds) -> None:
        self.args, self.dose, self.view = args, dose, view
        self.spec = VIEWS[view]
        self.g = self.spec["gridsize"]
        self.K = self.spec["neighbor_count"]
        self.crop = self.spec["crop"]
        s = self.spec["s_img"]
        self.train_all = subsample(train_ds, s, seed=0) if s < 1 else train_ds
        self.test = subsample(test_ds, s, seed=0) if s < 1 else test_ds
        self.out = Path(args.out) / f"dose_{int(dose)}" / view
        self._base = None

    def _tcfg(self, lr: float | None = None) -> dict:
        a = self.args
        lr = a.lr if lr is None else lr
        return {"epochs": a.epochs, "batch_size": a.batch_size, "lr": lr, "seed": 0}

    def _emit(self, rung, arm, facts, table, name, scored_on="test", **extra) -> None:
        m = table.get(name, {})
        emit(
            {
                "bench": BENCH,
                "rung": rung,
                "arm": arm,
                "view": self.view,
                "dose": self.dose,
                "gridsize": self.g if arm == "PtychoPINN" else 1,
                "n_train": facts.get("n_train"),
                "epochs": facts.get("epochs"),
                "n_filters_scale": extra.pop("scale", self.args.scale),
                "scored_on": scored_on,
                "amp_ssim": m.get("amp_ssim"),
                "phase_ssim": m.get("phase_ssim"),
                "nrmse": m.get("nrmse"),
                "flat_amp_ssim": table.get("Flat", {}).get("amp_ssim"),
                "flat_phase_ssim": table.get("Flat", {}).get("phase_ssim"),
                "train_s": facts.get("train_s"),
                "infer_s": facts.get("infer_s"),
                **extra,
                **({"error": m["error"]} if "error" in m else {}),
            }
        )

    def _run(
        self,
        tag,
        kind,
        train_ds,
        test_ds,
        *,
        scale=None,
        fit_kwargs=None,
        infer_kwargs=None,
        lr=None,
    ):
        scale = self.args.scale if scale is None else scale
        rec, facts = train_and_infer(
            kind,
            train_ds,
            test_ds,
            self.out / tag,
            gridsize=self.g,
            neighbor_count=self.K,
            train_config=self._tcfg(lr),
            n_filters_scale=scale,
            crop_size_M=self.crop,
            fit_kwargs=fit_kwargs,
            infer_kwargs=infer_kwargs,
        )
        return rec, facts

    def _score(self, tag, test_ds, rec, name):
        return score(test_ds, {name: rec}, self.out / tag / "compare")

    def _infer_bundle(self, facts, test_ds, **kw):
        net, cfg = load_bundle(facts["bundle"])
        g = self.g if net.kind == "pinn" else 1
        view = make_view(test_ds, 2, neighbor_count=self.K, seed=0) if g == 2 else test_ds
        return infer(
            net, view, train_stats=cfg["data"], crop_size_M=self.crop, neighbor_count=self.K, **kw
        )

    def baseline_model(self):
        if getattr(self, "_baseline", None) is None:
            tr, _, _ = self.base()
            self._baseline = self._run("baseline", "baseline", tr, self.test)
        return self._baseline

    def base(self):
        if self._base is None:
            tr = _limit(self.train_all, self.args.n_train)
            rec, facts = self._run("base", "pinn", tr, self.test)
            self._base = (tr, rec, facts)
        return self._base

    # ---------------------------------------------------------------------------------- rungs

    def rung_base(self):
        tr, rec, facts = self.base()
        nll = likelihood_rungs(facts["model"], self.test, self.g, self.K)
        table = self._score("base", self.test, rec, "PtychoPINN")
        self._emit("base", "PtychoPINN", facts, table, "PtychoPINN", **nll)

    def rung_train_split(self):
        tr, _, facts = self.base()
        net, cfg = load_bundle(facts["bundle"])
        view = make_view(tr, 2, neighbor_count=self.K, seed=0) if self.g == 2 else tr
        rec = infer(
            net, view, train_stats=cfg["data"], crop_size_M=self.crop, neighbor_count=self.K
        )
        table = self._score("train_split", tr, rec, "PtychoPINN")
        self._emit("train_split", "PtychoPINN", facts, table, "PtychoPINN", scored_on="train")

    def rung_fit_on_test(self):
        rec, facts = self._run("fit_on_test", "pinn", self.test, self.test)
        table = self._score("fit_on_test", self.test, rec, "PtychoPINN")
        self._emit("fit_on_test", "PtychoPINN", facts, table, "PtychoPINN")

    def rung_stitch_probe(self):
        _, _, facts = self.base()
        net, cfg = load_bundle(facts["bundle"])
        view = make_view(self.test, 2, neighbor_count=self.K, seed=0) if self.g == 2 else self.test
        rec = infer(
            net,
            view,
            train_stats=cfg["data"],
            crop_size_M=self.crop,
            neighbor_count=self.K,
            stitch_weighting="probe",
        )
        table = self._score("stitch_probe", self.test, rec, "PtychoPINN")
        self._emit("stitch_probe", "PtychoPINN", facts, table, "PtychoPINN")

    def rung_merge_probe(self):
        if self.g == 1:
            return
        tr, _, _ = self.base()
        rec, facts = self._run(
            "merge_probe",
            "pinn",
            tr,
            self.test,
            fit_kwargs={"merge_weighting": "probe"},
            infer_kwargs={"stitch_weighting": "probe"},
        )
        table = self._score("merge_probe", self.test, rec, "PtychoPINN")
        self._emit("merge_probe", "PtychoPINN", facts, table, "PtychoPINN")

    def rung_width(self):
        tr, _, _ = self.base()
        for s in (float(w) for w in self.args.widths.split(",")):
            rec, facts = self._run(f"width_{s}", "pinn", tr, self.test, scale=s)
            table = self._score(f"width_{s}", self.test, rec, "PtychoPINN")
            self._emit("width", "PtychoPINN", facts, table, "PtychoPINN", scale=s)

    def rung_lr(self):
        tr, _, _ = self.base()
        for lr in (float(x) for x in self.args.lrs.split(",")):
            rec, facts = self._run(f"lr_{lr:g}", "pinn", tr, self.test, lr=lr)
            table = self._score(f"lr_{lr:g}", self.test, rec, "PtychoPINN")
            self._emit("lr", "PtychoPINN", facts, table, "PtychoPINN", lr=lr)

    def rung_n_train(self):
        for n in (int(x) for x in self.args.sizes.split(",")):
            tr = _limit(self.train_all, n)
            for kind, arm in (("pinn", "PtychoPINN"), ("baseline", "Baseline")):
                rec, facts = self._run(f"n_train_{n}_{kind}", kind, tr, self.test)
                table = self._score(f"n_train_{n}_{kind}", self.test, rec, arm)
                self._emit("n_train", arm, facts, table, arm)

    def rung_baseline(self):
        rec, facts = self.baseline_model()
        table = self._score("baseline", self.test, rec, "Baseline")
        self._emit("baseline", "Baseline", facts, table, "Baseline")

    def rung_free_patches(self):
        model, facts = fit_free_patches(
            self.test, self.g, self.K, steps=self.args.free_steps, lr=self.args.free_lr
        )
        nll = likelihood_rungs(model, self.test, self.g, self.K)
        view = make_view(self.test, 2, neighbor_count=self.K, seed=0) if self.g == 2 else self.test
        info = {"n_train": self.test.n, "epochs": None, "train_s": facts["fit_s"]}
        extra = {"free_steps": facts["steps"], "final_loss": facts["final_loss"]}
        for weighting in ("flat", "probe"):
            rec = infer(
                model,
                view,
                crop_size_M=self.crop,
                neighbor_count=self.K,
                stitch_weighting=weighting,
                arm="PtychoPINN",
            )
            table = self._score(f"free_patches_{weighting}", self.test, rec, "PtychoPINN")
            self._emit(
                "free_patches",
                "FreePatches",
                info,
                table,
                "PtychoPINN",
                stitch_weighting=weighting,
                **extra,
                **nll,
            )
        rec = infer(
            model,
            view,
            crop_size_M=self.crop,
            neighbor_count=self.K,
            arm="PtychoPINN",
            phase_sync=self.args.sync_iterations,
        )
        table = self._score("free_patches_sync", self.test, rec, "PtychoPINN")
        self._emit(
            "free_patches",
            "FreePatches",
            info,
            table,
            "PtychoPINN",
            stitch_weighting="flat",
            phase_sync=self.args.sync_iterations,
            **extra,
        )
        align_patch_phases(model, self.test)
        rec = infer(model, view, crop_size_M=self.crop, neighbor_count=self.K, arm="PtychoPINN")
        table = self._score("free_patches_aligned", self.test, rec, "PtychoPINN")
        self._emit(
            "free_patches",
            "FreePatches",
            info,
            table,
            "PtychoPINN",
            scored_on="test_gauge_aligned",
            stitch_weighting="flat",
            **extra,
        )

    def rung_phase_sync(self):
        _, _, pinn_facts = self.base()
        _, base_facts = self.baseline_model()
        for arm, facts in (("PtychoPINN", pinn_facts), ("Baseline", base_facts)):
            for it in (0, self.args.sync_iterations):
                rec = self._infer_bundle(facts, self.test, phase_sync=it)
                table = self._score(f"phase_sync_{arm}_{it}", self.test, rec, arm)
                self._emit("phase_sync", arm, facts, table, arm, phase_sync=it)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--doses", default="1e3,1e4")
    ap.add_argument("--views", default="dense,sparse")
    ap.add_argument("--rungs", default=",".join(RUNGS))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--widths", default="0.25,1,2")
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--lrs", default="3e-3")
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--object-size", type=int, default=640)
    ap.add_argument("--free-steps", type=int, default=1500)
    ap.add_argument("--free-lr", type=float, default=0.05)
    ap.add_argument("--sync-iterations", type=int, default=20)
    ap.add_argument("--object", default="image:camera+astronaut")
    ap.add_argument("--out", default="runs/pinn_ladder")
    args = ap.parse_args()
    rungs = [r for r in args.rungs.split(",") if r]
    views = [v for v in args.views.split(",") if v]
    if bad := sorted(set(rungs) - set(RUNGS)):
        fail(f"--rungs: expected names from {', '.join(RUNGS)}, found {bad}")
    if bad := sorted(set(views) - set(VIEWS)):
        fail(f"--views: expected names from {', '.join(VIEWS)}, found {bad}")
    if args.sync_iterations < 0:
        fail(f"--sync-iterations: expected >= 0, found {args.sync_iterations}")
    if args.epochs < 1 or args.n_train < 1:
        fail(f"--epochs/--n-train: expected >= 1, found {args.epochs}/{args.n_train}")
    for i, dose in enumerate(float(d) for d in args.doses.split(",")):
        full = simulate(
            SimulationConfig(
                N=64,
                object=args.object,
                object_size=args.object_size,
                probe="fly64",
                scan="raster",
                overlap=0.7,
                jitter_px=1.0,
                dose=dose,
                seed=0,
                noise_seed=1 + i,
            )
        )
        train_ds, test_ds = split(full, axis="y", fraction=0.5)
        for view in views:
            ladder = Ladder(args, dose, view, train_ds, test_ds)
            for rung in rungs:
                getattr(ladder, f"rung_{rung}")()


if __name__ == "__main__":
    main()
