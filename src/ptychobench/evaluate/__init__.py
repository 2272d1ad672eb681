"""Evaluation: alignment, metrics, FRC, comparison (SPEC §7)."""
