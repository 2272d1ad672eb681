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
GPU_KINDS = ("train_pinn", "train_baseline", "iterative", "compare")
SPLITS = ("train", "test")
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

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS

    @property
    def gpu(self) -> bool:
        return self.kind in GPU_KINDS

    @property
    def log(self) -> str:
        return f"logs/{self.id}.log"

    def params(self) -> dict[str, Any]:
        return {"dose": self.dose, "view": self.view, "split": self.split}


def _data(dose: float, *rest: str) -> str:
    return "/".join(("data", dose_dir(dose), *rest))


def plan(design: StudyDesign) -> list[Job]:
    """Every job of ``design`` in a topological (and deterministic) order."""
    jobs: list[Job] = []
    for dose in design.doses:
        dd = dose_dir(dose)
        sim = Job(f"simulate.{dd}", "simulate", (), (_data(dose, "full.npz"),), dose)
        spl = Job(
            f"split.{dd}",
            "split",
            (sim.id,),
            (_data(dose, "train.npz"), _data(dose, "test.npz")),
            dose,
        )
        jobs += [sim, spl]
        for view in design.views:
            view_ids = {}
            for split in SPLITS:
                j = Job(
                    f"view.{dd}.{view}.{split}",
                    "view",
                    (spl.id,),
                    (_data(dose, view, f"{split}.npz"), _data(dose, view, f"overlap_{split}.json")),
                    dose,
                    view,
                    split,
                )
                view_ids[split] = j.id
                jobs.append(j)
            trains = {}
            for arm in ("pinn", "baseline"):
                j = Job(
                    f"train_{arm}.{dd}.{view}",
                    f"train_{arm}",
                    (view_ids["train"],),
                    (f"models/{dd}/{view}/{arm}",),
                    dose,
                    view,
                )
                trains[arm] = j.id
                jobs.append(j)
            for split in SPLITS:
                it = Job(
                    f"iterative.{dd}.{view}.{split}",
                    "iterative",
                    (view_ids[split],),
                    (f"iterative/{dd}/{view}/{split}/recon.npz",),
                    dose,
                    view,
                    split,
                )
                cmp_ = Job(
                    f"compare.{dd}.{view}.{split}",
                    "compare",
                    (view_ids[split], trains["pinn"], trains["baseline"], it.id),
                    (f"compare/{dd}/{view}/{split}",),
                    dose,
                    view,
                    split,
                )
                jobs += [it, cmp_]
    compares = tuple(j.id for j in jobs if j.kind == "compare")
    jobs.append(Job("aggregate", "aggregate", compares, ("analysis",)))
    jobs.append(Job("report", "report", ("aggregate",), ("analysis",)))
    jobs.append(Job("verify", "verify", ("report",), ("analysis",)))
    return jobs


def conditions(design: StudyDesign) -> list[dict[str, Any]]:
    """The (dose, view, split) comparisons of ``design`` in planned order."""
    return [
        {"dose": d, "view": v, "split": s}
        for d in design.doses
        for v in design.views
        for s in SPLITS
    ]


def job_settings(job: Job, design: StudyDesign) -> dict[str, Any]:
    """The part of ``design`` that determines ``job``'s output (JSON-able)."""
    if job.kind == "simulate":
        return design.simulation_config(job.dose).model_dump()
    if job.kind == "split":
        return design.split.model_dump()
    if job.kind == "view":
        # the stitch weighting only matters to compare (its key has the resolved value)
        view = design.views[job.view].model_dump(exclude={"stitch_weighting"})
        return {**view, "seed": design.seeds.grouping}
    if job.kind in ("train_pinn", "train_baseline"):
        arm = job.kind.removeprefix("train_")
        # merge_weighting is the PINN's gs2 merge: the baseline and gs1 ignore it
        ignored = set() if _merge_weighting(job, design) else {"merge_weighting"}
        return {
            "arm": getattr(design, arm).model_dump(exclude=ignored),
            "train": design.train_config(arm).model_dump(exclude={"log_every_s", "device"}),
            "gridsize": design.views[job.view].gridsize,
            "neighbor_count": design.views[job.view].neighbor_count,
            "num_threads": design.num_threads,
        }
    if job.kind == "iterative":
        return design.iterative_config().model_dump(exclude={"progress", "device"})
    if job.kind == "compare":
        return {
            "metrics": design.metrics.model_dump(exclude={"stitch_weighting"}),
            "crop_size_M": _crop(job, design),
            "stitch_weighting": _stitch_weighting(job, design),
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

    ds = simulate(design.simulation_config(job.dose))
    _save(ds, stage / job.outputs[0])


def _run_split(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.split import split

    full = _load(run_dir / _data(job.dose, "full.npz"))
    train, test = split(full, axis=design.split.axis, fraction=design.split.fraction)
    _save(train, stage / job.outputs[0])
    _save(test, stage / job.outputs[1])


def _run_view(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.data.grouping import make_view
    from ptychobench.data.overlap import overlap_report, write_overlap_json
    from ptychobench.physics.probes import probe_info

    spec = design.views[job.view]
    ds = _load(run_dir / _data(job.dose, f"{job.split}.npz"))
    v = make_view(
        ds,
        spec.gridsize,
        s_img=spec.s_img,
        n_groups=spec.n_groups,
        neighbor_count=spec.neighbor_count,
        seed=design.seeds.grouping,
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
    rel = _data(job.dose, job.view, "train.npz")
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
        train_config=design.train_config(arm),
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

    ds = _load(run_dir / _data(job.dose, job.view, f"{job.split}.npz"))
    rec = reconstruct(ds, design.iterative_config())
    out = stage / job.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_reconstruction(rec, out)


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
    from ptychobench.evaluate.compare import CompareSettings, compare
    from ptychobench.infer import infer
    from ptychobench.models.bundle import load_bundle

    rel = _data(job.dose, job.view, f"{job.split}.npz")
    ds = _load(run_dir / rel)
    spec = design.views[job.view]
    dd = dose_dir(job.dose)
    arms: dict[str, Any] = {}
    for arm, name in (("pinn", "PtychoPINN"), ("baseline", "Baseline")):
        try:
            net, cfg = load_bundle(run_dir / "models" / dd / job.view / arm)
            arms[name] = infer(
                net,
                ds,
                train_stats=cfg.get("data"),
                device=design.device,
                crop_size_M=_crop(job, design),
                data_source=rel,
                arm=name,
                neighbor_count=spec.neighbor_count,
                stitch_weighting=_stitch_weighting(job, design),
                phase_sync=design.metrics.phase_sync,
            )
        except Exception as exc:  # an arm that cannot run is reported, the others still scored
            log.error("%s: %s", name, exc)
            arms[name] = exc
    try:
        arms["PtyChi"] = read_reconstruction(
            run_dir / "iterative" / dd / job.view / job.split / "recon.npz",
            shape=ds.objectGuess.shape if ds.objectGuess is not None else None,
        )
    except Exception as exc:
        arms["PtyChi"] = exc
    m = design.metrics
    res = compare(
        ds,
        arms,
        stage / job.outputs[0],
        CompareSettings(
            crop_size_M=_crop(job, design),
            stitch_weighting=_stitch_weighting(job, design),
            phase_sync=m.phase_sync,
            registration=m.registration,
            phase_align=m.phase_align,
            ms_ssim_sigma=m.ms_ssim_sigma,
        ),
        data_source=rel,
    )
    if res.errors:
        raise JobFailed(
            "; ".join(f"{arm}: {msg}" for arm, msg in sorted(res.errors.items())) + f" (data {rel})"
        )


BODIES: dict[str, Callable[..., None]] = {
    "simulate": _run_simulate,
    "split": _run_split,
    "view": _run_view,
    "train_pinn": _run_train,
    "train_baseline": _run_train,
    "iterative": _run_iterative,
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
