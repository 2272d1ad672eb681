"""The study as a DAG of jobs with content keys (SPEC §8.2).

simulate(dose) → split(dose) → view(dose, view, split) → fit(arm, dose, view) on the train split
→ recon(arm, dose, view, split) and halves(arm, dose, view) → compare(dose, view, split) →
aggregate → report → verify. Every arm goes through the same three kinds (``fit``, ``recon``,
``halves``) via :class:`ptychobench.arms.Arm`; no arm is named here.

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

from ptychobench.data.io import atomic_open, sha256_file
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
GPU_KINDS = ("fit", "recon", "halves", "compare")
SPLITS = ("train", "test")
HELDOUT = "heldout.npz"
"""Per dose and repeat: the test positions withheld from every arm (reference-free NLL)."""
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
    arm: str | None = None
    #: Dependencies whose failure does not block this job (compare: the arms' own jobs).
    soft: tuple[str, ...] = ()

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
        if self.arm is not None:
            p["arm"] = self.arm
        # repeat 0 keeps the one-repeat record (and so its job keys) unchanged
        return {**p, "repeat": self.repeat} if self.repeat else p


def _data(dose: float, *rest: str, repeat: int = 0) -> str:
    return "/".join(("data", dose_dir(dose, repeat), *rest))


def recon_file(arm, dd: str, view: str, split: str) -> str:
    """Run-relative path of an arm's reconstruction of one view and split."""
    return f"{arm.recon_dir(dd, view, split)}/recon.npz"


def halves_file(arm, dd: str, view: str) -> str:
    """Run-relative path of an arm's two half-scan reconstructions (test split)."""
    return f"halves/{dd}/{view}/test/{arm.slug}.npz"


def job_prefix(arm) -> str:
    """Job-id prefix of an arm's reconstruction jobs (kept apart from the other kinds)."""
    return arm._prefix or f"arm_{arm.slug}"


def planned_arms(design: StudyDesign) -> dict[str, Any]:
    """The arms this design runs: every listed arm and the references; an arm that needs the
    true object only where there is one to give (never in experimental mode)."""
    arms = {
        n: a
        for n, a in design.arm_objects().items()
        if not (a.needs.truth_object and design.experimental and a.role != "floor")
    }
    return _starts_first(arms)


def _starts_first(arms: dict[str, Any]) -> dict[str, Any]:
    """``arms`` in their listed order, except that an arm's start comes before it (a design may
    list ``PtychoPINN+LSQML`` before ``PtychoPINN``; found by the design property test)."""
    out: dict[str, Any] = {}

    def add(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in out or name in seen or name not in arms:
            return
        start = arms[name].start
        if start:
            add(start, (*seen, name))
        out[name] = arms[name]

    for name in arms:
        add(name)
    return out


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
    """The jobs of one dose and repeat, simulation to comparison.

    Per view: a ``fit`` job per arm that fits (on the train split); per split a ``recon`` job
    per arm (inline arms, the cheap floor, are reconstructed by compare itself); on the test
    split a ``halves`` job per arm that runs on the half-scans; then ``compare``, which runs
    even when an arm's jobs failed (they are *soft* dependencies: that arm's cells fail).
    """
    dd = dose_dir(dose, repeat)
    arms = planned_arms(design)

    def data(*rest: str) -> str:
        return _data(dose, *rest, repeat=repeat)

    def job(jid, kind, deps, outputs, view=None, split=None, arm=None, soft=()) -> Job:
        return Job(
            jid, kind, tuple(deps), tuple(outputs), dose, view, split, repeat, arm, tuple(soft)
        )

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
        fits: dict[str, str] = {}
        for name, arm in arms.items():
            if arm.fits and arm.fit_from is None:
                j = job(
                    f"train_{arm.slug}.{dd}.{view}",
                    "fit",
                    (view_ids["train"],),
                    (arm.artifact_dir(dd, view),),
                    view,
                    arm=name,
                )
                fits[name] = j.id
                jobs.append(j)
        for split in SPLITS:
            soft: list[str] = []
            recons: dict[str, str] = {}
            halves: dict[str, str] = {}
            for name, arm in arms.items():
                if arm.inline or (split == "train" and arm.test_only):
                    continue
                deps = [view_ids[split]]
                fit = fits.get(arm.fit_from or name)
                if fit:
                    deps.append(fit)
                if arm.start:
                    deps.append(recons[arm.start])
                outputs = [recon_file(arm, dd, view, split)]
                if split == "test" and _snapshot_stops(design, arm):
                    outputs.append(f"{arm.recon_dir(dd, view, split)}/snapshots.npz")
                j = job(f"{job_prefix(arm)}.{dd}.{view}.{split}", "recon", deps, outputs, view,
                        split, arm=name)
                recons[name] = j.id
                jobs.append(j)
                soft.append(j.id)
                if split == "test" and arm.wants_halves():
                    hdeps = [view_ids[split], *([fit] if fit else [])]
                    if arm.start:
                        if arm.start not in halves:
                            continue  # its start has no half-scans: neither can it
                        hdeps.append(halves[arm.start])
                    h = job(f"halves_{arm.slug}.{dd}.{view}.{split}", "halves", hdeps,
                            (halves_file(arm, dd, view),), view, split, arm=name)
                    halves[name] = h.id
                    jobs.append(h)
                    soft.append(h.id)
            jobs.append(
                job(
                    f"compare.{dd}.{view}.{split}",
                    "compare",
                    [view_ids[split], *soft],
                    (f"compare/{dd}/{view}/{split}",),
                    view,
                    split,
                    soft=soft,
                )
            )
    return jobs


def _snapshot_stops(design: StudyDesign, arm) -> tuple[int, ...]:
    return design.snapshot_epochs(arm.iterations()) if arm.snapshots else ()


def conditions(design: StudyDesign) -> list[dict[str, Any]]:
    """The (dose, view, split, repeat) comparisons of ``design`` in planned order."""
    return [
        {"dose": d, "view": v, "split": s, "repeat": r}
        for d in design.doses
        for r in range(design.repeats)
        for v in design.views
        for s in SPLITS
    ]


def arm_context(job: Job, design: StudyDesign, data_source: str = "dataset"):
    """What the study tells an arm about ``job`` (:class:`ptychobench.arms.ArmContext`)."""
    from ptychobench.arms import ArmContext

    spec = design.views[job.view]
    return ArmContext(
        device=design.device,
        seed=design.seeds_for(job.repeat)["training"],
        solver_seed=design.seeds.simulation,
        gridsize=spec.gridsize,
        neighbor_count=spec.neighbor_count,
        crop_size_M=_crop(job, design),
        stitch_weighting=_stitch_weighting(job, design),
        phase_sync=design.metrics.phase_sync,
        num_threads=design.num_threads,
        data_source=data_source,
    )


def _job_data(job: Job) -> str:
    """The dataset an arm job reads: the training view (fit) or the view of its split."""
    split = "train" if job.kind == "fit" else job.split
    return _data(job.dose, job.view, f"{split}.npz", repeat=job.repeat)


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
    if job.kind == "view":
        # the stitch weighting only matters to compare (its key has the resolved value)
        view = design.views[job.view].model_dump(exclude={"stitch_weighting"})
        return {**view, "seed": design.seeds_for(job.repeat)["grouping"]}
    if job.kind in ("fit", "recon", "halves"):
        arm = design.arm_objects()[job.arm]
        ctx = arm_context(job, design, _job_data(job))
        out = {
            "arm": arm.key(),
            "context": arm.context_key(ctx, "fit" if job.kind == "fit" else "reconstruct"),
        }
        if job.kind == "recon" and job.split == "test":
            out["snapshots"] = list(_snapshot_stops(design, arm))
        return out
    if job.kind == "compare":
        arms = planned_arms(design)
        return {
            "metrics": design.metrics.model_dump(exclude={"stitch_weighting"}),
            "crop_size_M": _crop(job, design),
            "stitch_weighting": _stitch_weighting(job, design),
            "arms": {n: {"role": a.role, "inline": a.inline} for n, a in arms.items()},
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
    with atomic_open(stamp, "w") as fh:
        fh.write(key)
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


def _fair(ds, arm, fit: bool = False):
    """``ds`` as the arm may see it: the truth removed unless it declares it needs it (the
    object frame kept in ``metadata["frame_shape"]``, so its reconstruction lands in it)."""
    import dataclasses as dc

    keep_object = arm.needs.truth_object
    keep_Y = arm.needs.truth_patches if fit else arm.needs.truth_object
    if (ds.objectGuess is None or keep_object) and (ds.Y is None or keep_Y):
        return ds
    meta = {**ds.metadata, "frame_shape": list(ds.frame_shape)}
    return dc.replace(
        ds,
        objectGuess=ds.objectGuess if keep_object else None,
        Y=ds.Y if keep_Y else None,
        metadata=meta,
    )


def _run_fit(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    arm = design.arm_objects()[job.arm]
    rel = _job_data(job)
    ds = _fair(_load(run_dir / rel), arm, fit=True)
    out = stage / job.outputs[0]
    out.mkdir(parents=True, exist_ok=True)
    resume = any(out.iterdir())
    if resume:
        log.info("%s: resuming from the staged artifact %s", job.id, out)
    arm.fit(ds, out, arm_context(job, design, rel), resume=resume)


def _artifact(job: Job, design: StudyDesign, run_dir: Path, arm) -> Path | None:
    owner = arm.fit_from or (arm.name if arm.fits else None)
    if owner is None:
        return None
    return run_dir / design.arm_objects()[owner].artifact_dir(job.dd, job.view)


def _read_recon(path: Path, shape=None):
    from ptychobench.data.recon import read_reconstruction

    return read_reconstruction(path, shape=shape)


def _checked(rec, arm, ds):
    """The contract every arm's output must meet before it is published (one line if not)."""
    import numpy as np

    from ptychobench.data.recon import ReconstructionError

    if rec is None or not hasattr(rec, "reconstructed_object"):
        raise JobFailed(f"{arm.name}: reconstruct returned {type(rec).__name__}, not a "
                        "Reconstruction")
    try:
        rec.validate(arm.name, shape=ds.frame_shape)
    except ReconstructionError as exc:
        raise JobFailed(str(exc)) from None
    obj = rec.reconstructed_object
    if not np.isfinite(obj).all():
        raise JobFailed(f"{arm.name}: reconstruction has non-finite values")
    if not np.any(obj):
        raise JobFailed(f"{arm.name}: reconstruction is all zeros")
    rec.metadata["arm"] = arm.name
    return rec


def _run_recon(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    import numpy as np

    from ptychobench.arms import Snapshots
    from ptychobench.data.recon import write_reconstruction

    arm = design.arm_objects()[job.arm]
    rel = _job_data(job)
    ds = _load(run_dir / rel)
    start = None
    if arm.start:
        other = design.arm_objects()[arm.start]
        start = _read_recon(run_dir / recon_file(other, job.dd, job.view, job.split))
    stops = _snapshot_stops(design, arm) if len(job.outputs) > 1 else ()
    seen: list[tuple[int, float, Any]] = []
    snaps = Snapshots(stops, lambda e, sec, obj: seen.append((e, sec, obj))) if stops else None
    rec = arm.reconstruct(
        _fair(ds, arm),
        arm_context(job, design, rel),
        artifact=_artifact(job, design, run_dir, arm),
        start=start,
        snapshots=snaps,
    )
    rec = _checked(rec, arm, ds)
    out = stage / job.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_reconstruction(rec, out)
    if stops:
        path = stage / job.outputs[1]
        with atomic_open(path, "wb") as fh:
            np.savez(
                fh,
                epochs=np.array([e for e, _, _ in seen], np.int64),
                seconds=np.array([s for _, s, _ in seen], np.float64),
                objects=np.stack([o for _, _, o in seen]).astype(np.complex64),
            )


def _run_halves(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    """One arm reconstructs the two interleaved halves of the test view, independently (the
    half-scan FRC of compare). An arm that cannot run on a half is recorded, not fatal."""
    import numpy as np

    from ptychobench.data.io import atomic_open
    from ptychobench.data.recon import Reconstruction
    from ptychobench.evaluate.reference_free import interleaved_halves

    arm = design.arm_objects()[job.arm]
    rel = _job_data(job)
    ds = _load(run_dir / rel)
    starts: dict[str, Any] = {}
    if arm.start:
        other = design.arm_objects()[arm.start]
        with np.load(run_dir / halves_file(other, job.dd, job.view), allow_pickle=False) as f:
            for half in "ab":
                if f"{half}.object" in f.files:
                    seconds = json.loads(str(f["meta"]))["seconds"].get(half)
                    starts[half] = Reconstruction(
                        f[f"{half}.object"],
                        f[f"{half}.coverage"],
                        {"arm": other.name, "seconds": seconds},
                    )
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"arm": arm.name, "n": [], "seconds": {}, "errors": {}}
    for half, idx in zip("ab", interleaved_halves(ds.n), strict=True):
        sub = ds.select(idx, transformation={"op": "half_scan", "half": half})
        meta["n"].append(int(sub.n))
        try:
            if arm.start and half not in starts:
                raise ValueError(f"{arm.start} has no reconstruction of half {half}")
            rec = arm.reconstruct(
                _fair(sub, arm),
                arm_context(job, design, rel),
                artifact=_artifact(job, design, run_dir, arm),
                start=starts.get(half),
            )
            rec = _checked(rec, arm, sub)
        except Exception as exc:  # one half's failure leaves the other arms' halves
            meta["errors"][half] = f"{type(exc).__name__}: {exc}"
            log.warning("%s on half %s: %s", arm.name, half, exc)
            continue
        arrays[f"{half}.object"] = rec.reconstructed_object.astype(np.complex64)
        arrays[f"{half}.coverage"] = rec.coverage.astype(np.float32)
        meta["seconds"][half] = rec.metadata.get("seconds")
    out = stage / job.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def _crop(job: Job, design: StudyDesign) -> int | None:
    spec = design.views[job.view]
    return spec.crop_size_M if spec.crop_size_M is not None else design.metrics.crop_size_M


def _stitch_weighting(job: Job, design: StudyDesign) -> str:
    spec = design.views[job.view]
    if spec.stitch_weighting is not None:
        return spec.stitch_weighting
    return design.metrics.stitch_weighting


def _run_compare(job: Job, design: StudyDesign, run_dir: Path, stage: Path, progress) -> None:
    from ptychobench.evaluate.compare import compare

    rel = _data(job.dose, job.view, f"{job.split}.npz", repeat=job.repeat)
    ds = _load(run_dir / rel)
    shape = ds.frame_shape
    arms: dict[str, Any] = {}
    for name, arm in planned_arms(design).items():
        if split_skips(arm, job.split):
            continue
        if arm.inline:
            if arm.needs.truth_object and ds.objectGuess is None:
                continue  # a reference needs the truth: absent without it
            try:
                arms[name] = arm.reconstruct(ds, arm_context(job, design, rel))
            except Exception as exc:
                arms[name] = exc
            continue
        try:
            arms[name] = _read_recon(
                run_dir / recon_file(arm, job.dd, job.view, job.split), shape=shape
            )
        except Exception as exc:  # its job failed: its cells are marked failed, not the study
            arms[name] = _arm_failure(job, arm, exc, run_dir)
    snapshots, curve_rows = _load_snapshots(job, design, run_dir, arms)
    out = stage / job.outputs[0]
    if job.split == "test":
        free = _reference_free(job, design, run_dir, ds, arms)
    else:  # the train split has no withheld patterns: without truth nothing is scored there
        free = None if ds.objectGuess is not None else {}
    settings = _compare_settings(job, design)
    res = compare(
        ds,
        arms,
        out,
        settings,
        data_source=rel,
        snapshots=snapshots,
        reference_free=free,
    )
    _write_curves(out, curve_rows, res.snapshots)
    # an arm whose own job failed is that job's failure (recorded there), not compare's
    errors = {a: m for a, m in res.errors.items() if not isinstance(arms.get(a), ArmFailed)}
    if errors:
        raise JobFailed(
            "; ".join(f"{arm}: {msg}" for arm, msg in sorted(errors.items())) + f" (data {rel})"
        )


def split_skips(arm, split: str) -> bool:
    """Whether ``arm`` has no reconstruction of ``split`` by design (test-only arms)."""
    return split == "train" and arm.test_only


class ArmFailed(RuntimeError):
    """An arm's own job failed; compare records this one line as that arm's error."""


def _arm_failure(job: Job, arm, exc: Exception, run_dir: Path) -> Exception:
    """The reason an arm has no reconstruction here, as one line (its job's error if recorded)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        jid = f"{job_prefix(arm)}.{job.dd}.{job.view}.{job.split}"
        rec = manifest.get("jobs", {}).get(jid, {})
        if rec.get("status") in ("failed", "blocked") and rec.get("error"):
            return ArmFailed(f"job {jid} {rec['status']}: {rec['error']}".splitlines()[0])
    except (OSError, ValueError):
        pass
    return exc


def _reference_free(job: Job, design: StudyDesign, run_dir: Path, ds, arms: dict[str, Any]):
    """Held-out NLL and half-scan FRC of every method arm of a test comparison (a score that
    cannot be computed is left out and logged; the ground-truth scores do not depend on it).
    References are not scored without truth: they are made from it."""
    import numpy as np

    from ptychobench.evaluate.reference_free import half_scan_frc, heldout_nll, scanned_box

    held_path = run_dir / _data(job.dose, HELDOUT, repeat=job.repeat)
    try:
        held = _load(held_path) if held_path.exists() else None  # none: heldout_fraction 0
    except (OSError, ValueError) as exc:  # the ground-truth scores do not need it
        log.warning("held-out patterns unusable, no held-out NLL: %s", exc)
        held = None
    counts = held.diffraction.astype(np.float64) ** 2 if held is not None else None
    objects = design.arm_objects()
    out: dict[str, dict] = {}
    for name, rec in arms.items():
        arm = objects.get(name)
        if arm is None or arm.role != "method":
            continue
        scores: dict[str, Any] = {}
        if not isinstance(rec, BaseException) and held is not None and held.n:
            try:
                h = heldout_nll(rec.reconstructed_object, ds.probeGuess, held.coords, counts)
                scores["heldout_nll_rel"] = h.relative
            except ValueError as exc:
                log.warning("%s: held-out NLL: %s", name, exc)
        a, b = _halves_of(run_dir / halves_file(arm, job.dd, job.view))
        if a is not None and b is not None:
            f = half_scan_frc(a, b, scanned_box(ds.coords, a.shape))
            scores["halfscan_frc_halfbit"] = f["halfbit"]
            scores["halfscan_frc1over7"] = f["1over7"]
        out[name] = scores
    return out


def _halves_of(path: Path):
    """(object a, object b) of an arm's half-scan file; None for a half it could not do."""
    import numpy as np

    if not path.exists():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as f:
            for half, msg in json.loads(str(f["meta"]))["errors"].items():
                log.info("half-scan %s: %s", half, msg)
            return tuple(f[f"{h}.object"] if f"{h}.object" in f.files else None for h in "ab")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("half-scans %s unusable: %s", path, exc)
        return None, None


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
        floor=False,  # the floor is an arm of the study like any other
    )


CURVE_CSV = "convergence.csv"


def _load_snapshots(job: Job, design: StudyDesign, run_dir: Path, arms) -> tuple[dict, list]:
    """The convergence snapshots of every arm that recorded them on this (test) view.

    Returns ``({"<arm>@<epoch>": (H, W) object}, [(arm, epoch, seconds, name), ...])``.
    """
    import numpy as np

    objects: dict[str, Any] = {}
    rows: list[tuple[str, int, float, str]] = []
    if job.split != "test":
        return objects, rows
    for name, arm in planned_arms(design).items():
        final = arms.get(name)
        if arm.inline or final is None or isinstance(final, BaseException):
            continue
        path = run_dir / arm.recon_dir(job.dd, job.view, job.split) / "snapshots.npz"
        if not _snapshot_stops(design, arm) or not path.exists():
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
    with atomic_open(out / CURVE_CSV, "w") as fh:
        fh.write("\n".join(lines) + "\n")


BODIES: dict[str, Callable[..., None]] = {
    "simulate": _run_simulate,
    "load": _run_load,
    "split": _run_split,
    "view": _run_view,
    "fit": _run_fit,
    "recon": _run_recon,
    "halves": _run_halves,
    "compare": _run_compare,
}


def execute(
    job: Job, design: StudyDesign, run_dir: Path, key: str, progress=None, *, publish_outputs=True
) -> None:
    """Run one computing job: stage, compute, publish (also when it raises :class:`JobFailed`).

    ``publish_outputs=False`` (a Dask worker) leaves the outputs in the job's staging directory,
    for the driver -- the run directory's one writer -- to publish.
    """
    stage = staging_dir(run_dir, job, key)
    try:
        BODIES[job.kind](job, design, run_dir, stage, progress)
    except JobFailed:
        if publish_outputs and staged_complete(stage, job):
            publish(run_dir, stage, job)
        raise
    if publish_outputs:
        publish(run_dir, stage, job)


def staged_complete(stage: Path, job: Job) -> bool:
    """Whether every output of ``job`` is present in its staging directory."""
    return all((stage / rel).exists() for rel in job.outputs)
