"""Model bundles: a directory that rebuilds a trained model, verified by SHA-256 (SPEC §5.3).

A bundle is a directory with exactly these four files (other entries, such as the training
``checkpoint.pt`` written by :func:`ptychobench.train.train`, may sit next to them and are ignored):

``model.pt``
    The model's state dict only (a ``dict[str, Tensor]``), written with :func:`torch.save` and read
    with ``torch.load(weights_only=True)`` -- no pickled objects, ever.
``config.json``
    Everything needed to rebuild the model::

        {"schema_version": 1,
         "kind": "pinn" | "baseline",
         "model": model.config.model_dump(mode="json"),
         "training": {...TrainConfig dump...},
         "data": {...N, gridsize, mean photons per pattern, position/offset statistics,
                  training data hash...},
         "seed": 0,
         "extra": {...} (optional),
         "versions": {"ptychobench": ..., "torch": ..., "python": ...}}

``history.csv``
    One row per epoch: ``epoch,train_loss,val_loss,lr,seconds`` (plus any further columns of the
    history rows, e.g. ``patterns_per_s``).
``SHA256SUMS``
    ``<sha256>  <name>`` lines (the ``sha256sum`` format) for the three files above, so
    ``sha256sum -c SHA256SUMS`` works inside the bundle.

:func:`save_bundle` publishes atomically (temp directory + rename), :func:`load_bundle` verifies
every hash before it reads anything and fails with a :class:`BundleError` that names the file or the
config key at fault.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUNDLE_FILES",
    "HISTORY_COLUMNS",
    "KNOWN_KINDS",
    "SCHEMA_VERSION",
    "BundleError",
    "load_bundle",
    "read_config",
    "save_bundle",
    "state_dict_of",
    "verify_bundle",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the ``config.json`` layout; :func:`load_bundle` refuses any other."""

KNOWN_KINDS = ("pinn", "baseline")
"""Model kinds a bundle may hold."""

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
SUMS_FILE = "SHA256SUMS"
BUNDLE_FILES = (MODEL_FILE, CONFIG_FILE, HISTORY_FILE, SUMS_FILE)
"""The files that make a bundle; everything else in the directory is left alone."""

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")
"""The leading columns of ``history.csv``."""

_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")
_NEW_TAG = ".bundle-new-"
_OLD_TAG = ".bundle-old-"

BuildFn = Callable[[dict[str, Any], "torch.Tensor | None"], nn.Module]


class BundleError(ValueError):
    """A bundle is missing, corrupted, tampered with, or incompatible with this version."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(digest: str) -> str:
    return digest[:8] + "…"


def _write_bytes(path: Path, data: bytes) -> None:
    from ptychobench.data.io import write_failures

    with write_failures(path), open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as detached CPU tensors, unwrapping DDP / ``torch.compile``.

    Parameters
    ----------
    model : torch.nn.Module
        A model, possibly wrapped in ``DistributedDataParallel`` (``.module``) or compiled
        (``._orig_mod``).

    Returns
    -------
    dict of str to torch.Tensor
        Cloned CPU tensors, safe to keep while the model trains on.
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def unwrap(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist") and callable(o.tolist):  # small numpy arrays
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean_float(v: Any) -> Any:
    """JSON has no NaN/Infinity; store them as null so config.json stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean_float(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean_float(x) for x in v]
    return v


def _history_csv(history: Sequence[Mapping[str, Any]]) -> bytes:
    cols = list(HISTORY_COLUMNS)
    for row in history:
        for k in row:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in history:
        out = []
        for c in cols:
            v = row.get(c)
            if v is None:
                out.append("")
            elif isinstance(v, float):
                out.append(repr(v))
            else:
                out.append(str(v))
        w.writerow(out)
    return buf.getvalue().encode()


def _versions() -> dict[str, str]:
    from ptychobench import __version__

    return {
        "ptychobench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _recover(out_dir: Path) -> None:
    """Finish or undo a swap that a kill interrupted (``out_dir`` missing, siblings left over)."""
    parent, name = out_dir.parent, out_dir.name
    if not parent.is_dir():
        return
    news = sorted(parent.glob(f".{name}{_NEW_TAG}*"))
    olds = sorted(parent.glob(f".{name}{_OLD_TAG}*"))
    if not out_dir.exists():
        # killed between "rename old away" and "rename new in": the new one is complete
        complete = [p for p in news if (p / SUMS_FILE).is_file()]
        if complete:
            os.replace(complete[-1], out_dir)
            log.warning("bundle %s: finished an interrupted replace", out_dir)
        elif olds:
            os.replace(olds[-1], out_dir)
            log.warning("bundle %s: rolled back an interrupted replace", out_dir)
    for p in [*parent.glob(f".{name}{_NEW_TAG}*"), *parent.glob(f".{name}{_OLD_TAG}*")]:
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------


def save_bundle(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    history: Sequence[Mapping[str, Any]],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a bundle for ``model`` into ``out_dir``, atomically.

    The four files are written into a fresh temp directory next to ``out_dir`` and fsynced; the
    temp directory is then renamed to ``out_dir``. An existing ``out_dir`` is renamed away first and
    deleted after the new one is in place; entries of it that are not bundle files (for example the
    training ``checkpoint.pt``) are carried into the new directory by hard link (copy where links
    are not supported), so a bundle can live in a training output directory. A reader therefore sees
    either the old bundle or the new one, never a mix; a kill inside the two renames is repaired by
    the next :func:`save_bundle` (or :func:`load_bundle`) on the same path.

    Parameters
    ----------
    model : torch.nn.Module
        The model (``.kind``, ``.config`` pydantic model); DDP / compiled wrappers are unwrapped.
    out_dir : path
        The bundle directory (created; its parent must exist or is created).
    history : sequence of mapping
        Per-epoch rows with at least ``epoch, train_loss, val_loss, lr, seconds``.
    training : mapping
        The training configuration (``TrainConfig.model_dump(mode="json")``); its ``seed`` is
        copied to the top-level ``seed``.
    data : mapping
        Training-data facts: ``N``, ``gridsize``, mean photons per pattern, position and offset
        statistics, training data hash, ...
    extra : mapping, optional
        Anything else, stored under ``"extra"``.
    state_dict : mapping of str to torch.Tensor, optional
        Weights to store instead of the model's current ones (e.g. the best epoch's).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    base = unwrap(model)
    kind = getattr(base, "kind", None)
    if kind not in KNOWN_KINDS:
        raise BundleError(f"cannot save a model of kind {kind!r}; known kinds: {KNOWN_KINDS}")
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(cfg, "model_dump"):
        raise BundleError("cannot save a model without a pydantic .config")
    if state_dict is None:
        sd = state_dict_of(base)
    else:
        sd = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}

    config = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "model": cfg.model_dump(mode="json"),
        "training": dict(training),
        "data": dict(data),
        "seed": training.get("seed"),
        "versions": _versions(),
    }
    if extra:
        config["extra"] = dict(extra)
    config_bytes = (
        json.dumps(_clean_float(config), indent=2, default=_json_default, allow_nan=False) + "\n"
    ).encode()
    model_buf = io.BytesIO()
    torch.save(sd, model_buf)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(out_dir)
    tag = uuid.uuid4().hex[:12]
    tmp = out_dir.parent / f".{out_dir.name}{_NEW_TAG}{tag}"
    old = out_dir.parent / f".{out_dir.name}{_OLD_TAG}{tag}"
    tmp.mkdir()
    try:
        payload = {
            MODEL_FILE: model_buf.getvalue(),
            CONFIG_FILE: config_bytes,
            HISTORY_FILE: _history_csv(history),
        }
        for name, blob in payload.items():
            _write_bytes(tmp / name, blob)
        sums = "".join(
            f"{hashlib.sha256(blob).hexdigest()}  {name}\n" for name, blob in payload.items()
        )
        if out_dir.exists():
            if not out_dir.is_dir():
                raise BundleError(f"bundle {out_dir}: exists and is not a directory")
            for entry in out_dir.iterdir():
                if entry.name in BUNDLE_FILES:
                    continue
                dest = tmp / entry.name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, dest, symlinks=True)
                else:
                    try:
                        os.link(entry, dest, follow_symlinks=False)
                    except OSError:
                        shutil.copy2(entry, dest, follow_symlinks=False)
        # SHA256SUMS last: its presence marks the temp directory as complete (see _recover)
        _write_bytes(tmp / SUMS_FILE, sums.encode())
        _fsync_dir(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException:
        try:
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------------
# verify / load
# --------------------------------------------------------------------------------------------


def verify_bundle(path: str | os.PathLike[str]) -> None:
    """Check every file of a bundle against ``SHA256SUMS``.

    Parameters
    ----------
    path : path
        The bundle directory.

    Raises
    ------
    BundleError
        The directory or a bundle file is missing, ``SHA256SUMS`` is garbled or lacks an entry, or a
        hash does not match. The message names the bundle and the file.
    """
    path = Path(path)
    if not path.is_dir():
        _recover(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path}: not a directory (no bundle there)")
    sums_path = path / SUMS_FILE
    if not sums_path.is_file():
        raise BundleError(
            f"bundle {path}: {SUMS_FILE} is missing — cannot verify the bundle (was it written by "
            "ptychobench, and completely?)"
        )
    try:
        text = sums_path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as e:
        raise BundleError(f"bundle {path}: {SUMS_FILE}: unreadable ({e})") from e
    expected: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line.strip())
        if m is None:
            raise BundleError(
                f"bundle {path}: {SUMS_FILE}: line {i} is not '<sha256>  <name>': {line[:80]!r}"
            )
        digest, name = m.groups()
        if name not in BUNDLE_FILES or name == SUMS_FILE:
            raise BundleError(
                f"bundle {path}: {SUMS_FILE}: line {i} names an unexpected file {name!r}"
            )
        expected[name] = digest
    for name in (MODEL_FILE, CONFIG_FILE, HISTORY_FILE):
        if name not in expected:
            raise BundleError(f"bundle {path}: {SUMS_FILE}: no entry for {name}")
        fp = path / name
        if not fp.is_file():
            raise BundleError(f"bundle {path}: {name}: file is missing")
        found = _sha256(fp)
        if found != expected[name]:
            raise BundleError(
                f"bundle {path}: {name}: SHA-256 mismatch (expected {_short(expected[name])}, "
                f"found {_short(found)}) — the file was modified or corrupted"
            )


def read_config(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read and check a bundle's ``config.json`` (hashes first unless ``verify=False``).

    Parameters
    ----------
    path : path
        The bundle directory.
    verify : bool
        Verify ``SHA256SUMS`` first.

    Returns
    -------
    dict
        The parsed configuration.

    Raises
    ------
    BundleError
        Hash failure, invalid JSON, unknown ``schema_version`` or ``kind``, missing sections.
    """
    path = Path(path)
    if verify:
        verify_bundle(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {path}: {CONFIG_FILE}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise BundleError(f"bundle {path}: {CONFIG_FILE}: expected a JSON object")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"bundle {path}: {CONFIG_FILE}: unknown schema_version {version!r} (this ptychobench "
            f"reads schema_version {SCHEMA_VERSION})"
        )
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict):
        raise BundleError(f"bundle {path}: {CONFIG_FILE}: key 'model' is missing or not an object")
    kind = config.get("kind", model_cfg.get("kind"))
    if kind not in KNOWN_KINDS:
        raise BundleError(
            f"bundle {path}: {CONFIG_FILE}: unknown model kind {kind!r} at key 'kind' "
            f"(known: {', '.join(KNOWN_KINDS)})"
        )
    for key in ("training", "data"):
        if not isinstance(config.get(key, {}), dict):
            raise BundleError(f"bundle {path}: {CONFIG_FILE}: key {key!r} is not an object")
    return config


def _find_probe(sd: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    for k, v in sd.items():
        if k.split(".")[-1] == "probe" and torch.is_tensor(v) and v.is_complex():
            return v
    return None


def _pydantic_locs(err: Exception) -> str | None:
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return None
    try:
        locs = [".".join(str(p) for p in e.get("loc", ())) for e in errors()]
    except Exception:  # noqa: BLE001 - best effort for the message
        return None
    return ", ".join(f"model.{loc}" if loc else "model" for loc in locs) or None


def load_bundle(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    build: BuildFn | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Verify a bundle, rebuild its model and load the weights.

    Order of checks: ``SHA256SUMS`` (every file) → ``config.json`` (schema version, kind) →
    ``model.pt`` read with ``torch.load(weights_only=True)`` (pickled objects are refused) →
    rebuild with ``build`` → ``load_state_dict(strict=True)``.

    Parameters
    ----------
    path : path
        The bundle directory.
    device : str or torch.device
        Where the model goes.
    build : callable, optional
        ``build(model_config: dict, probe: Tensor | None) -> nn.Module``; defaults to
        :func:`ptychobench.models.build_model`. ``probe`` is the complex tensor stored under a
        ``*.probe`` key of the state dict, if any (``load_state_dict`` restores it anyway).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on ``device``.
    config : dict
        The bundle's ``config.json``.

    Raises
    ------
    BundleError
        Anything wrong with the bundle; the message names the bundle and the file or key.
    """
    path = Path(path)
    config = read_config(path, verify=True)
    try:
        sd = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise BundleError(
            f"bundle {path}: {MODEL_FILE}: refused to load — it must hold a plain state dict of "
            f"tensors, read with torch.load(weights_only=True); pickled objects are never "
            f"executed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()
    ):
        raise BundleError(f"bundle {path}: {MODEL_FILE}: not a state dict (str → Tensor)")

    if build is None:
        from ptychobench.models import build_model as build
    try:
        model = build(dict(config["model"]), _find_probe(sd))
    except (ValueError, TypeError, KeyError) as e:
        where = _pydantic_locs(e)
        key = f"key {where}" if where else "key 'model'"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(
            f"bundle {path}: {CONFIG_FILE}: {key} does not describe a buildable model ({first})"
        ) from e
    if getattr(model, "kind", config["kind"]) != config["kind"]:
        raise BundleError(
            f"bundle {path}: {CONFIG_FILE}: key 'kind' says {config['kind']!r} but the model "
            f"config builds {model.kind!r}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[1:4])
        raise BundleError(
            f"bundle {path}: {MODEL_FILE}: weights do not fit the model described in "
            f"{CONFIG_FILE}: {detail[:300]}"
        ) from e
    model.to(device)
    model.eval()
    return model, config
