"""Where arms come from: the built-ins, Python entry points, and ``command`` tables.

A design names arms; each name resolves to an arm *type* and its settings:

- a built-in name (:data:`BUILTIN`): ``PtychoPINN``, ``Baseline``, ``PtyChi``,
  ``PtychoPINN+LSQML`` (the PtyChi type started from PtychoPINN), ``PtychoPINN+TTR``, ``Flat``,
  ``Ceiling``;
- an arm type registered by an installed package under the entry-point group
  ``ptychobench.arms`` (the entry point's name is the type; its object an :class:`Arm` subclass);
- any name whose ``[arms.<Name>]`` table says ``type = "<a type>"`` (``"command"``, a built-in
  type such as ``"PtyChi"`` to instance it again with other settings, or a plugin's type).

The table's other keys are the type's settings (pydantic; an unknown key is refused naming it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any

from pydantic import ValidationError

from ptychobench.arms.base import Arm, ArmError
from ptychobench.arms.builtin import (
    BaselineArm,
    CeilingArm,
    FlatArm,
    PinnArm,
    PtyChiArm,
    TTRArm,
)
from ptychobench.arms.command import CommandArm
from ptychobench.arms.peers import CDToolsArm, PMACEArm
from ptychobench.peers import missing_peer

__all__ = [
    "BUILTIN",
    "DEFAULT_ARMS",
    "DEFAULT_DELTAS",
    "DISPLAY_ORDER",
    "ENTRY_POINT_GROUP",
    "REFERENCE_ARMS",
    "arm_types",
    "describe",
    "role_of",
    "legacy_tables",
    "resolve",
    "resolve_all",
]

ENTRY_POINT_GROUP = "ptychobench.arms"


@dataclasses.dataclass(frozen=True)
class _Builtin:
    cls: type[Arm]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    slug: str | None = None
    root: str | None = None  # run-relative directory of its reconstructions (the spec's layout)
    color: str | None = None  # where it differs from its type's


BUILTIN: dict[str, _Builtin] = {
    "PtychoPINN": _Builtin(PinnArm, slug="pinn"),
    "Baseline": _Builtin(BaselineArm, slug="baseline"),
    "PtyChi": _Builtin(PtyChiArm, root="iterative"),
    "PtychoPINN+LSQML": _Builtin(
        PtyChiArm, {"start": "PtychoPINN", "epochs": 50}, slug="hybrid_lsqml", color="C3"
    ),
    "PtychoPINN+TTR": _Builtin(TTRArm, slug="ttr"),
    "Flat": _Builtin(FlatArm),
    "Ceiling": _Builtin(CeilingArm),
    # pty-chi's other engines, each with the schedule it was measured at (README, "solvers")
    "PtyChi-ePIE": _Builtin(PtyChiArm, {"engine": "epie"}, color="C6"),
    "PtyChi-DM": _Builtin(PtyChiArm, {"engine": "dm"}, color="C7"),
    # independent solvers (the optional [peers] extra)
    "CDTools": _Builtin(CDToolsArm),
    "PMACE": _Builtin(PMACEArm),
}
#: Arms of a design that lists none.
DEFAULT_ARMS: tuple[str, ...] = ("PtychoPINN", "Baseline", "PtyChi")
#: Reference arms scored in every synthetic cell unless the design lists its own references.
REFERENCE_ARMS: tuple[str, ...] = ("Flat",)
#: Arms the report shows first, in this order (the others follow by name).
DISPLAY_ORDER: tuple[str, ...] = ("PtychoPINN", "Baseline", "PtyChi", "Flat")
#: ``deltas.json`` / ``highlights.txt``: this arm minus each of those (where the design has them).
DEFAULT_DELTAS: tuple[str, tuple[str, ...]] = ("PtychoPINN", ("Baseline", "PtyChi"))
_BUILTIN_TYPES: dict[str, type[Arm]] = {
    c.type_name: c
    for c in (PinnArm, BaselineArm, PtyChiArm, TTRArm, FlatArm, CeilingArm, CDToolsArm, PMACEArm)
}
_BUILTIN_TYPES["command"] = CommandArm


def _entry_points() -> dict[str, importlib_metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)}


def arm_types() -> dict[str, str]:
    """``{type name: where it comes from}`` of every type a design can use (for ``--help``)."""
    out = {name: "built-in" for name in _BUILTIN_TYPES}
    for name, ep in _entry_points().items():
        out.setdefault(name, f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})")
    return out


def _load_type(type_name: str, arm: str) -> type[Arm]:
    if type_name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[type_name]
    eps = _entry_points()
    if type_name not in eps:
        known = ", ".join([*BUILTIN, *sorted(t for t in eps if t not in BUILTIN)])
        raise ArmError(
            f"arms.{arm}: unknown arm {type_name!r}; expected one of {known}, a table with "
            "type = \"command\", or a package registering it under the entry-point group "
            f"{ENTRY_POINT_GROUP!r}"
        )
    ep = eps[type_name]
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import error of a plugin is the user's to see
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ArmError(
            f"arms.{arm}: entry point {type_name!r} ({ep.value}) failed to import: "
            f"{type(exc).__name__}: {first}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Arm)):
        raise ArmError(
            f"arms.{arm}: entry point {type_name!r} ({ep.value}): expected a subclass of "
            f"ptychobench.arms.Arm, found {cls!r}"
        )
    return cls


def _first_error(exc: ValidationError, arm: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if err["type"] == "missing":
        msg = "missing setting"
    where = f"arms.{arm}.{key}" if key else f"arms.{arm}"
    found = f"; found {err['input']!r}" if err["type"] not in ("missing",) and key else ""
    return f"{where}: {msg}{found}"


def resolve(name: str, table: Mapping[str, Any] | None = None) -> Arm:
    """The configured arm ``name`` of a design, from its ``[arms.<name>]`` table (may be empty).

    Raises :class:`ArmError` (one line naming the arm) for an unknown name or type, a plugin that
    does not import, or settings its type refuses.
    """
    table = dict(table or {})
    type_name = table.pop("type", None)
    builtin = BUILTIN.get(name) if type_name is None or type_name == name else None
    if type_name is None and builtin is None:
        type_name = name
    if builtin is not None:
        cls = builtin.cls
        settings = {**builtin.defaults, **table}
    else:
        cls = _load_type(str(type_name), name)
        settings = table
        if cls is CommandArm:
            settings = {"type": "command", **table}
    for module in cls.requires:
        why = missing_peer(module, name)
        if why is not None:
            raise ArmError(f"arms.{name}: {why}")
    try:
        arm = cls(name, cls.Settings.model_validate(settings))
    except ValidationError as exc:
        raise ArmError(_first_error(exc, name)) from None
    if builtin is not None:
        arm._slug, arm._root = builtin.slug, builtin.root
        arm._prefix = builtin.root or builtin.slug or arm.slug
    return arm


def resolve_all(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Arm]:
    """Every arm of a design (``{name: table}``), checked against each other: a ``start`` or a
    ``network`` names an arm of the design, and no arm starts from itself."""
    arms = {name: resolve(name, t) for name, t in tables.items()}
    slugs: dict[str, str] = {}
    for name, arm in arms.items():
        if arm.slug in slugs:
            raise ArmError(
                f"arms.{name}: its directory name {arm.slug!r} is also {slugs[arm.slug]}'s; "
                "rename one"
            )
        slugs[arm.slug] = name
    for name, arm in arms.items():
        for what, other in (("start", arm.start), ("network", arm.fit_from)):
            if other is None:
                continue
            if other == name:
                raise ArmError(f"arms.{name}.{what}: an arm cannot start from itself")
            if other not in arms:
                raise ArmError(
                    f"arms.{name}.{what}: {name} starts from {other}: expected {other} in arms too"
                )
            if arms[other].role != "method":
                raise ArmError(f"arms.{name}.{what}: {other} is a reference arm, not a start")
            if what == "network" and not arms[other].needs.train:
                raise ArmError(f"arms.{name}.network: {other} has no fit step to reuse")
            if what == "start" and arms[other].start is not None:
                raise ArmError(
                    f"arms.{name}.start: {other} itself starts from {arms[other].start}; "
                    "chains of starts are not supported"
                )
    return arms


def role_of(name: str) -> str:
    """The registered role of a built-in arm name (``method`` for any other name)."""
    b = BUILTIN.get(name)
    return b.cls.role if b is not None else "method"


def describe(arms: Mapping[str, Arm]) -> dict[str, dict[str, Any]]:
    """``{name: {"type", "role", "summary", "color", "start", "solver"}}``: what a run records
    about its arms (the report and verification read it, without importing any plugin)."""
    return {
        n: {
            "type": a.type_name,
            "role": a.role,
            "summary": a.summary,
            "color": (BUILTIN[n].color if n in BUILTIN else None) or a.color,
            "start": a.start,
            "solver": a.solver(),
        }
        for n, a in arms.items()
    }


def legacy_tables(
    sections: Mapping[str, Mapping[str, Any] | None],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """The built-ins' settings from a design's older sections (``[pinn]``, ``[baseline]``,
    ``[iterative]``, ``[hybrid]``): ``{arm name: table}``, only for the sections given, and
    ``{(arm, key): "section.key"}`` where each came from (errors name the key the user wrote).

    ``[hybrid]`` held both hybrids' settings: ``lsqml_epochs`` (with ``[iterative]``'s engine,
    batch and noise model) goes to PtychoPINN+LSQML, ``ttr_*`` to PtychoPINN+TTR.
    """
    hyb_keys = {"lsqml_epochs", "ttr_epochs", "ttr_lr", "ttr_batch_size", "ttr_max_seconds"}
    bad = sorted(set(sections.get("hybrid") or {}) - hyb_keys)
    if bad:
        raise ArmError(f"hybrid.{bad[0]}: unknown key")
    out: dict[str, dict[str, Any]] = {}
    if sections.get("pinn") is not None:
        out["PtychoPINN"] = dict(sections["pinn"])
    if sections.get("baseline") is not None:
        out["Baseline"] = dict(sections["baseline"])
    it = dict(sections.get("iterative") or {})
    if sections.get("iterative") is not None:
        out["PtyChi"] = dict(it)
    hyb = dict(sections.get("hybrid") or {})
    lsqml = {k: v for k, v in it.items() if k != "epochs"}
    if "lsqml_epochs" in hyb:
        lsqml["epochs"] = hyb["lsqml_epochs"]
    if lsqml:
        out["PtychoPINN+LSQML"] = lsqml
    ttr = {k.removeprefix("ttr_"): v for k, v in hyb.items() if k.startswith("ttr_")}
    if ttr:
        out["PtychoPINN+TTR"] = ttr
    origin: dict[tuple[str, str], str] = {}
    for arm, section in (("PtychoPINN", "pinn"), ("Baseline", "baseline"), ("PtyChi", "iterative")):
        origin.update({(arm, k): f"{section}.{k}" for k in out.get(arm, {})})
    for k in out.get("PtychoPINN+LSQML", {}):
        where = "hybrid.lsqml_epochs" if k == "epochs" else f"iterative.{k}"
        origin[("PtychoPINN+LSQML", k)] = where
    for k in out.get("PtychoPINN+TTR", {}):
        origin[("PtychoPINN+TTR", k)] = f"hybrid.ttr_{k}"
    return out, origin
