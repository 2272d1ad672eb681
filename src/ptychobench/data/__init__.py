"""Dataset contract, file formats, splits, views and overlap metrics (SPEC §3-4)."""

from ptychobench.data.dataset import DatasetError, PtychoDataset, validate
from ptychobench.data.grouping import (
    group_centres,
    group_offsets,
    make_groups,
    make_view,
    subsample,
)
from ptychobench.data.io import load, save
from ptychobench.data.overlap import disc_overlap, overlap_report
from ptychobench.data.split import split

__all__ = [
    "DatasetError",
    "PtychoDataset",
    "disc_overlap",
    "group_centres",
    "group_offsets",
    "load",
    "make_groups",
    "make_view",
    "overlap_report",
    "save",
    "split",
    "subsample",
    "validate",
]
