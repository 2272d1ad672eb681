"""Evaluation: alignment, metrics, FRC, comparison (SPEC §7)."""

from ptychobench.evaluate.align import AlignmentResult, align_arms
from ptychobench.evaluate.compare import CompareResult, CompareSettings, compare
from ptychobench.evaluate.frc import FRCResult, frc
from ptychobench.evaluate.metrics import score

__all__ = [
    "AlignmentResult",
    "CompareResult",
    "CompareSettings",
    "FRCResult",
    "align_arms",
    "compare",
    "frc",
    "score",
]
