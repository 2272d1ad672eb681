"""The reconstruction file: the output of every arm, iterative or neural.

NPZ keys (no pickle; metadata is a JSON string):

| key | shape | dtype | meaning |
|---|---|---|---|
| ``reconstructed_object`` | (H, W) | complex64 | object pixel frame (shape of ``objectGuess``) |
| ``coverage`` | (H, W) | float32 | how much each pixel was illuminated / covered (≥ 0) |
| ``reconstructed_probe`` | (N, N) | complex64 | optional, arms that have a probe |
| ``metadata`` | 0-d str | JSON | arm, algorithm, settings, seconds, versions |
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.data.io import atomic_open

__all__ = ["Reconstruction", "ReconstructionError", "read_reconstruction", "write_reconstruction"]


class ReconstructionError(ValueError):
    """A reconstruction file breaks its contract; the message names file, key, expected, found."""


@dataclasses.dataclass
class Reconstruction:
    """One arm's reconstruction in the object's pixel frame (see module docstring)."""

    reconstructed_object: np.ndarray
    coverage: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    reconstructed_probe: np.ndarray | None = None

    def validate(self, source: str = "reconstruction", shape: tuple[int, int] | None = None):
        """Raise :class:`ReconstructionError` unless the arrays satisfy the contract."""
        obj = self.reconstructed_object
        if not np.iscomplexobj(obj):
            raise ReconstructionError(
                f"{source}: key 'reconstructed_object': expected complex, found {obj.dtype}"
            )
        if obj.ndim != 2:
            raise ReconstructionError(
                f"{source}: key 'reconstructed_object': expected 2-D (H, W), found shape "
                f"{obj.shape}"
            )
        if shape is not None and tuple(obj.shape) != tuple(shape):
            raise ReconstructionError(
                f"{source}: key 'reconstructed_object': expected shape {tuple(shape)} (the "
                f"object's pixel frame), found {obj.shape}"
            )
        if self.coverage.shape != obj.shape:
            raise ReconstructionError(
                f"{source}: key 'coverage': expected shape {obj.shape}, found {self.coverage.shape}"
            )
        if self.reconstructed_probe is not None and not np.iscomplexobj(self.reconstructed_probe):
            raise ReconstructionError(
                f"{source}: key 'reconstructed_probe': expected complex, found "
                f"{self.reconstructed_probe.dtype}"
            )


def write_reconstruction(rec: Reconstruction, path: str | os.PathLike[str]) -> None:
    """Validate and write ``rec`` atomically as NPZ."""
    rec.validate(str(path))
    arrays = {
        "reconstructed_object": np.ascontiguousarray(rec.reconstructed_object, np.complex64),
        "coverage": np.ascontiguousarray(rec.coverage, np.float32),
        "metadata": np.array(json.dumps(rec.metadata, sort_keys=True, default=str)),
    }
    if rec.reconstructed_probe is not None:
        arrays["reconstructed_probe"] = np.ascontiguousarray(rec.reconstructed_probe, np.complex64)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def read_reconstruction(
    path: str | os.PathLike[str], shape: tuple[int, int] | None = None
) -> Reconstruction:
    """Read and validate a reconstruction NPZ (``shape``: the expected object frame)."""
    p = Path(path)
    if not p.exists():
        raise ReconstructionError(f"file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            files = set(f.files)
            if "reconstructed_object" not in files:
                raise ReconstructionError(
                    f"{p}: missing key 'reconstructed_object': expected a complex (H, W) image, "
                    f"found keys {sorted(files)}"
                )
            obj = f["reconstructed_object"]
            coverage = f["coverage"] if "coverage" in files else np.ones(obj.shape, np.float32)
            probe = f["reconstructed_probe"] if "reconstructed_probe" in files else None
            meta = json.loads(str(f["metadata"])) if "metadata" in files else {}
    except ReconstructionError:
        raise
    except ValueError as exc:
        raise ReconstructionError(f"{p}: cannot read without pickle ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ReconstructionError(f"{p}: not a readable .npz file ({exc})") from None
    rec = Reconstruction(obj, coverage, meta, probe)
    rec.validate(str(p), shape)
    return rec
