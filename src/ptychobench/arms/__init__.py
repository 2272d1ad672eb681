"""Reconstruction methods as arms of the study: one interface, a registry, the built-ins.

See :mod:`ptychobench.arms.base` for the interface and :mod:`ptychobench.arms.registry` for how a
design's arm names resolve (built-ins, entry points ``ptychobench.arms``, ``command`` tables).
"""

from ptychobench.arms.base import Arm, ArmContext, ArmError, ArmSettings, Needs, Snapshots
from ptychobench.arms.registry import (
    BUILTIN,
    DEFAULT_ARMS,
    DEFAULT_DELTAS,
    ENTRY_POINT_GROUP,
    REFERENCE_ARMS,
    arm_types,
    legacy_tables,
    resolve,
    resolve_all,
)

__all__ = [
    "Arm",
    "ArmContext",
    "ArmError",
    "ArmSettings",
    "BUILTIN",
    "DEFAULT_ARMS",
    "DEFAULT_DELTAS",
    "ENTRY_POINT_GROUP",
    "Needs",
    "REFERENCE_ARMS",
    "Snapshots",
    "arm_types",
    "legacy_tables",
    "resolve",
    "resolve_all",
]
