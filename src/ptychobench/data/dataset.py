"""The in-memory dataset type and its validation (SPEC §3).

Attribute names are the NPZ keys, so there is one name per concept from memory to disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


class DatasetError(ValueError):
    """A dataset or file breaks the contract of SPEC §3; the message names key, expected, found."""


@dataclasses.dataclass
class PtychoDataset:
    """One ptychography scan with optional ground truth.

    Attributes
    ----------
    diffraction : (n, N, N) float32
        Far-field amplitude = sqrt(photon counts), DC at (N//2, N//2).
    probeGuess : (N, N) complex64 or None
        Probe on the object pixel grid. ``None`` for a file that carries none (a foreign CXI):
        inspecting, splitting, viewing and converting work without it; everything that
        reconstructs calls :func:`require_probe` (the CLI's ``--probe FILE`` supplies one).
    xcoords, ycoords : (n,) float64
        Scan positions in object pixels (x = column, y = row); the object location that lands on
        patch pixel (N//2, N//2).
    objectGuess : (H, W) complex64 or None
        Ground-truth object in the same pixel frame as the coordinates.
    Y : (n, N, N) complex64 or None
        Ground-truth (un-illuminated) object patches, one per scan position.
    metadata : dict
        JSON-serialisable provenance (schema_version, creator, dose, scale, seeds, realised
        photons, transformations, parent hashes, ...).
    groups : (n_groups, C) int64 or None
        Indices into the scan positions forming the groups of a view (SPEC §4); None for a plain
        dataset.
    """

    diffraction: np.ndarray
    probeGuess: np.ndarray | None
    xcoords: np.ndarray
    ycoords: np.ndarray
    objectGuess: np.ndarray | None = None
    Y: np.ndarray | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    groups: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of diffraction patterns."""
        return int(self.diffraction.shape[0])

    @property
    def N(self) -> int:
        """Side of a diffraction pattern in pixels."""
        return int(self.diffraction.shape[-1])

    @property
    def coords(self) -> np.ndarray:
        """(n, 2) float64 scan positions ordered (x, y)."""
        return np.stack([self.xcoords, self.ycoords], axis=-1)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the object's pixel frame, where every arm's reconstruction lives.

        ``objectGuess``'s shape when the data have one (its values are never needed), else just
        large enough to hold every patch.
        """
        if self.objectGuess is not None:
            return (int(self.objectGuess.shape[0]), int(self.objectGuess.shape[1]))
        given = self.metadata.get("frame_shape")  # the study's truth-free copies keep it
        if isinstance(given, list | tuple) and len(given) == 2:
            return (int(given[0]), int(given[1]))
        N = self.N
        return (
            int(math.ceil(float(self.ycoords.max()) + N / 2)) + 1,
            int(math.ceil(float(self.xcoords.max()) + N / 2)) + 1,
        )

    def copy(self) -> PtychoDataset:
        """Deep copy (arrays and metadata)."""
        return copy.deepcopy(self)

    def select(
        self, index: np.ndarray, transformation: dict[str, Any] | None = None
    ) -> PtychoDataset:
        """New dataset keeping the scan positions ``index`` (mask or integer array).

        Object and probe are copied; ``groups`` is dropped (it refers to the old indexing).
        ``transformation`` is appended to ``metadata["transformations"]``.
        """
        index = np.asarray(index)
        meta = copy.deepcopy(self.metadata)
        if transformation is not None:
            meta.setdefault("transformations", []).append(transformation)
        return PtychoDataset(
            diffraction=self.diffraction[index].copy(),
            probeGuess=None if self.probeGuess is None else self.probeGuess.copy(),
            xcoords=self.xcoords[index].copy(),
            ycoords=self.ycoords[index].copy(),
            objectGuess=None if self.objectGuess is None else self.objectGuess.copy(),
            Y=None if self.Y is None else self.Y[index].copy(),
            metadata=meta,
            groups=None,
        )


# --------------------------------------------------------------------------------------------
# metadata (a JSON string on disk, a dict in memory)
# --------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths for ``json.dumps``; anything else is an error."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def metadata_json(meta: dict[str, Any], *, source: str | None = None) -> str:
    """Serialise metadata to the canonical JSON string stored on disk.

    Keys are sorted and no whitespace beyond ``json.dumps`` defaults is added, so the same dict
    always gives the same string (deterministic files). numpy scalars/arrays and paths are
    converted; NaN/Inf are rejected (they are not JSON).

    Parameters
    ----------
    meta : dict
        JSON-serialisable provenance.
    source : str, optional
        File name used in error messages.

    Returns
    -------
    str

    Raises
    ------
    DatasetError
        If ``meta`` is not a dict or not serialisable.
    """
    if not isinstance(meta, dict):
        raise DatasetError(_msg(source, "metadata", "a dict", type(meta).__name__))
    try:
        return json.dumps(meta, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise DatasetError(_msg(source, "metadata", "a JSON-serialisable dict", str(exc))) from exc


def parse_metadata(text: str | bytes, *, source: str | None = None) -> dict[str, Any]:
    """Parse the metadata JSON string of a file into a dict.

    Parameters
    ----------
    text : str or bytes
        JSON text (UTF-8 if bytes).
    source : str, optional
        File name used in error messages.

    Returns
    -------
    dict

    Raises
    ------
    DatasetError
        If the text is not JSON or not a JSON object.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            _msg(source, "metadata", "a JSON object string", f"invalid JSON ({exc})")
        ) from exc
    if not isinstance(meta, dict):
        raise DatasetError(_msg(source, "metadata", "a JSON object", type(meta).__name__))
    return meta


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _msg(source: str | None, key: str, expected: str, found: Any) -> str:
    prefix = f"{source}: " if source else ""
    return f"{prefix}key '{key}': expected {expected}, found {found}"


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``np.unravel_index`` as plain ints (readable in messages)."""
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _require_array(a: Any, key: str, source: str | None) -> np.ndarray:
    if a is None:
        raise DatasetError(_msg(source, key, "a numpy array (required key)", "missing"))
    if not isinstance(a, np.ndarray):
        raise DatasetError(_msg(source, key, "a numpy array", type(a).__name__))
    return a


def _require_complex(a: np.ndarray, key: str, source: str | None) -> None:
    if not np.issubdtype(a.dtype, np.complexfloating):
        raise DatasetError(_msg(source, key, "complex (complex64)", a.dtype))


def _require_finite(a: np.ndarray, key: str, source: str | None) -> None:
    finite = np.isfinite(a)
    if not finite.all():
        bad = _unravel(int(np.argmin(finite)), a.shape)
        n_bad = int(a.size - np.count_nonzero(finite))
        raise DatasetError(
            _msg(source, key, "finite values", f"{n_bad} NaN/Inf (first at index {bad}: {a[bad]})")
        )


def validate(ds: PtychoDataset, *, min_patterns: int = 1, source: str | None = None) -> None:
    """Check a dataset against the contract of SPEC §3; raise on the first violation.

    Checks, in order: ``diffraction`` (n, N, N) square, real floating (integer data is reported
    as photon counts/intensity with the ``--counts`` hint), finite, ≥ 0; ``n ≥ min_patterns``;
    ``probeGuess`` (when present) (N, N) complex, finite; ``xcoords``/``ycoords`` 1-D real
    floating of length n, finite; ``objectGuess`` 2-D complex, finite and every scan position
    inside it (0 ≤ x ≤ W−1, 0 ≤ y ≤ H−1); ``Y`` (n, N, N) complex, finite; ``groups`` 2-D integer,
    values in [0, n), C a perfect square; ``metadata`` a JSON-serialisable dict whose
    ``schema_version`` (if any) is not newer than this package's.

    Parameters
    ----------
    ds : PtychoDataset
        The dataset to check (not modified).
    min_patterns : int, default 1
        Fewest patterns the caller needs (e.g. C + 1 for gridsize-2 grouping).
    source : str, optional
        File the dataset came from / goes to; prefixes every message.

    Raises
    ------
    DatasetError
        Message ``[source: ]key 'K': expected E, found F``.
    """
    # -- diffraction -----------------------------------------------------------------------
    d = _require_array(ds.diffraction, "diffraction", source)
    if np.issubdtype(d.dtype, np.complexfloating):
        raise DatasetError(
            _msg(source, "diffraction", "real float amplitude (float32), never complex", d.dtype)
        )
    if np.issubdtype(d.dtype, np.integer) or d.dtype == np.bool_:
        raise DatasetError(
            _msg(source, "diffraction", "real float amplitude = sqrt(counts) (float32)", d.dtype)
            + " — integer values look like photon counts/intensity; convert with --counts "
            "(load(..., counts=True)), which takes the square root"
        )
    if not np.issubdtype(d.dtype, np.floating):
        raise DatasetError(_msg(source, "diffraction", "real float amplitude (float32)", d.dtype))
    if d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise DatasetError(
            _msg(source, "diffraction", "rank 3 (n, N, N) with square patterns", f"shape {d.shape}")
        )
    n, N = int(d.shape[0]), int(d.shape[1])
    if N < 1:
        raise DatasetError(_msg(source, "diffraction", "patterns of side N >= 1", f"N={N}"))
    _require_finite(d, "diffraction", source)
    if n and float(d.min()) < 0:
        idx = _unravel(int(np.argmin(d)), d.shape)
        raise DatasetError(
            _msg(source, "diffraction", "amplitude >= 0", f"negative value {d[idx]} at index {idx}")
        )
    needed = max(int(min_patterns), 1)
    if n < needed:
        raise DatasetError(
            _msg(
                source,
                "diffraction",
                f"at least {needed} patterns (fewer patterns than a grouping needs)"
                if needed > 1
                else "at least 1 pattern",
                f"n={n}",
            )
        )

    # -- probe (optional: a foreign file may carry none) --------------------------------------
    if ds.probeGuess is not None:
        check_probe(ds.probeGuess, N, source=source)

    # -- coordinates --------------------------------------------------------------------------
    for key in ("xcoords", "ycoords"):
        c = _require_array(getattr(ds, key), key, source)
        if not np.issubdtype(c.dtype, np.floating):
            raise DatasetError(_msg(source, key, "real float positions (float64)", c.dtype))
        if c.ndim != 1 or c.shape[0] != n:
            raise DatasetError(
                _msg(source, key, f"shape ({n},) (one per pattern, n={n})", f"shape {c.shape}")
            )
        _require_finite(c, key, source)

    # -- object ------------------------------------------------------------------------------
    if ds.objectGuess is not None:
        o = _require_array(ds.objectGuess, "objectGuess", source)
        _require_complex(o, "objectGuess", source)
        if o.ndim != 2:
            raise DatasetError(_msg(source, "objectGuess", "rank 2 (H, W)", f"shape {o.shape}"))
        _require_finite(o, "objectGuess", source)
        H, W = o.shape
        for key, c, hi in (("xcoords", ds.xcoords, W - 1), ("ycoords", ds.ycoords, H - 1)):
            outside = (c < 0) | (c > hi)
            if outside.any():
                i = int(np.argmax(outside))
                raise DatasetError(
                    _msg(
                        source,
                        key,
                        f"scan positions inside objectGuess (0 <= value <= {hi}, "
                        f"object shape {o.shape})",
                        f"{int(outside.sum())} outside, first at index {i}: {c[i]}",
                    )
                )

    # -- ground-truth patches --------------------------------------------------------------------
    if ds.Y is not None:
        y = _require_array(ds.Y, "Y", source)
        _require_complex(y, "Y", source)
        if y.shape != (n, N, N):
            raise DatasetError(_msg(source, "Y", f"shape ({n}, {N}, {N})", f"shape {y.shape}"))
        _require_finite(y, "Y", source)

    # -- groups -------------------------------------------------------------------------------
    if ds.groups is not None:
        g = _require_array(ds.groups, "groups", source)
        if not np.issubdtype(g.dtype, np.integer):
            raise DatasetError(_msg(source, "groups", "integer indices (int64)", g.dtype))
        if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
            raise DatasetError(
                _msg(source, "groups", "rank 2 (n_groups >= 1, C >= 1)", f"shape {g.shape}")
            )
        C = int(g.shape[1])
        if math.isqrt(C) ** 2 != C:
            raise DatasetError(
                _msg(
                    source,
                    "groups",
                    "C = gridsize² patterns per group (a perfect square: 1 or 4)",
                    f"C={C}",
                )
            )
        bad = (g < 0) | (g >= n)
        if bad.any():
            idx = _unravel(int(np.argmax(bad)), g.shape)
            raise DatasetError(
                _msg(source, "groups", f"indices in [0, {n})", f"{g[idx]} at index {idx}")
            )

    # -- metadata ----------------------------------------------------------------------------
    metadata_json(ds.metadata, source=source)
    version = ds.metadata.get("schema_version")
    if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
        raise DatasetError(
            _msg(
                source,
                "metadata.schema_version",
                f"an integer <= {SCHEMA_VERSION} (this ptychobench)",
                version,
            )
        )
    transformations = ds.metadata.get("transformations")
    if transformations is not None and not isinstance(transformations, list):
        raise DatasetError(
            _msg(source, "metadata.transformations", "a list", type(transformations).__name__)
        )


def check_probe(probe: np.ndarray, N: int, *, source: str | None = None) -> None:
    """Raise :class:`DatasetError` unless ``probe`` is a finite (N, N) complex array."""
    p = _require_array(probe, "probeGuess", source)
    _require_complex(p, "probeGuess", source)
    if p.shape != (N, N):
        raise DatasetError(
            _msg(
                source,
                "probeGuess",
                f"shape ({N}, {N}) matching diffraction N={N}",
                f"shape {p.shape}",
            )
        )
    _require_finite(p, "probeGuess", source)


def require_probe(ds: PtychoDataset, source: str | None = None) -> np.ndarray:
    """The dataset's probe, or a one-line :class:`DatasetError` saying how to supply one."""
    if ds.probeGuess is None:
        where = f"{source}: " if source else ""
        raise DatasetError(
            f"{where}no probe in the data (key 'probeGuess' / CXI illumination missing): "
            "give one with --probe FILE (NPZ, CXI or Ptychodus product)"
        )
    return ds.probeGuess


def with_probe(ds: PtychoDataset, probe: np.ndarray, source: str) -> PtychoDataset:
    """A copy of ``ds`` whose probe is ``probe`` (validated; the source is recorded)."""
    check_probe(probe, ds.N, source=source)
    out = dataclasses.replace(ds, probeGuess=np.asarray(probe, dtype=np.complex64))
    out.metadata = copy.deepcopy(ds.metadata)
    out.metadata.setdefault("transformations", []).append(
        {"op": "set_probe", "source": os.path.basename(str(source))}
    )
    return out


def valid_scale(value: Any) -> float | None:
    """``value`` as a positive finite float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def photon_scale(ds: PtychoDataset) -> float:
    """The amplitude factor ``s`` from our probe units to the photon scale.

    ``metadata["scale"]`` when the dataset has one (expected counts = s²·|FFT_ortho(P·O)|²),
    else ``sqrt(mean photons per pattern / Σ|probeGuess|²)`` (a unit-transmission object then
    predicts the measured mean photons).

    Parameters
    ----------
    ds : PtychoDataset

    Returns
    -------
    float
        ``s > 0``.

    Raises
    ------
    DatasetError
        No scale and nothing to estimate one from (one line).
    """
    scale = valid_scale(ds.metadata.get("scale"))
    if scale is not None:
        return scale
    photons = float(photons_per_pattern(ds.diffraction).mean())
    energy = (
        0.0
        if ds.probeGuess is None
        else float(np.square(np.abs(np.asarray(ds.probeGuess, np.complex128))).sum())
    )
    if not (photons > 0 and energy > 0):
        raise DatasetError(
            f"dataset: key 'metadata.scale': expected a scale, or photons and probe energy "
            f"> 0 to estimate one, found {photons} and {energy}"
        )
    return math.sqrt(photons / energy)


def photon_probe(ds: PtychoDataset) -> tuple[np.ndarray, float, str]:
    """The probe on the photon scale, ``s · probeGuess`` (complex64), with ``s`` and its source.

    ``s`` is :func:`photon_scale`: ``metadata["scale"]`` when valid,
    else ``sqrt(mean photons / Σ|P|²)`` (``Σ|s P|²`` = mean photons through a unit object).
    """
    if ds.probeGuess is None:
        raise DatasetError(
            "dataset: key 'probeGuess': expected an (N, N) complex probe, found None"
        )
    try:
        s = photon_scale(ds)
    except DatasetError:  # no photons to scale to (an all-zero scan): keep the probe as is
        s = 1.0
    how = (
        "metadata.scale"
        if valid_scale(ds.metadata.get("scale")) is not None
        else "sqrt(mean photons / sum |P|^2)"
    )
    return (np.asarray(ds.probeGuess, np.complex128) * s).astype(np.complex64), s, how


def photons_per_pattern(diffraction: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(n,) float64 total photons Σ amplitude² of each pattern, computed in chunks.

    Chunking keeps the float64 temporaries bounded, so statistics of a large (n, N, N) stack
    never double its memory.
    """
    n = diffraction.shape[0]
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        block = np.asarray(diffraction[start : start + chunk], dtype=np.float64)
        out[start : start + chunk] = np.einsum("nij,nij->n", block, block)
    return out
