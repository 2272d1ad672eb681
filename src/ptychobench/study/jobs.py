"""The study as a DAG of jobs with content keys (SPEC §8.2).

simulate(dose) → split(dose) → view(dose, view, split) → train_pinn / train_baseline(dose, view)
→ iterative(dose, view, split) → compare(dose, view, split) → aggregate → report → verify.

A job's **key** is the SHA-256 of its kind, its settings (the part of the design that determines
its output), the package version and the output hashes of the jobs it reads. A job that finished
with the same key, and whose outputs still hash as recorded, is skipped — so a re-run after a
crash, Ctrl-C or ``kill -9`` resumes and ends with the same results.

Each computing job writes into ``RUN/.staging/<job id>/`` (mirroring the run's layout) and its
outputs are then moved into place (:func:`publish`); a killed job leaves nothing half-written in
the run. Training resumes from its staged checkpoint when the key is unchanged.

The three closing jobs (aggregate, report, verify) are cheap and always run; they read whatever
finished and report failures instead of being blocked by them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptychobench.data.io import sha256_file
from ptychobench.study.design import StudyDesign, dose_dir

__all__ = [
    "Job",
    "JobFailed",
    "plan",
    "conditions",
    "job_settings",
    "job_key",
    "execute",
    "output_hashes",
    "FINAL_KINDS",
]

log = logging.getLogger(__name__)

FINAL_KINDS = ("aggregate", "report", "verify")
GPU_KINDS = (
    "train_pinn", "train_baseline", "iterative", "hybrid_lsqml", "ttr", "halves", "compare"
)
SPLITS = ("train", "test")
HELDOUT = "heldout.npz"
"""Per dose and repeat: the test positions withheld from every arm (reference-free NLL)."""
HALVES = "halves.npz"
"""Per test view: every arm's reconstructions of the two interleaved half-scans."""
STAGING = ".staging"


class JobFailed(RuntimeError):
    """A job finished but its result is not usable (e.g. an arm returned an all-zero image).

    Its outputs are still published so the failure can be inspected.
    """


@dataclasses.dataclass(frozen=True)
class Job:
    """One node of the study DAG.

    ``outputs`` are run-relative POSIX paths (files or directories) that the job publishes.
    """

    id: str
    kind: str
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    dose: float | None = None
    view: str | None = None
    split: str | None = None
    repeat: int = 0

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS

    @property
    def gpu(self) -> bool:
        return self.kind in GPU_KINDS

    @property
    def log(self) -> str:
        return f"logs/{self.id}.log"

    @property
    def dd(self) -> str:
        """The job's dose directory (``dose_1000``, or ``dose_1000_r1`` for repeat 1)."""
        return dose_dir(self.dose, self.repeat)

    def params(self) -> dict[str, Any]:
        p = {"dose": self.dose, "view": self.view, "split": self.split}
        # repeat 0 keeps the one-repeat record (and so its job keys) unchanged
        return {**p, "repeat": self.repeat} if self.repeat else p


def _data(dose: float, *rest: str, repeat: int = 0) -> str:
    return "/".join(("data", dose_dir(dose, repeat), *rest))


def hybrid_dir(dose: float, view: str, split: str, kind: str, repeat: int = 0) -> str:
    """Run-relative directory of a hybrid arm's outputs (``recon.npz``, ``snapshots.npz``)."""
    return f"hybrid/{dose_dir(dose, repeat)}/{view}/{split}/{kind.removeprefix('hybrid_')}"


def plan(design: StudyDesign) -> list[Job]:
    """Every job of ``design`` in a topological (and deterministic) order.

    Each repeat of a dose is its own chain of jobs (``simulate.dose_1000_r1``, ...), so
    repeats resume, fail and run in parallel like any other jobs.
    """
    jobs: list[Job] = []
    for dose in design.doses:
        for repeat in range(design.repeats):
            jobs += _plan_dose(design, dose, repeat)
    compares = tuple(j.id for j in jobs if j.kind == "compare")
    jobs.append(Job("aggregate", "aggregate", compares, ("analysis",)))
    jobs.append(Job("report", "report", ("aggregate",), ("analysis",)))
    jobs.append(Job("verify", "verify", ("report",), ("analysis",)))
    return jobs


def _plan_dose(design: StudyDesign, dose: float, repeat: int) -> list[Job]:
    """The jobs of one dose and repeat, simulation to comparison."""
    dd = dose_dir(dose, repeat)

    def data(*rest: str) -> str:
        return _data(dose, *rest, repeat=repeat)

    def job(jid: str, kind: str, deps, outputs, view=None, split=None) -> Job:
        return Job(jid, kind, tuple(deps), tuple(outputs), dose, view, split, repeat)

    source = "load" if design.experimental else "simulate"  # [data]: the scan file itself
    sim = job(f"{source}.{dd}", source, (), (data("full.npz"),))
    withheld = (data(HELDOUT),) if design.split.heldout_fraction > 0 else ()
    spl = job(
        f"split.{dd}", "split", (sim.id,), (data("train.npz"), data("test.npz"), *withheld)
    )
    jobs = [sim, spl]
    for view in design.views:
        view_ids = {}
        for split in SPLITS:
            j = job(
                f"view.{dd}.{view}.{split}",
                "view",
                (spl.id,),
                (data(view, f"{split}.npz"), data(view, f"overlap_{split}.json")),
                view,
                split,
            )
            view_ids[split] = j.id
            jobs.append(j)
        trains = {}
        for arm, name in (("pinn", "PtychoPINN"), ("baseline", "Baseline")):
            if not design.has(name):
                continue
            j = job(
                f"train_{arm}.{dd}.{view}",
                f"train_{arm}",
                (view_ids["train"],),
                (f"models/{dd}/{view}/{arm}",),
                view,
            )
            trains[arm] = j.id
            jobs.append(j)
        for split in SPLITS:
            reads = [view_ids[split], *trains.values()]
            if design.has("PtyChi"):
                outputs = [f"iterative/{dd}/{view}/{split}/recon.npz"]
                if split == "test" and design.snapshot_epochs(design.iterative.epochs):
                    outputs.append(f"iterative/{dd}/{view}/{split}/snapshots.npz")
                it = job(
                    f"iterative.{dd}.{view}.{split}", "iterative", (view_ids[split],), outputs,
                    view, split,
                )
                jobs.append(it)
                reads.append(it.id)
            if split == "test":
                halves = job(
                    f"halves.{dd}.{view}.{split}",
                    "halves",
                    (view_ids[split], *trains.values()),
                    (f"halves/{dd}/{view}/{split}/{HALVES}",),
                    view,
                    split,
                )
                jobs.append(halves)
                reads.append(halves.id)
                for kind, arm in (("hybrid_lsqml", "PtychoPINN+LSQML"), ("ttr", "PtychoPINN+TTR")):
                    if not design.has(arm):
                        continue
                    h = job(
                        f"{kind}.{dd}.{view}.{split}",
                        kind,
                        (view_ids[split], trains["pinn"]),
                        (hybrid_dir(dose, view, split, kind, repeat),),
                        view,
                        split,
                    )
                    jobs.append(h)
                    reads.append(h.id)
            jobs.append(
                job(
                    f"compare.{dd}.{view}.{split}",
                    "compare",
                    reads,
                    (f"compare/{dd}/{view}/{split}",),
                    view,
                    split,
                )
            )
    return jobs


def conditions(design: StudyDesign) -> list[dict[str, Any]]:
    """The (dose, view, split, repeat) comparisons of ``design`` in planned order."""
    return [
        {"dose": d, "view": v, "split": s, "repeat": r}
        for d in design.doses
        for r in range(design.repeats)
        for v in design.views
        for s in SPLITS
    ]


def job_settings(job: Job, design: StudyDesign) -> dict[str, Any]:
    """The part of ``design`` that determines ``job``'s output (JSON-able)."""
    if job.kind == "simulate":
        return design.simulation_config(job.dose, job.repeat).model_dump()
    if job.kind == "load":
        from ptychobench.data.io import sha256_file

        assert design.data is not None
        key = {**design.data.model_dump(), "sha256": sha256_file(design.data.file)}
        if design.data.probe is not None:
            key["probe_sha256"] = sha256_file(design.data.probe)
        return key
    if job.kind == "split":
        return {**design.split.model_dump(), "heldout_seed": _heldout_seed(design, job)}
    if job.kind == "halves":
        return {
            "arms": [a for a in design.arms if a in HALF_ARMS],
            "iterative": design.iterative_config().model_dump(exclude={"progress", "device"}),
            "lsqml_epochs": design.hybrid.lsqml_epochs,
            "ttr": _ttr_config(design, job.repeat).model_dump(exclude={"device"}),
            "start": _start_settings(job, design),
        }
    if job.kind == "view":
        # the stitch weighting only matters to compare (its key has the resolved value)
        view = design.views[job.view].model_dump(exclude={"stitch_weighting"})
        return {**view, "seed": design.seeds_for(job.repeat)["grouping"]}
    if job.kind in ("train_pinn", "train_baseline"):
        arm = job.kind.removeprefix("train_")
        # merge_weighting is the PINN's gs2 merge: the baseline and gs1 ignore it
        ignored = set() if _merge_weighting(job, design) else {"merge_weighting"}
        return {
            "arm": getattr(design, arm).model_dump(exclude=ignored),
            "train": design.train_config(arm, job.repeat).model_dump(
                exclude={"log_every_s", "device"}
            ),
            "gridsize": design.views[job.view].gridsize,
            "neighbor_count": design.views[job.view].neighbor_count,
            "num_threads": design.num_threads,
        }
    if job.kind == "iterative":
        out = design.iterative_config().model_dump(exclude={"progress", "device"})
        if job.split == "test" and design.snapshot_epochs(design.iterative.epochs):
            out["snapshots"] = list(design.snapshot_epochs(design.iterative.epochs))
        return out
    if job.kind == "hybrid_lsqml":
        return {
            "iterative": design.iterative_config().model_dump(exclude={"progress", "device"}),
            "epochs": design.hybrid.lsqml_epochs,
            "snapshots": list(design.snapshot_epochs(design.hybrid.lsqml_epochs)),
            "start": _start_settings(job, design),
        }
    if job.kind == "ttr":
        return {"ttr": _ttr_config(design, job.repeat).model_dump(exclude={"device"})}
    if job.kind == "compare":
        return {
            "metrics": design.metrics.model_dump(exclude={"stitch_weighting"}),
            "crop_size_M": _crop(job, design),
            "stitch_weighting": _stitch_weighting(job, design),
            "arms": list(design.arms),
        }
    return {}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptychobench")
    except PackageNotFoundError:
        return "unknown"


def job_key(job: Job, design: StudyDesign, dep_outputs: dict[str, dict[str, str]]) -> str:
    """SHA-256 over kind, settings, package version and the inputs' output hashes."""
    doc = {
        "kind": job.kind,
        "params": job.params(),
        "settings": job_settings(job, design),
        "version": _version(),
        "inputs": {d: dep_outputs.get(d, {}) for d in job.deps},
    }
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def output_hashes(run_dir: Path, job: Job) -> dict[str, str]:
    """``{run-relative file path: sha256}`` of every file under the job's outputs."""
    out: dict[str, str] = {}
    for rel in job.outputs:
        p = run_dir / rel
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                out[f.relative_to(run_dir).as_posix()] = sha256_file(f)
    return out


# ----------------------------------------------------------------------------------------------
# staging and publishing


def staging_dir(run_dir: Path, job: Job, key: str) -> Path:
    """The job's private scratch directory; reused only when the key is unchanged."""
    stage = run_dir / STAGING / job.id
    stamp = stage / ".key"
    if stage.exists() and (not stamp.exists() or stamp.read_text() != key):
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return stage


def publish(run_dir: Path, stage: Path, job: Job) -> None:
    """Move each staged output into the run, replacing an older version of it."""
    for rel in job.outputs:
        src, dst = stage / rel, run_dir / rel
        if not src.exists():
            raise JobFailed(f"{job.id}: expected output {rel} was not produced")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir():
            # keep the replaced version aside until the new one is in place
            old = run_dir / STAGING / "replaced" / job.id
            if old.exists():
                shutil.rmtree(old)
            old.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old)
        else:
            os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# job bodies: (job, design, run_dir, stage, progress) -> None; read from run_dir, write to stage


def _load(path: Path):
    from ptychobench.data.io import load

    return load(path)


def _save(ds, path: Path) -> None:
    from ptychobench.data.io import save

    path.parent.mkdir(parents=True, exist_ok=True)
    save(ds, path)


def _run_simulate(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.simulate import simulate

    ds = simulate(design.simulation_config(job.dose, job.repeat))
    _save(ds, stage / job.outputs[0])


def _run_load(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    """Experimental mode: the scan file, validated, as the study's full dataset."""
    from ptychobench.data.io import add_parent, sha256_file

    assert design.data is not None
    ds = design.data.load()
    add_parent(ds.metadata, design.data.file)
    ds.metadata.setdefault("transformations", []).append(
        {"op": "study_data", "file": design.data.file, "sha256": sha256_file(design.data.file)}
    )
    _save(ds, stage / job.outputs[0])


def _run_split(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    """train / test halves of the scan, and the test positions withheld from every arm."""
    import numpy as np

    from ptychobench.data.split import split
    from ptychobench.evaluate.reference_free import heldout_indices

    full = _load(run_dir / _data(job.dose, "full.npz", repeat=job.repeat))
    train, test = split(full, axis=design.split.axis, fraction=design.split.fraction)
    held = heldout_indices(test.n, design.split.heldout_fraction, _heldout_seed(design, job))
    rest = np.setdiff1d(np.arange(test.n), held)
    record = {"op": "heldout", "fraction": design.split.heldout_fraction, "n_test": test.n}
    _save(train, stage / job.outputs[0])
    _save(test.select(rest, transformation=record | {"part": "kept"}), stage / job.outputs[1])
    if len(job.outputs) > 2:  # heldout_fraction > 0: at least one position is withheld
        withheld = test.select(held, transformation=record | {"part": "withheld"})
        _save(withheld, stage / job.outputs[2])


def _heldout_seed(design: StudyDesign, job: Job) -> int:
    return design.seeds_for(job.repeat)["grouping"] + 7919  # not the grouping's own stream


def _run_view(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.grouping import make_view, n_kept
    from ptychobench.data.overlap import overlap_report, write_overlap_json
    from ptychobench.physics.probes import probe_info

    spec = design.views[job.view]
    ds = _load(run_dir / _data(job.dose, f"{job.split}.npz", repeat=job.repeat))
    n_groups, capped = spec.groups_for(n_kept(spec.s_img, ds.n))
    if capped:
        log.info("views.%s.%s (%s split)", job.view, capped, job.split)  # the plan check warned
    v = make_view(
        ds,
        spec.gridsize,
        s_img=spec.s_img,
        n_groups=n_groups if spec.n_groups is not None else None,
        neighbor_count=spec.neighbor_count,
        seed=design.seeds_for(job.repeat)["grouping"],
    )
    v.metadata["view_name"] = job.view
    _save(v, stage / job.outputs[0])
    D = probe_info(v.probeGuess).effective_diameter_px
    rep = overlap_report(v, D, neighbor_count=max(spec.neighbor_count, 4))
    out = stage / job.outputs[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_overlap_json(rep, out)


def _run_train(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.fit import fit

    arm = job.kind.removeprefix("train_")
    spec = design.views[job.view]
    settings = getattr(design, arm)
    rel = _data(job.dose, job.view, "train.npz", repeat=job.repeat)
    ds = _load(run_dir / rel)
    out = stage / job.outputs[0]
    resume = (out / "checkpoint.pt").exists()
    if resume:
        log.info("%s: resuming from the staged checkpoint %s", job.id, out / "checkpoint.pt")
    res = fit(
        ds,
        arm,
        out,
        gridsize=spec.gridsize,
        train_config=design.train_config(arm, job.repeat),
        n_filters_scale=settings.n_filters_scale,
        loss=settings.loss,
        neighbor_count=spec.neighbor_count,
        resume=resume,
        data_source=rel,
        progress=False,
        merge_weighting=_merge_weighting(job, design) or "flat",
    )
    if res.interrupted:
        raise KeyboardInterrupt
    (out / "checkpoint.pt").unlink(missing_ok=True)


def _run_iterative(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.recon import write_reconstruction
    from ptychobench.iterative import reconstruct

    ds = _load(run_dir / _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat))
    cfg = design.iterative_config()
    if len(job.outputs) > 1:  # the test split of a design with PtychoPINN+LSQML: the curve too
        rec, snaps = _run_iterative_snapshots(
            lambda stops, cb: reconstruct(ds, cfg, snapshot_epochs=stops, on_snapshot=cb),
            cfg.epochs,
            design,
        )
        _write_snapshots(snaps, stage / job.outputs[1])
    else:
        rec = reconstruct(ds, cfg)
    out = stage / job.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_reconstruction(rec, out)


def _run_iterative_snapshots(rec_fn, epochs: int, design: StudyDesign):
    """Run ``rec_fn(snapshot_epochs, on_snapshot)``; write the snapshots beside the recon."""
    import numpy as np

    stops = design.snapshot_epochs(epochs)
    seen: list[tuple[int, float, Any]] = []
    rec = rec_fn(stops, lambda e, sec, obj: seen.append((e, sec, obj)))
    snaps = None
    if stops:
        snaps = {
            "epochs": np.array([e for e, _, _ in seen], np.int64),
            "seconds": np.array([sec for _, sec, _ in seen], np.float64),
            "objects": np.stack([obj for _, _, obj in seen]).astype(np.complex64),
        }
    return rec, snaps


def _write_snapshots(snaps, path: Path) -> None:
    import numpy as np

    from ptychobench.data.io import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **snaps)


def _train_seconds(bundle: Path) -> float | None:
    """Training wall time of a bundle: Σ of its history's per-epoch seconds."""
    import csv

    p = bundle / "history.csv"
    if not p.exists():
        return None
    with p.open(newline="") as fh:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds")))


def _network_recon(job: Job, design: StudyDesign, run_dir: Path, arm: str, name: str, ds, rel):
    """Inference of a trained network arm on ``ds`` as compare stitches it (+ ``train_s``)."""
    from ptychobench.infer import infer
    from ptychobench.models.bundle import load_bundle

    bundle = run_dir / "models" / job.dd / job.view / arm
    net, cfg = load_bundle(bundle)
    rec = infer(
        net,
        ds,
        train_stats=cfg.get("data"),
        device=design.device,
        crop_size_M=_crop(job, design),
        data_source=rel,
        arm=name,
        neighbor_count=design.views[job.view].neighbor_count,
        stitch_weighting=_stitch_weighting(job, design),
        phase_sync=design.metrics.phase_sync,
    )
    rec.metadata["train_s"] = _train_seconds(bundle)
    return rec


def _start_settings(job: Job, design: StudyDesign) -> dict[str, Any]:
    """How the PINN's start object of PtychoPINN+LSQML is stitched (as compare stitches it)."""
    return {
        "crop_size_M": _crop(job, design),
        "stitch_weighting": _stitch_weighting(job, design),
        "phase_sync": design.metrics.phase_sync,
        "neighbor_count": design.views[job.view].neighbor_count,
    }


def _ttr_config(design: StudyDesign, repeat: int = 0):
    from ptychobench.refine import TTRConfig

    h = design.hybrid
    return TTRConfig(
        epochs=h.ttr_epochs,
        lr=h.ttr_lr,
        batch_size=h.ttr_batch_size,
        max_seconds=h.ttr_max_seconds,
        phase_sync=design.metrics.phase_sync,
        seed=design.seeds_for(repeat)["training"],
        device=design.device,
    )


def _run_hybrid_lsqml(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress):
    from ptychobench.data.recon import write_reconstruction
    from ptychobench.iterative import reconstruct

    rel = _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat)
    ds = _load(run_dir / rel)
    start = _network_recon(job, design, run_dir, "pinn", "PtychoPINN", ds, rel)
    cfg = design.iterative_config().model_copy(update={"epochs": design.hybrid.lsqml_epochs})
    rec, snaps = _run_iterative_snapshots(
        lambda stops, cb: reconstruct(
            ds, cfg, init_object=start, snapshot_epochs=stops, on_snapshot=cb
        ),
        cfg.epochs,
        design,
    )
    infer_s, refine_s = float(start.metadata["seconds"]), float(rec.metadata["seconds"])
    rec.metadata.update(
        arm="PtychoPINN+LSQML",
        infer_s=infer_s,
        refine_s=refine_s,
        seconds=infer_s + refine_s,
        train_s=start.metadata.get("train_s"),
    )
    out = stage / job.outputs[0]
    write_reconstruction(rec, out / "recon.npz")
    if snaps is not None:
        snaps["seconds"] = snaps["seconds"] + infer_s  # the curve starts after the inference
        _write_snapshots(snaps, out / "snapshots.npz")


def _run_ttr(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.recon import write_reconstruction
    from ptychobench.models.bundle import load_bundle
    from ptychobench.refine import refine

    ds = _load(run_dir / _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat))
    bundle = run_dir / "models" / job.dd / job.view / "pinn"
    net, _ = load_bundle(bundle)
    res = refine(net, ds, _ttr_config(design, job.repeat))
    res.reconstruction.metadata["train_s"] = _train_seconds(bundle)
    write_reconstruction(res.reconstruction, stage / job.outputs[0] / "recon.npz")


HALF_ARMS = ("PtychoPINN", "Baseline", "PtyChi", "PtychoPINN+LSQML", "PtychoPINN+TTR")


def _run_halves(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    """Every arm reconstructs the two interleaved halves of the test view, independently (the
    half-scan FRC of compare). An arm that cannot run on a half is recorded, not fatal."""
    import json

    import numpy as np

    from ptychobench.data.io import atomic_open
    from ptychobench.evaluate.reference_free import interleaved_halves

    rel = _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat)
    ds = _load(run_dir / rel)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"n": [], "seconds": {}, "errors": {}}
    for half, idx in zip("ab", interleaved_halves(ds.n), strict=True):
        sub = ds.select(idx, transformation={"op": "half_scan", "half": half})
        meta["n"].append(int(sub.n))
        for name, rec in _half_arms(job, design, run_dir, sub, rel).items():
            if isinstance(rec, BaseException):
                meta["errors"][f"{name}.{half}"] = f"{type(rec).__name__}: {rec}"
                log.warning("%s on half %s: %s", name, half, rec)
                continue
            arrays[f"{name}.{half}"] = rec.reconstructed_object.astype(np.complex64)
            meta["seconds"][f"{name}.{half}"] = rec.metadata.get("seconds")
    out = stage / job.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def _half_arms(job: Job, design: StudyDesign, run_dir: Path, ds, rel) -> dict[str, Any]:
    """name → Reconstruction (or the exception) of every arm on one half-scan ``ds``."""
    from ptychobench.iterative import reconstruct
    from ptychobench.models.bundle import load_bundle
    from ptychobench.refine import refine

    def attempt(fn):
        try:
            return fn()
        except Exception as exc:  # one arm's failure leaves the others' halves
            return exc

    out: dict[str, Any] = {}
    for arm, name in (("pinn", "PtychoPINN"), ("baseline", "Baseline")):
        if design.has(name):
            out[name] = attempt(
                lambda a=arm, n=name: _network_recon(job, design, run_dir, a, n, ds, rel)
            )
    if design.has("PtyChi"):
        out["PtyChi"] = attempt(lambda: reconstruct(ds, design.iterative_config()))
    start = out.get("PtychoPINN")
    if design.has("PtychoPINN+LSQML"):
        cfg = design.iterative_config().model_copy(update={"epochs": design.hybrid.lsqml_epochs})
        out["PtychoPINN+LSQML"] = (
            start
            if isinstance(start, BaseException)
            else attempt(lambda: reconstruct(ds, cfg, init_object=start))
        )
    if design.has("PtychoPINN+TTR"):
        bundle = run_dir / "models" / job.dd / job.view / "pinn"
        ttr = _ttr_config(design, job.repeat)
        out["PtychoPINN+TTR"] = attempt(
            lambda: refine(load_bundle(bundle)[0], ds, ttr).reconstruction
        )
    return out


def _crop(job: Job, design: StudyDesign) -> int | None:
    spec = design.views[job.view]
    return spec.crop_size_M if spec.crop_size_M is not None else design.metrics.crop_size_M


def _merge_weighting(job: Job, design: StudyDesign) -> str | None:
    """The PINN's gs2 merge weighting for a training job; None where no merge runs."""
    if job.kind != "train_pinn" or design.views[job.view].gridsize != 2:
        return None
    return design.pinn.merge_weighting


def _stitch_weighting(job: Job, design: StudyDesign) -> str:
    spec = design.views[job.view]
    if spec.stitch_weighting is not None:
        return spec.stitch_weighting
    return design.metrics.stitch_weighting


def _run_compare(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.recon import read_reconstruction
    from ptychobench.evaluate.compare import compare

    rel = _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat)
    ds = _load(run_dir / rel)
    dd = job.dd
    shape = ds.objectGuess.shape if ds.objectGuess is not None else None
    arms: dict[str, Any] = {}
    for arm, name in (("pinn", "PtychoPINN"), ("baseline", "Baseline")):
        if not design.has(name):
            continue
        try:
            arms[name] = _network_recon(job, design, run_dir, arm, name, ds, rel)
        except Exception as exc:  # an arm that cannot run is reported, the others still scored
            log.error("%s: %s", name, exc)
            arms[name] = exc
    files = {"PtyChi": f"iterative/{dd}/{job.view}/{job.split}/recon.npz"}
    if job.split == "test":
        for kind, name in (("hybrid_lsqml", "PtychoPINN+LSQML"), ("ttr", "PtychoPINN+TTR")):
            files[name] = f"{hybrid_dir(job.dose, job.view, job.split, kind, job.repeat)}/recon.npz"
    for name, path in files.items():
        if not design.has(name):
            continue
        try:
            arms[name] = read_reconstruction(run_dir / path, shape=shape)
        except Exception as exc:
            arms[name] = exc
    snapshots, curve_rows = _load_snapshots(job, design, run_dir, arms)
    out = stage / job.outputs[0]
    if job.split == "test":
        free = _reference_free(job, run_dir, ds, arms)
    else:  # the train split has no withheld patterns: without truth nothing is scored there
        free = None if ds.objectGuess is not None else {}
    res = compare(
        ds,
        arms,
        out,
        _compare_settings(job, design),
        data_source=rel,
        snapshots=snapshots,
        reference_free=free,
    )
    _write_curves(out, curve_rows, res.snapshots)
    if res.errors:
        raise JobFailed(
            "; ".join(f"{arm}: {msg}" for arm, msg in sorted(res.errors.items())) + f" (data {rel})"
        )


def _reference_free(job: Job, run_dir: Path, ds, arms: dict[str, Any]) -> dict[str, dict]:
    """Held-out NLL and half-scan FRC of every arm of a test comparison (a score that cannot be
    computed is left out and logged; the ground-truth scores do not depend on it)."""
    import json

    import numpy as np

    from ptychobench.evaluate.reference_free import half_scan_frc, heldout_nll, scanned_box

    held_path = run_dir / _data(job.dose, HELDOUT, repeat=job.repeat)
    try:
        held = _load(held_path) if held_path.exists() else None  # none: heldout_fraction 0
    except (OSError, ValueError) as exc:  # the ground-truth scores do not need it
        log.warning("held-out patterns unusable, no held-out NLL: %s", exc)
        held = None
    halves_path = run_dir / "halves" / job.dd / job.view / job.split / HALVES
    halves: dict[str, np.ndarray] = {}
    if halves_path.exists():
        with np.load(halves_path, allow_pickle=False) as f:
            halves = {k: f[k] for k in f.files if k != "meta"}
            errors = json.loads(str(f["meta"]))["errors"]
        for key, msg in errors.items():
            log.info("half-scan %s: %s", key, msg)
    counts = held.diffraction.astype(np.float64) ** 2 if held is not None else None
    out: dict[str, dict] = {}
    for name, rec in arms.items():
        scores: dict[str, Any] = {}
        if not isinstance(rec, BaseException) and held is not None and held.n:
            try:
                h = heldout_nll(rec.reconstructed_object, ds.probeGuess, held.coords, counts)
                scores["heldout_nll_rel"] = h.relative
            except ValueError as exc:
                log.warning("%s: held-out NLL: %s", name, exc)
        a, b = halves.get(f"{name}.a"), halves.get(f"{name}.b")
        if a is not None and b is not None:
            f = half_scan_frc(a, b, scanned_box(ds.coords, a.shape))
            scores["halfscan_frc_halfbit"] = f["halfbit"]
            scores["halfscan_frc1over7"] = f["1over7"]
        out[name] = scores
    return out


def _compare_settings(job: Job, design: StudyDesign):
    from ptychobench.evaluate.compare import CompareSettings

    m = design.metrics
    return CompareSettings(
        crop_size_M=_crop(job, design),
        stitch_weighting=_stitch_weighting(job, design),
        phase_sync=m.phase_sync,
        registration=m.registration,
        phase_align=m.phase_align,
        ms_ssim_sigma=m.ms_ssim_sigma,
    )


CURVE_CSV = "convergence.csv"


def _load_snapshots(job: Job, design: StudyDesign, run_dir: Path, arms) -> tuple[dict, list]:
    """The LSQML snapshots of PtyChi (from flat) and PtychoPINN+LSQML on the test split.

    Returns ``({"<arm>@<epoch>": (H, W) object}, [(arm, epoch, seconds, name), ...])``.
    """
    import numpy as np

    if job.split != "test" or not design.has("PtychoPINN+LSQML"):
        return {}, []
    dd = job.dd
    sources = {
        "PtyChi": run_dir / "iterative" / dd / job.view / job.split / "snapshots.npz",
        "PtychoPINN+LSQML": run_dir
        / hybrid_dir(job.dose, job.view, job.split, "hybrid_lsqml", job.repeat)
        / "snapshots.npz",
    }
    objects: dict[str, Any] = {}
    rows: list[tuple[str, int, float, str]] = []
    for name, path in sources.items():
        final = arms.get(name)
        if not path.exists() or final is None or isinstance(final, BaseException):
            continue
        with np.load(path, allow_pickle=False) as f:
            epochs, seconds, objs = f["epochs"], f["seconds"], f["objects"]
        for e, sec, obj in zip(epochs, seconds, objs, strict=True):
            key = f"{name}@{int(e)}"
            objects[key] = obj
            rows.append((name, int(e), float(sec), key))
    return objects, rows


def _write_curves(out: Path, rows: list, scores: dict[str, tuple[float, float]]) -> None:
    """``convergence.csv``: ``model,epoch,seconds,amplitude_ssim,phase_ssim`` per snapshot.

    Seconds count from the arm's start (PtychoPINN+LSQML: including the PINN's inference); the
    snapshots were scored on the same pixels as the arms, so the last row of an arm equals its
    final score in ``comparison_metrics.csv``.
    """
    if not rows:
        return
    lines = ["model,epoch,seconds,amplitude_ssim,phase_ssim"]
    for name, e, sec, key in rows:
        amp, ph = scores.get(key, (float("nan"), float("nan")))
        lines.append(f"{name},{e},{sec!r},{amp!r},{ph!r}")
    (out / CURVE_CSV).write_text("\n".join(lines) + "\n")


BODIES: dict[str, Callable[..., None]] = {
    "simulate": _run_simulate,
    "load": _run_load,
    "split": _run_split,
    "view": _run_view,
    "train_pinn": _run_train,
    "train_baseline": _run_train,
    "iterative": _run_iterative,
    "hybrid_lsqml": _run_hybrid_lsqml,
    "ttr": _run_ttr,
    "halves": _run_halves,
    "compare": _run_compare,
}


def execute(job: Job, design: StudyDesign, run_dir: Path, key: str, progress=None) -> None:
    """Run one computing job: stage, compute, publish (also when it raises :class:`JobFailed`)."""
    stage = staging_dir(run_dir, job, key)
    try:
        BODIES[job.kind](job, design, run_dir, stage, progress)
    except JobFailed:
        if all((stage / rel).exists() for rel in job.outputs):
            publish(run_dir, stage, job)
        raise
    publish(run_dir, stage, job)
