"""The plan check: does a design fit its object, probe and scan? Decided before any job runs.

A study's views are written for the shipped objects (``n_groups = 128`` groups per split of the
``quick`` dense view, say). A user's own object, probe or scan can leave fewer positions than
that; the check counts, for every repeat, the scan positions, both halves of the spatial split and
each view's kept positions and groups (the test half without its withheld positions) — from the
scan alone, without simulating a pattern — and

* refuses what cannot run in one line naming the design key and the numbers
  (:class:`~ptychobench.study.design.DesignError`): a probe of the wrong size, an object too small
  for the scan, an empty split half, a gridsize-2 view with fewer than C + 1 = 5 positions;
* adapts what can: a view's ``n_groups`` above its kept positions is capped to them (one group
  per position, no oversampling) with one warning line naming the numbers
  (:meth:`~ptychobench.study.design.ViewSpec.groups_for`, which the view jobs use too, so plan
  and run agree).

``study run`` runs the check before it writes anything; ``study run --dry-run`` prints it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ptychobench.data.grouping import n_kept
from ptychobench.data.split import split_value
from ptychobench.evaluate.reference_free import heldout_count
from ptychobench.study.design import DesignError, StudyDesign
from ptychobench.study.jobs import SPLITS

__all__ = ["Feasibility", "ViewCount", "check_design", "summary"]
MIN_POSITIONS_GS2 = 5  # C + 1: a 2×2 group needs a position and 3 distinct neighbours, plus one


@dataclasses.dataclass(frozen=True)
class ViewCount:
    """Positions and groups of one view on one split half of one repeat."""

    view: str
    split: str
    repeat: int
    positions: int  # kept after s_img subsampling
    groups: int  # what the view job will make
    requested: int | None  # the design's n_groups (None: one per position)

    @property
    def capped(self) -> bool:
        return self.requested is not None and self.groups < self.requested


@dataclasses.dataclass
class Feasibility:
    """What :func:`check_design` counted (it raised already if the design cannot run)."""

    object_shape: tuple[int, int]
    probe_diameter_px: float
    positions: list[int]  # per repeat
    halves: list[dict[str, int]]  # per repeat: {"train": n, "test": n}
    views: list[ViewCount]
    warnings: list[str]

    def lines(self) -> list[str]:
        """A few short lines for the console (repeat 0, and the range over repeats)."""
        n = self.positions
        span = f"{min(n)}–{max(n)}" if min(n) != max(n) else f"{n[0]}"
        h = self.halves[0]
        out = [
            f"scan: {span} positions per repeat on a {self.object_shape[0]}×"
            f"{self.object_shape[1]} object (probe diameter {self.probe_diameter_px:.1f} px); "
            f"split: train {h['train']}, test {h['test']} (repeat 0)"
        ]
        for view in dict.fromkeys(v.view for v in self.views):
            parts = [
                f"{v.split} {v.positions} positions → {v.groups} groups"
                + (f" (n_groups {v.requested} capped)" if v.capped else "")
                for v in self.views
                if v.view == view and v.repeat == 0
            ]
            out.append(f"view {view}: " + "; ".join(parts))
        return out + [f"warning: {w}" for w in self.warnings]


def _check_arm_needs(design: StudyDesign) -> None:
    """An arm that needs a GPU on a design or machine without one is refused before any job."""
    import torch

    for name, arm in design.arm_objects().items():
        if not arm.needs.gpu:
            continue
        if design.device == "cpu":
            raise DesignError(f"arms.{name}: needs a GPU; the design says device = \"cpu\"")
        if not torch.cuda.is_available():
            raise DesignError(f"arms.{name}: needs a GPU; this machine has no CUDA device")


def check_design(design: StudyDesign) -> Feasibility:
    """Count positions, split halves, kept positions and groups of every view and repeat.

    Raises
    ------
    DesignError
        One line naming the design key and the numbers, when the design cannot run.
    """
    _check_arm_needs(design)
    if design.experimental:
        measured, shape, diameter = _measured(design)
    else:
        probe, shape, diameter = _probe_and_object(design)
    positions, halves, views, warnings = [], [], [], []
    for repeat in range(design.repeats):
        coords = measured if design.experimental else _scan(design, repeat, probe, shape)
        positions.append(int(coords.shape[0]))
        half = _halves(design, coords, repeat)
        halves.append(half)
        for name, spec in design.views.items():
            for split in SPLITS:
                kept = n_kept(spec.s_img, half[split])
                where = f"the {split} split" + (f" of repeat {repeat}" if repeat else "")
                if spec.gridsize == 2 and kept < MIN_POSITIONS_GS2:
                    raise DesignError(
                        f"views.{name}: gridsize 2 needs at least {MIN_POSITIONS_GS2} positions "
                        f"per split, {where} keeps {kept} (s_img {spec.s_img:g} of "
                        f"{half[split]}); use gridsize 1, a larger s_img or a denser scan"
                    )
                groups, _ = spec.groups_for(kept)
                views.append(ViewCount(name, split, repeat, kept, groups, spec.n_groups))
    for name, spec in design.views.items():
        capped = [v for v in views if v.view == name and v.capped]
        if capped:
            kept = sorted({v.positions for v in capped})
            span = f"{kept[0]}" if len(kept) == 1 else f"{kept[0]}–{kept[-1]}"
            splits = "/".join(dict.fromkeys(v.split for v in capped))
            warnings.append(
                f"views.{name}.n_groups = {spec.n_groups} > the {span} positions its {splits} "
                f"split keeps: capped to one group per position"
            )
    return Feasibility(shape, diameter, positions, halves, views, warnings)


def _probe_and_object(design: StudyDesign) -> tuple[np.ndarray, tuple[int, int], float]:
    from ptychobench.physics.probes import probe_info
    from ptychobench.simulate import resolve_object, resolve_probe

    sim = design.simulation_config(design.doses[0])
    try:
        probe = resolve_probe(sim.probe, sim.N)
    except (ValueError, OSError) as exc:
        raise DesignError(f"simulation.probe: {_first_line(exc)}") from None
    try:
        obj = resolve_object(sim)
    except (ValueError, OSError) as exc:
        raise DesignError(f"simulation.object: {_first_line(exc)}") from None
    return probe, (int(obj.shape[0]), int(obj.shape[1])), probe_info(probe).effective_diameter_px


def _measured(design: StudyDesign) -> tuple[np.ndarray, tuple[int, int], float]:
    """Experimental mode: the file's positions, frame and probe; the arms it can feed."""
    from ptychobench.physics.probes import probe_info

    assert design.data is not None
    ds = design.data.load()  # validated: it loaded for the design
    for name, arm in design.arm_objects().items():
        if arm.needs.truth_patches and ds.Y is None:
            raise DesignError(
                f"arms.{name}: it trains on ground-truth patches (Y), which {design.data.file} "
                f"does not hold; remove {name} (and keep the arms that need no truth)"
            )
    if ds.n < 2:
        raise DesignError(f"data.file: {ds.n} position(s); a split needs at least 2")
    shape = ds.objectGuess.shape if ds.objectGuess is not None else ds.frame_shape
    diameter = probe_info(ds.probeGuess).effective_diameter_px
    return ds.coords, (int(shape[0]), int(shape[1])), diameter


def _scan(design: StudyDesign, repeat: int, probe: np.ndarray, shape) -> np.ndarray:
    from ptychobench.simulate import scan_positions

    sim = design.simulation_config(design.doses[0], repeat)
    try:
        coords = scan_positions(sim, probe, shape)
    except ValueError as exc:
        raise DesignError(
            f"simulation.object_size: the {sim.scan} scan does not fit the {shape[0]}×"
            f"{shape[1]} object with N = {sim.N}: {_first_line(exc)}; use a larger object, a "
            "smaller simulation.N or another step"
        ) from None
    if coords.shape[0] < 2:
        raise DesignError(
            f"simulation.object_size: the scan has {coords.shape[0]} position(s) on the "
            f"{shape[0]}×{shape[1]} object with N = {sim.N}; a split needs at least 2 (a larger "
            "object, a smaller step or more overlap)"
        )
    return coords


def _halves(design: StudyDesign, coords: np.ndarray, repeat: int) -> dict[str, int]:
    axis, fraction = design.split.axis, design.split.fraction
    c = coords[:, 0 if axis == "x" else 1]
    train = int((c < split_value(c, fraction)).sum())
    test = int(c.size - train)
    half = {"train": train, "test": test - heldout_count(test, design.split.heldout_fraction)}
    if min(half.values()) == 0:
        raise DesignError(
            f"split.fraction: {fraction:g} along {axis} leaves an empty half (train "
            f"{half['train']}, test {half['test']} of {c.size} positions, repeat {repeat})"
        )
    return half


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:240] if text else type(exc).__name__


def summary(f: Feasibility) -> dict[str, Any]:
    """JSON-able record of the check (kept in the manifest)."""
    return {
        "object_shape": list(f.object_shape),
        "probe_diameter_px": round(f.probe_diameter_px, 3),
        "positions": f.positions,
        "halves": f.halves,
        "views": [dataclasses.asdict(v) for v in f.views],
        "warnings": f.warnings,
    }
