"""Reading and writing datasets: NPZ (the native format) and CXI (HDF5), atomically (SPEC §3).

NPZ layout (written by :func:`write_npz`)
-----------------------------------------
An uncompressed zip of ``.npy`` members, in this order: ``diffraction`` (n, N, N) float32,
``probeGuess`` (N, N) complex64, ``xcoords`` / ``ycoords`` (n,) float64, then, when present,
``objectGuess`` (H, W) complex64, ``Y`` (n, N, N) complex64, ``groups`` (n_groups, C) int64, and
finally ``metadata``: a 0-d unicode array holding ``json.dumps(metadata, sort_keys=True)``.
The zip is written by hand with a fixed member timestamp (1980-01-01) so that the same dataset
always gives byte-identical files (``np.savez`` stamps the current time).

Reading (:func:`read_npz`) never unpickles (``allow_pickle=False``) and accepts the legacy
reference layouts: ``diff3d`` for ``diffraction``, ``ground_truth_patches`` for ``Y``,
``_metadata`` (only if it is a plain string, not a pickled object array), (N, N, n) stacks when
the last axis matches ``len(xcoords)``, and trailing singleton channels (n, N, N, 1).
Reference-only keys (``xcoords_start``, ``scan_index``, ...) are ignored (logged at DEBUG).

CXI (HDF5)
----------
:func:`write_cxi` / :func:`read_cxi` live in :mod:`ptychobench.data.cxi`, whose docstring has the
layout table and the sign/axis/origin convention. In short: CXI 1.6 as CDTools and Ptychodus read
it — integer photon counts in ``/entry_1/instrument_1/detector_1/data`` (linked from
``/entry_1/data_1/data``), source energy (J) and wavelength (m), detector distance, pixel sizes,
basis vectors and corner position, sample translations in metres, the probe on the photon scale
as ``/entry_1/image_1`` (= ``source_1/illumination``), the truth object as ``/entry_1/image_2``,
and our exact arrays and metadata JSON in ``/entry_1/ptychobench`` (NPZ → CXI → NPZ is
bit-exact). The reader also takes CXI files other programs wrote (no probe → ``probeGuess=None``)
and our older layout (amplitudes in ``data_1/data``, pixel translations).

Every write goes to a temporary file in the destination directory, is flushed and fsynced, and
is then renamed over the final name (``os.replace``); on any error the temporary file is
removed and the final name is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ptychobench.data.dataset import (
    DatasetError,
    PtychoDataset,
    metadata_json,
    parse_metadata,
    validate,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "add_parent",
    "atomic_open",
    "atomic_path",
    "WriteFailed",
    "as_write_failure",
    "write_failures",
    "dataset_bytes_npz",
    "load",
    "read_cxi",
    "read_npz",
    "save",
    "sha256_file",
    "write_cxi",
    "write_npz",
]

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".npz", ".cxi")

#: Fixed zip member timestamp (the earliest a zip can hold) for byte-identical NPZ files.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)

# File mode for published files: 0o666 minus the process umask (read once at import; temp files
# are created 0o600 by ``tempfile``).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

_CANONICAL_DTYPES = {
    "diffraction": np.float32,
    "probeGuess": np.complex64,
    "xcoords": np.float64,
    "ycoords": np.float64,
    "objectGuess": np.complex64,
    "Y": np.complex64,
    "groups": np.int64,
}

_KNOWN_IGNORED = {"xcoords_start", "ycoords_start", "scan_index"}


# --------------------------------------------------------------------------------------------
# atomic writes, hashes, provenance
# --------------------------------------------------------------------------------------------


#: The errors of a storage that cannot take the write: a full disk or quota, a file-size limit,
#: a failing device. A job that meets one fails with :class:`WriteFailed`'s one line.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


class WriteFailed(OSError):
    """A write the storage refused: ``"no space left on device while writing PATH"``."""

    def __str__(self) -> str:
        return f"{self.strerror} while writing {self.filename}"


def as_write_failure(exc: BaseException, path: str | os.PathLike[str] | None = None):
    """``exc`` as a :class:`WriteFailed` naming ``path`` (default: the file ``exc`` names) when
    it is a storage error (:data:`WRITE_ERRNOS`); ``None`` otherwise."""
    if isinstance(exc, WriteFailed):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in WRITE_ERRNOS:
        return None
    what = (exc.strerror or os.strerror(exc.errno)).rstrip(".")
    where = path if path is not None else (exc.filename or "a file")
    return WriteFailed(exc.errno, what[:1].lower() + what[1:], str(where))


@contextlib.contextmanager
def write_failures(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a storage error (:data:`WRITE_ERRNOS`) raised in the block into :class:`WriteFailed`
    naming ``path``, the file the user will look for."""
    try:
        yield
    except OSError as exc:
        failure = as_write_failure(exc, path)
        if failure is None or failure is exc:
            raise
        raise failure from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it as ``path`` if the block succeeds.

    The temporary file (``<dir>/<random>.tmp``, created empty) may be reopened by any writer
    (h5py, ...). On success it is fsynced and renamed over ``path`` (``os.replace``, atomic on
    POSIX); on any exception it is deleted and ``path`` is left as it was. Parent directories
    are created.

    Parameters
    ----------
    path : path-like
        Final destination.

    Yields
    ------
    pathlib.Path
        The temporary file to write.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=final.parent, prefix=f".{final.name}.", suffix=".tmp", delete=False
    ) as fh:
        tmp = Path(fh.name)
    try:
        with write_failures(final):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                # a full disk may only show here (delayed allocation, network filesystems)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; publish it atomically on success.

    Parameters
    ----------
    path : path-like
        Final destination.
    mode : {"wb", "w"}
        Binary or text (UTF-8) mode.

    Yields
    ------
    file object
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        kwargs: dict[str, Any] = {} if mode == "wb" else {"encoding": "utf-8", "newline": "\n"}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_parent(meta: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Record a parent file in ``meta["parents"]`` as ``{"file": name, "sha256": digest}``.

    Only the file *name* is stored (not the directory), so a derived file does not depend on
    where the run directory lives; the hash identifies the parent. ``meta`` is modified in place
    and returned. Adding the same parent twice is a no-op.

    Parameters
    ----------
    meta : dict
        Metadata of the derived dataset.
    path : path-like
        The parent file (must exist).

    Returns
    -------
    dict
        ``meta``.
    """
    entry = {"file": Path(path).name, "sha256": sha256_file(path)}
    parents = meta.setdefault("parents", [])
    if entry not in parents:
        parents.append(entry)
    return meta


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"file not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{path}: expected a file, found a directory")


def _fix_stack(a: np.ndarray, n: int | None) -> np.ndarray:
    """Bring a pattern stack to (n, N, N): squeeze (n, N, N, 1), transpose legacy (N, N, n)."""
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and n is not None and a.shape[0] != n and a.shape[2] == n:
        a = np.transpose(a, (2, 0, 1))
    return np.ascontiguousarray(a)


def _column(a: np.ndarray) -> np.ndarray:
    """(n, 1) or (1, n) coordinate columns → (n,); anything else unchanged (for ``validate``)."""
    if a.ndim == 2 and 1 in a.shape:
        return a.reshape(-1)
    return a


def _cast_real(a: np.ndarray, dtype: type) -> np.ndarray:
    """Cast only within the real-float kind; anything else is left for ``validate``."""
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(dtype, copy=False)
    return a


def _cast_complex(a: np.ndarray, dtype: type) -> np.ndarray:
    if np.issubdtype(a.dtype, np.complexfloating):
        return a.astype(dtype, copy=False)
    return a


def _counts_to_amplitude(d: np.ndarray, meta: dict[str, Any], source: str) -> np.ndarray:
    """sqrt of photon counts/intensity → float32 amplitude; records the transformation."""
    if np.issubdtype(d.dtype, np.complexfloating) or not (
        np.issubdtype(d.dtype, np.integer)
        or np.issubdtype(d.dtype, np.floating)
        or d.dtype == np.bool_
    ):
        raise DatasetError(
            f"{source}: key 'diffraction': expected real photon counts/intensity for --counts, "
            f"found {d.dtype}"
        )
    d64 = d.astype(np.float64)
    if d64.size and np.nanmin(d64) < 0:
        raise DatasetError(
            f"{source}: key 'diffraction': expected counts >= 0 for --counts, "
            f"found minimum {np.nanmin(d64)}"
        )
    meta.setdefault("transformations", []).append(
        {"op": "counts_to_amplitude", "source_dtype": str(d.dtype), "formula": "sqrt"}
    )
    return np.sqrt(d64).astype(np.float32)


def _canonical(ds: PtychoDataset) -> dict[str, np.ndarray]:
    """The arrays to write, in key order, cast to the canonical dtypes, C-contiguous."""
    out: dict[str, np.ndarray] = {}
    for key, dtype in _CANONICAL_DTYPES.items():
        a = getattr(ds, key)
        if a is None:
            continue
        out[key] = np.ascontiguousarray(np.asarray(a).astype(dtype, copy=False))
    return out


# --------------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------------


def read_npz(path: str | os.PathLike[str], *, counts: bool = False) -> PtychoDataset:
    """Read and validate a dataset NPZ without unpickling anything.

    Parameters
    ----------
    path : path-like
        ``.npz`` file (native or reference/legacy layout, see module docstring).
    counts : bool, default False
        The stored diffraction is photon counts/intensity: convert with ``sqrt`` to float32
        amplitude and record ``{"op": "counts_to_amplitude"}`` in ``metadata["transformations"]``.

    Returns
    -------
    PtychoDataset
        diffraction float32 (n, N, N), probe complex64 (N, N), coords float64 (n,), optional
        objectGuess/Y complex64, groups int64. Arrays of the wrong *kind* are not cast; they are
        reported by :func:`~ptychobench.data.dataset.validate`.

    Raises
    ------
    DatasetError
        Missing file, not an NPZ, corrupt/truncated archive, pickled object arrays, missing or
        malformed keys.
    """
    p = Path(path)
    source = str(p)
    _check_exists(p)
    try:
        npz = np.load(p, allow_pickle=False)
    except Exception as exc:  # BadZipFile, OSError, EOFError, ValueError, ...
        raise DatasetError(
            f"{source}: cannot read as NPZ (corrupt, truncated or not a zip archive): {exc}"
        ) from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{source}: expected an NPZ archive of named arrays, found a .npy array")

    raw: dict[str, np.ndarray] = {}
    with npz:
        for key in npz.files:
            try:
                raw[key] = npz[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    hint = (
                        "re-save metadata as a JSON string"
                        if key in ("_metadata", "metadata")
                        else "re-save it as a plain numeric array"
                    )
                    raise DatasetError(
                        f"{source}: key '{key}' is a pickled object array; ptychobench never "
                        f"unpickles — {hint}"
                    ) from exc
                raise DatasetError(f"{source}: key '{key}': cannot read array: {exc}") from exc
            except Exception as exc:  # zlib/CRC errors, truncated members
                raise DatasetError(
                    f"{source}: key '{key}': corrupt or truncated member ({exc})"
                ) from exc
    return _from_arrays(raw, source=source, counts=counts)


def _pop_alias(raw: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray | None:
    found = [k for k in names if k in raw]
    if not found:
        return None
    value = raw.pop(found[0])
    for other in found[1:]:
        log.warning("ignoring key %r: %r takes precedence", other, found[0])
        raw.pop(other)
    return value


def _from_arrays(raw: dict[str, np.ndarray], *, source: str, counts: bool) -> PtychoDataset:
    raw = dict(raw)
    keys = sorted(raw)
    diffraction = _pop_alias(raw, ("diffraction", "diff3d"))
    probe = raw.pop("probeGuess", None)
    x = raw.pop("xcoords", None)
    y = raw.pop("ycoords", None)
    for key, value in (
        ("diffraction", diffraction),
        ("xcoords", x),
        ("ycoords", y),
    ):
        if value is None:
            raise DatasetError(
                f"{source}: key '{key}': expected a required array, found missing "
                f"(keys in file: {keys})"
            )
    obj = raw.pop("objectGuess", None)
    Y = _pop_alias(raw, ("Y", "ground_truth_patches"))
    groups = raw.pop("groups", None)
    meta_arr = _pop_alias(raw, ("metadata", "_metadata"))
    for key in sorted(raw):
        level = logging.DEBUG if key in _KNOWN_IGNORED else logging.INFO
        log.log(level, "%s: ignoring key %r", source, key)

    # metadata
    if meta_arr is None:
        log.warning("%s: no 'metadata' key; using empty metadata", source)
        meta: dict[str, Any] = {}
    else:
        if meta_arr.dtype.kind not in "US" or meta_arr.size != 1:
            raise DatasetError(
                f"{source}: key 'metadata': expected a 0-d string array holding JSON, "
                f"found {meta_arr.dtype} array of shape {meta_arr.shape}"
            )
        meta = parse_metadata(meta_arr.reshape(()).item(), source=source)

    # coordinates (cast floats only; 1-D view of (n, 1) columns)
    x = _cast_real(_column(x), np.float64)
    y = _cast_real(_column(y), np.float64)
    n = int(x.shape[0]) if x.ndim == 1 else None

    diffraction = _fix_stack(diffraction, n)
    if counts:
        diffraction = _counts_to_amplitude(diffraction, meta, source)
    else:
        diffraction = _cast_real(diffraction, np.float32)
    if probe is None:
        log.info("%s: no probe in the file; reconstructing needs --probe FILE", source)
    else:
        probe = _cast_complex(np.squeeze(probe) if probe.ndim > 2 else probe, np.complex64)
    if obj is not None:
        obj = _cast_complex(np.squeeze(obj) if obj.ndim > 2 else obj, np.complex64)
    if Y is not None:
        Y = _cast_complex(_fix_stack(Y, n), np.complex64)
    if groups is not None and np.issubdtype(groups.dtype, np.integer):
        groups = groups.astype(np.int64, copy=False)

    ds = PtychoDataset(
        diffraction=diffraction,
        probeGuess=probe,
        xcoords=x,
        ycoords=y,
        objectGuess=obj,
        Y=Y,
        metadata=meta,
        groups=groups,
    )
    validate(ds, source=source)
    return ds


def _write_npz_members(fh: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed NPZ with fixed timestamps (byte-identical for identical input)."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def write_npz(ds: PtychoDataset, path: str | os.PathLike[str]) -> None:
    """Validate and atomically write a dataset NPZ (deterministic bytes).

    Arrays are cast to the canonical dtypes of SPEC §3 (float32 / complex64 / float64 / int64).
    The metadata dict is written as-is (``json.dumps(sort_keys=True)``); nothing is added.

    Parameters
    ----------
    ds : PtychoDataset
    path : path-like
        Destination, normally ending in ``.npz`` (used verbatim).

    Raises
    ------
    DatasetError
        If the dataset fails validation (nothing is written).
    """
    source = str(path)
    validate(ds, source=source)
    arrays = _canonical(ds)
    arrays["metadata"] = np.array(metadata_json(ds.metadata, source=source), dtype=np.str_)
    with atomic_open(path, "wb") as fh:
        _write_npz_members(fh, arrays)


# --------------------------------------------------------------------------------------------
# CXI (HDF5)
# --------------------------------------------------------------------------------------------


def write_cxi(ds: PtychoDataset, path: str | os.PathLike[str]) -> None:
    """Validate and atomically write a CXI 1.6 file (:func:`ptychobench.data.cxi.write_cxi`)."""
    from ptychobench.data import cxi

    cxi.write_cxi(ds, path)


def read_cxi(path: str | os.PathLike[str]) -> PtychoDataset:
    """Read and validate a CXI file, ours or foreign (:func:`ptychobench.data.cxi.read_cxi`)."""
    from ptychobench.data import cxi

    return cxi.read_cxi(path)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DatasetError(
            f"{path}: unsupported file extension {ext or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return ext


def load(path: str | os.PathLike[str], *, counts: bool = False) -> PtychoDataset:
    """Load a dataset from ``.npz`` or ``.cxi`` (by extension) and validate it.

    Parameters
    ----------
    path : path-like
    counts : bool, default False
        The stored diffraction holds photon counts/intensity (NPZ only; CXI intensities are
        converted automatically): take ``sqrt``.

    Returns
    -------
    PtychoDataset

    Raises
    ------
    DatasetError
    """
    p = Path(path)
    ext = _suffix(p)
    _check_exists(p)
    if ext == ".npz":
        return read_npz(p, counts=counts)
    if counts:
        log.warning("%s: --counts ignored for CXI (intensities are converted automatically)", p)
    return read_cxi(p)


def save(ds: PtychoDataset, path: str | os.PathLike[str]) -> None:
    """Validate and atomically save a dataset as ``.npz`` or ``.cxi`` (by extension).

    Parameters
    ----------
    ds : PtychoDataset
    path : path-like

    Raises
    ------
    DatasetError
    """
    p = Path(path)
    if _suffix(p) == ".npz":
        write_npz(ds, p)
    else:
        write_cxi(ds, p)


def dataset_bytes_npz(ds: PtychoDataset) -> bytes:
    """The exact bytes :func:`write_npz` would write (for hashing in memory).

    Parameters
    ----------
    ds : PtychoDataset

    Returns
    -------
    bytes
    """
    validate(ds)
    arrays = _canonical(ds)
    arrays["metadata"] = np.array(metadata_json(ds.metadata), dtype=np.str_)
    buf = io.BytesIO()
    _write_npz_members(buf, arrays)
    return buf.getvalue()


_ARRAY_KEYS = {
    "probe": (
        ("probeGuess", "probe"),
        (
            "/entry_1/ptychobench/probeGuess",
            "/entry_1/instrument_1/source_1/illumination",
            "/entry_1/instrument_1/source_1/probe",
            "/entry_1/instrument_1/probe",
        ),
    ),
    "object": (
        ("objectGuess", "object"),
        ("/entry_1/ptychobench/objectGuess", "/entry_1/image_2/data", "/entry_1/sample_1/object"),
    ),
}


def _load_complex_2d(path: str | os.PathLike[str], what: str) -> np.ndarray:
    from ptychobench.data import product

    p = Path(path)
    _check_exists(p)
    if product.is_product(p):
        # a Ptychodus product: its probe (mode 0) or its object (one layer)
        return product.product_probe(p) if what == "probe" else product.product_object(p)
    ext = _suffix(p)
    npz_keys, cxi_keys = _ARRAY_KEYS[what]
    arr = None
    try:
        if ext == ".npz":
            with np.load(p, allow_pickle=False) as f:
                for key in npz_keys:
                    if key in f.files:
                        arr = f[key]
                        break
        else:
            import h5py

            with h5py.File(p, "r") as f:
                for key in cxi_keys:
                    if key in f:
                        arr = f[key][()]
                        break
    except ValueError as exc:
        raise DatasetError(f"{p}: cannot read a {what} without pickle ({exc})") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{p}: not a readable {ext} file ({exc})") from None
    keys = npz_keys if ext == ".npz" else cxi_keys
    if arr is None:
        raise DatasetError(
            f"{p}: missing {what}: expected one of the keys {list(keys)}, found none"
        )
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2 or not np.iscomplexobj(arr):
        raise DatasetError(
            f"{p}: key {keys[0]!r}: expected a 2-D complex {what}, found shape {arr.shape} "
            f"dtype {arr.dtype}"
        )
    if not np.isfinite(arr).all():
        raise DatasetError(f"{p}: key {keys[0]!r}: expected finite values, found NaN/Inf")
    return arr.astype(np.complex64)


def load_probe(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, N) complex64 probe from an NPZ (``probeGuess`` or ``probe``) or a CXI file."""
    return _load_complex_2d(path, "probe")


def load_object(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) complex64 object from an NPZ (``objectGuess`` or ``object``) or a CXI file."""
    return _load_complex_2d(path, "object")
