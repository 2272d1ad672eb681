"""Dataset contract, file formats, splits, views and overlap metrics (SPEC §3-4)."""

from ptychobench.data.dataset import DatasetError, PtychoDataset, validate

__all__ = ["DatasetError", "PtychoDataset", "validate"]
