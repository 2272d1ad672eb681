"""Ptychodus "product" files (HDF5 and NPZ): read, write, and convert to and from our datasets.

A Ptychodus product bundles the probe, the object, the scan positions (in metres) and the
experiment metadata of one reconstruction. This module reads and writes the two layouts of
Ptychodus 1.7.0 with plain h5py/numpy (no Ptychodus import; no pickle either way) and converts
between a product and ptychobench's pixel-frame datasets and reconstructions.

HDF5 layout (``.h5`` / ``.hdf5``; Ptychodus' ``ptychodus.api.io.save_product``)
-----------------------------------------------------------------------------------
Root attributes (scalars): ``name`` (str), ``comments`` (str), ``detector_object_distance_m``,
``photon_energy_eV`` (older files: ``probe_energy_eV``, still read), ``probe_photon_count``,
``exposure_time_s``, ``mass_attenuation_m2_per_kg``, ``tomography_angle_deg``,
``focus_object_distance_m``, ``tilt_angle_deg``, ``far_field`` (bool) and, only when set,
``polarization`` (str). Root datasets:

========================== ================ ========= ===========================================
dataset                    shape            dtype     meaning / attributes
========================== ================ ========= ===========================================
``probe_position_indexes`` (n,)             int64     scan index of each position
``probe_position_x_m``     (n,)             float64   probe position x (m)
``probe_position_y_m``     (n,)             float64   probe position y (m)
``probe_photon_counts``    (n,)             float64   optional, per-position photon count
``probe``                  (P, K, N, N)     complex   ``P`` OPR modes × ``K`` incoherent modes;
                                                      attrs ``pixel_width_m``, ``pixel_height_m``
``opr_weights``            (n, P)           float     optional
``object``                 (L, H, W)        complex   ``L`` layers; attrs ``center_x_m``,
                                                      ``center_y_m``, ``pixel_width_m``,
                                                      ``pixel_height_m``
``object_layer_spacing_m`` (L - 1,)         float64   gaps between layers (empty for one layer)
``loss_epochs``            (k,)             int64     epoch of each loss value
``loss_values``            (k,)             float64   loss values
========================== ================ ========= ===========================================

Ptychodus writes the probe 4-D and the object 3-D (its in-memory shapes) and reads 2-, 3- or
4-D probes and 2- or 3-D objects; :func:`write_product` writes ``(1, 1, N, N)`` and
``(1, H, W)`` as Ptychodus does.

NPZ layout (``.npz``; Ptychodus' ``NPZProductFileIO``)
------------------------------------------------------
A flat archive with the same names for the root attributes and root datasets, and prefixed keys
for the per-dataset attributes: ``probe_pixel_width_m``, ``probe_pixel_height_m``,
``object_center_x_m``, ``object_center_y_m``, ``object_pixel_width_m``,
``object_pixel_height_m``. Strings are 0-d unicode arrays (no pickle); older archives may name
``loss_values`` ``costs``.

Coordinate convention
---------------------
Ptychodus (``ObjectGeometry.map_coordinates_probe_to_object``) maps a probe position ``x_m``
onto the object column ``p = (x_m - center_x_m) / pixel_width_m + (W - 1) / 2`` and places the
probe array's *geometric centre*, pixel ``(N - 1) / 2``, there
(``ProbeGeometry.resolve_patch_bounds``: ``patch[k] = object[p - (N - 1) / 2 + k]``; pty-chi
agrees). Object pixel ``j`` is centred at ``center_x_m + (j - (W - 1) / 2) · pixel_width_m``.
Ours lands a coordinate ``x`` on patch pixel ``N // 2`` (``patch[k] = object[x - N // 2 + k]``).
The same patch is therefore cut when

    p = x - δ,    δ = N // 2 - (N - 1) / 2    (0.5 for even N, 0 for odd N).

The products written here use the metres origin at the centre of our object pixel (0, 0):
object pixel ``(i, j)`` is at ``(x, y) = (j · dx, i · dy)`` metres, hence
``center_x_m = (W - 1) / 2 · dx``, ``center_y_m = (H - 1) / 2 · dy``, and a probe position is
written where Ptychodus means it, at the probe array's centre:

    x_m = (x - δ) · dx,    y_m = (y - δ) · dy.

Probe scale
-----------
Ptychodus' probe builders normalise ``Σ|P|²`` to ``probe_photon_count`` (photons per pattern),
i.e. the orthonormal-FFT photon scale; :func:`dataset_to_product` writes
``metadata["scale"] · probeGuess`` and sets ``probe_photon_count = Σ|probe|²``. (Ptychodus'
own simulator, a discrete Fresnel transform with amplitude factor ``dx²/(λz)``, predicts
``(dx/p)²`` times these intensities, ``p`` the detector pixel; pty-chi, which Ptychodus hands
the probe unchanged, uses the unnormalised FFT, for which the same counts need ``probe / N``.)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench.data.dataset import (
    DatasetError,
    PtychoDataset,
    photon_probe,
    photon_scale,
    valid_scale,
)
from ptychobench.data.io import atomic_path
from ptychobench.data.recon import Reconstruction
from ptychobench.physics.geometry import geometry_of, probe_centre_offset

__all__ = [
    "Product",
    "dataset_to_product",
    "is_product",
    "product_coords",
    "product_object",
    "product_probe",
    "product_to_reconstruction",
    "read_product",
    "reconstruction_to_product",
    "write_product",
]

log = logging.getLogger(__name__)

_H5_SUFFIXES = (".h5", ".hdf5")
_NPZ_SUFFIXES = (".npz",)

# root attributes (HDF5) == top-level scalar keys (NPZ): (key, Product field, default or None
# for required)
_SCALARS: tuple[tuple[str, str, float | None], ...] = (
    ("detector_object_distance_m", "detector_distance_m", None),
    ("photon_energy_eV", "energy_eV", None),
    ("probe_photon_count", "probe_photon_count", 0.0),
    ("exposure_time_s", "exposure_time_s", 0.0),
    ("mass_attenuation_m2_per_kg", "mass_attenuation_m2_per_kg", 0.0),
    ("tomography_angle_deg", "tomography_angle_deg", 0.0),
    ("focus_object_distance_m", "focus_object_distance_m", 0.0),
    ("tilt_angle_deg", "tilt_angle_deg", 0.0),
)
_LEGACY_ENERGY = "probe_energy_eV"
# HDF5 attribute on dataset -> flat NPZ key
_PROBE_ATTRS = {"pixel_width_m": "probe_pixel_width_m", "pixel_height_m": "probe_pixel_height_m"}
_OBJECT_ATTRS = {
    "center_x_m": "object_center_x_m",
    "center_y_m": "object_center_y_m",
    "pixel_width_m": "object_pixel_width_m",
    "pixel_height_m": "object_pixel_height_m",
}
_DATASETS = (
    "probe_position_indexes",
    "probe_position_x_m",
    "probe_position_y_m",
    "probe_photon_counts",
    "probe",
    "opr_weights",
    "object",
    "object_layer_spacing_m",
    "loss_epochs",
    "loss_values",
)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclasses.dataclass
class Product:
    """One Ptychodus product in memory (see the module docstring for the file layouts).

    Attributes
    ----------
    probe : (N, N) complex64
        Probe, mode 0 of the file's probe (further OPR / incoherent modes are dropped).
    object : (H, W) complex64
        Object transmission, a single layer.
    x_m, y_m : (n,) float64
        Probe positions (m): where Ptychodus puts the probe array's centre, pixel (N-1)/2.
    object_pixel_x_m, object_pixel_y_m : float
        Object pixel width (along x, columns) and height (along y, rows) (m).
    object_center_x_m, object_center_y_m : float
        Location (m) of the object array's centre, pixel ((W-1)/2, (H-1)/2).
    probe_pixel_x_m, probe_pixel_y_m : float
        Probe pixel width and height (m).
    energy_eV : float
        Photon energy (eV).
    detector_distance_m : float
        Object-to-detector distance (m).
    indexes : (n,) int64, optional
        Scan index of each position (default ``0 … n-1``).
    name, comments : str
        Free text.
    probe_photon_count : float
        Photons per pattern (Ptychodus' probe power, ``Σ|probe|²`` on its photon scale).
    exposure_time_s, mass_attenuation_m2_per_kg, tomography_angle_deg : float
        Experiment metadata (0 when unknown).
    focus_object_distance_m, tilt_angle_deg : float
        Experiment metadata (0 when unknown / no focusing optic).
    far_field : bool
        Whether the detector records the Fraunhofer pattern.
    polarization : str or None
        Ptychodus' polarization label, if any.
    probe_photon_counts : (n,) float64 or None
        Per-position photon counts, if the file has them.
    loss_epochs : (k,) int64
        Epoch of each loss value.
    loss_values : (k,) float64
        Loss values (empty when none).
    source : str or None
        The file this product was read from (not written).
    """

    probe: np.ndarray
    object: np.ndarray
    x_m: np.ndarray
    y_m: np.ndarray
    object_pixel_x_m: float
    object_pixel_y_m: float
    object_center_x_m: float
    object_center_y_m: float
    probe_pixel_x_m: float
    probe_pixel_y_m: float
    energy_eV: float
    detector_distance_m: float
    indexes: np.ndarray | None = None
    name: str = "Unnamed"
    comments: str = ""
    probe_photon_count: float = 0.0
    exposure_time_s: float = 0.0
    mass_attenuation_m2_per_kg: float = 0.0
    tomography_angle_deg: float = 0.0
    focus_object_distance_m: float = 0.0
    tilt_angle_deg: float = 0.0
    far_field: bool = True
    polarization: str | None = None
    probe_photon_counts: np.ndarray | None = None
    loss_epochs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    loss_values: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float64))
    source: str | None = None

    def __post_init__(self) -> None:
        self.x_m = np.asarray(self.x_m, dtype=np.float64).reshape(-1)
        self.y_m = np.asarray(self.y_m, dtype=np.float64).reshape(-1)
        if self.indexes is None:
            self.indexes = np.arange(self.x_m.shape[0], dtype=np.int64)
        self.indexes = np.asarray(self.indexes, dtype=np.int64).reshape(-1)
        self.loss_epochs = np.asarray(self.loss_epochs, dtype=np.int64).reshape(-1)
        self.loss_values = np.asarray(self.loss_values, dtype=np.float64).reshape(-1)
        if self.probe_photon_counts is not None:
            self.probe_photon_counts = np.asarray(self.probe_photon_counts, np.float64).reshape(-1)

    @property
    def n(self) -> int:
        """Number of probe positions."""
        return int(self.x_m.shape[0])

    @property
    def N(self) -> int:
        """Probe side (px)."""
        return int(self.probe.shape[-1])

    def validate(self, source: str = "product") -> None:
        """Raise :class:`DatasetError` (one line) unless arrays and numbers are usable.

        Parameters
        ----------
        source : str
            File name used in the messages.
        """
        for key, arr, ndim in (("probe", self.probe, 2), ("object", self.object, 2)):
            arr = np.asarray(arr)
            if arr.ndim != ndim or not np.iscomplexobj(arr) or 0 in arr.shape:
                raise DatasetError(
                    f"{source}: key {key!r}: expected a non-empty 2-D complex array, found "
                    f"shape {arr.shape} dtype {arr.dtype}"
                )
            if not np.isfinite(arr).all():
                raise DatasetError(f"{source}: key {key!r}: expected finite values, found NaN/Inf")
        n = self.n
        for key, arr in (
            ("probe_position_y_m", self.y_m),
            ("probe_position_indexes", self.indexes),
        ):
            if arr.shape != (n,):
                raise DatasetError(
                    f"{source}: key {key!r}: expected shape ({n},) like probe_position_x_m, "
                    f"found {arr.shape}"
                )
        if n == 0:
            raise DatasetError(
                f"{source}: key 'probe_position_x_m': expected >= 1 position, found 0"
            )
        if not (np.isfinite(self.x_m).all() and np.isfinite(self.y_m).all()):
            raise DatasetError(
                f"{source}: key 'probe_position_x_m/_y_m': expected finite metres, found NaN/Inf"
            )
        if self.probe_photon_counts is not None and self.probe_photon_counts.shape != (n,):
            raise DatasetError(
                f"{source}: key 'probe_photon_counts': expected shape ({n},), found "
                f"{self.probe_photon_counts.shape}"
            )
        if self.loss_epochs.shape != self.loss_values.shape:
            raise DatasetError(
                f"{source}: key 'loss_epochs': expected the shape of loss_values "
                f"{self.loss_values.shape}, found {self.loss_epochs.shape}"
            )
        for key, value in (
            ("object_pixel_width_m", self.object_pixel_x_m),
            ("object_pixel_height_m", self.object_pixel_y_m),
            ("probe_pixel_width_m", self.probe_pixel_x_m),
            ("probe_pixel_height_m", self.probe_pixel_y_m),
            ("photon_energy_eV", self.energy_eV),
            ("detector_object_distance_m", self.detector_distance_m),
        ):
            if not (math.isfinite(value) and value > 0):
                raise DatasetError(
                    f"{source}: key {key!r}: expected a positive number, found {value}"
                )
        for key, value in (
            ("object_center_x_m", self.object_center_x_m),
            ("object_center_y_m", self.object_center_y_m),
            ("probe_photon_count", self.probe_photon_count),
        ):
            if not math.isfinite(value):
                raise DatasetError(
                    f"{source}: key {key!r}: expected a finite number, found {value}"
                )


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _contents(product: Product) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(scalars, arrays) of a product under the NPZ key names (arrays in Ptychodus' shapes)."""
    scalars: dict[str, Any] = {
        "name": str(product.name),
        "comments": str(product.comments),
        "far_field": bool(product.far_field),
    }
    for key, field, _ in _SCALARS:
        scalars[key] = float(getattr(product, field))
    if product.polarization is not None:
        scalars["polarization"] = str(product.polarization)
    arrays: dict[str, np.ndarray] = {
        "probe_position_indexes": np.ascontiguousarray(product.indexes, np.int64),
        "probe_position_x_m": np.ascontiguousarray(product.x_m, np.float64),
        "probe_position_y_m": np.ascontiguousarray(product.y_m, np.float64),
        "probe": np.ascontiguousarray(product.probe, np.complex64)[None, None],
        "object": np.ascontiguousarray(product.object, np.complex64)[None],
        "object_layer_spacing_m": np.zeros(0, np.float64),
        "loss_epochs": np.ascontiguousarray(product.loss_epochs, np.int64),
        "loss_values": np.ascontiguousarray(product.loss_values, np.float64),
    }
    if product.probe_photon_counts is not None:
        arrays["probe_photon_counts"] = np.ascontiguousarray(
            product.probe_photon_counts, np.float64
        )
    scalars["probe_pixel_width_m"] = float(product.probe_pixel_x_m)
    scalars["probe_pixel_height_m"] = float(product.probe_pixel_y_m)
    scalars["object_center_x_m"] = float(product.object_center_x_m)
    scalars["object_center_y_m"] = float(product.object_center_y_m)
    scalars["object_pixel_width_m"] = float(product.object_pixel_x_m)
    scalars["object_pixel_height_m"] = float(product.object_pixel_y_m)
    return scalars, arrays


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _H5_SUFFIXES:
        return "h5"
    if suffix in _NPZ_SUFFIXES:
        return "npz"
    raise DatasetError(
        f"{path}: file name: expected a product suffix .h5, .hdf5 or .npz, found {path.suffix!r}"
    )


def write_product(product: Product, path: str | os.PathLike[str]) -> None:
    """Write a Ptychodus product atomically: HDF5 for ``.h5``/``.hdf5``, NPZ for ``.npz``.

    The product is validated first; nothing is written (and ``path`` is left as it was) if
    validation or writing fails. The NPZ holds no pickled object.

    Parameters
    ----------
    product : Product
        The product (probe written ``(1, 1, N, N)``, object ``(1, H, W)``, both complex64).
    path : path-like
        Destination; its suffix selects the layout.

    Raises
    ------
    DatasetError
        Unknown suffix or invalid product (one-line message).
    """
    p = Path(path)
    fmt = _format_of(p)
    product.validate(str(p))
    scalars, arrays = _contents(product)
    with atomic_path(p) as tmp:
        if fmt == "h5":
            import h5py

            with h5py.File(tmp, "w") as f:
                for key in ("name", "comments", "far_field", "polarization"):
                    if key in scalars:
                        f.attrs[key] = scalars[key]
                for key, _, _ in _SCALARS:
                    f.attrs[key] = scalars[key]
                for key, arr in arrays.items():
                    f.create_dataset(key, data=arr)
                for attr, key in _PROBE_ATTRS.items():
                    f["probe"].attrs[attr] = scalars[key]
                for attr, key in _OBJECT_ATTRS.items():
                    f["object"].attrs[attr] = scalars[key]
        else:
            members = {k: np.asarray(v) for k, v in {**scalars, **arrays}.items()}
            for key, arr in members.items():
                if arr.dtype.hasobject:  # pragma: no cover - _contents builds plain dtypes
                    raise DatasetError(f"{p}: key {key!r}: expected a plain dtype, found object")
            with open(tmp, "wb") as fh:
                np.savez(fh, allow_pickle=False, **members)


def _read_raw_h5(p: Path) -> dict[str, Any]:
    import h5py

    raw: dict[str, Any] = {}
    with h5py.File(p, "r") as f:
        for key, value in f.attrs.items():
            raw[key] = value
        for key in _DATASETS:
            if key in f:
                node = f[key]
                if not isinstance(node, h5py.Dataset):
                    raise DatasetError(
                        f"{p}: key {key!r}: expected a dataset, found {type(node).__name__}"
                    )
                raw[key] = node[()]
        for name, attrs in (("probe", _PROBE_ATTRS), ("object", _OBJECT_ATTRS)):
            if name in f:
                for attr, key in attrs.items():
                    if attr in f[name].attrs:
                        raw[key] = f[name].attrs[attr]
        raw["__keys__"] = sorted(f.keys())
    return raw


def _read_raw_npz(p: Path) -> dict[str, Any]:
    with np.load(p, allow_pickle=False) as f:
        raw: dict[str, Any] = {key: f[key] for key in f.files}
        raw["__keys__"] = sorted(f.files)
    return raw


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        return bytes(arr.reshape(-1)[0]).decode("utf-8", errors="replace")
    return str(arr.reshape(-1)[0]) if arr.size == 1 else str(value)


def _scalar(raw: dict[str, Any], key: str, source: str, default: float | None) -> float:
    if key not in raw:
        if default is None:
            raise DatasetError(
                f"{source}: missing key {key!r}: expected a number, found keys "
                f"{sorted(k for k in raw if k != '__keys__')}"
            )
        return default
    arr = np.asarray(raw[key])
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise DatasetError(
            f"{source}: key {key!r}: expected a real scalar, found shape {arr.shape} dtype "
            f"{arr.dtype}"
        )
    return float(arr.reshape(-1)[0])


def _array(raw: dict[str, Any], key: str, source: str, kinds: str) -> np.ndarray:
    if key not in raw:
        raise DatasetError(
            f"{source}: missing key {key!r}: expected an array, found datasets {raw['__keys__']}"
        )
    arr = np.asarray(raw[key])
    if arr.dtype.kind not in kinds:
        raise DatasetError(
            f"{source}: key {key!r}: expected dtype kind {kinds!r}, found {arr.dtype} shape "
            f"{arr.shape}"
        )
    return arr


def _probe_mode0(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{source}: key 'probe': expected (N, N), (K, N, N) or (P, K, N, N), found shape "
            f"{arr.shape}"
        )
    lead = arr.shape[:-2]
    if int(np.prod(lead, dtype=np.int64)) == 0:
        raise DatasetError(f"{source}: key 'probe': expected at least one mode, found {arr.shape}")
    if int(np.prod(lead, dtype=np.int64)) > 1:
        log.info(
            "%s: probe has shape %s (OPR x incoherent modes); using mode 0 only",
            source,
            arr.shape,
        )
    return arr.reshape((-1, *arr.shape[-2:]))[0]


def _object_layer0(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise DatasetError(
                f"{source}: key 'object': expected a single-layer object (1, H, W), found "
                f"{arr.shape[0]} layers (shape {arr.shape}); multi-slice products are not supported"
            )
        return arr[0]
    if arr.ndim != 2:
        raise DatasetError(
            f"{source}: key 'object': expected (H, W) or (1, H, W), found shape {arr.shape}"
        )
    return arr


def _from_raw(raw: dict[str, Any], source: str) -> Product:
    if "photon_energy_eV" not in raw and _LEGACY_ENERGY in raw:
        raw = {**raw, "photon_energy_eV": raw[_LEGACY_ENERGY]}
    numbers = {field: _scalar(raw, key, source, default) for key, field, default in _SCALARS}
    probe = _probe_mode0(_array(raw, "probe", source, "c"), source)
    obj = _object_layer0(_array(raw, "object", source, "c"), source)
    x_m = _array(raw, "probe_position_x_m", source, "biuf").reshape(-1)
    y_m = _array(raw, "probe_position_y_m", source, "biuf").reshape(-1)
    indexes = (
        _array(raw, "probe_position_indexes", source, "biu").reshape(-1)
        if "probe_position_indexes" in raw
        else None
    )
    obj_dx = _scalar(raw, "object_pixel_width_m", source, None)
    obj_dy = _scalar(raw, "object_pixel_height_m", source, None)
    counts = (
        _array(raw, "probe_photon_counts", source, "biuf").reshape(-1)
        if "probe_photon_counts" in raw
        else None
    )
    loss_key = "loss_values" if "loss_values" in raw else ("costs" if "costs" in raw else None)
    values = np.zeros(0) if loss_key is None else _array(raw, loss_key, source, "biuf").reshape(-1)
    epochs = (
        _array(raw, "loss_epochs", source, "biuf").reshape(-1)
        if "loss_epochs" in raw
        else np.arange(values.shape[0])
    )
    k = min(values.shape[0], epochs.shape[0])  # Ptychodus pairs them with zip()
    if "opr_weights" in raw:
        log.info("%s: OPR weights present; ignored (probe mode 0 is used)", source)
    product = Product(
        probe=probe.astype(np.complex64),
        object=obj.astype(np.complex64),
        x_m=x_m,
        y_m=y_m,
        object_pixel_x_m=obj_dx,
        object_pixel_y_m=obj_dy,
        object_center_x_m=_scalar(raw, "object_center_x_m", source, None),
        object_center_y_m=_scalar(raw, "object_center_y_m", source, None),
        probe_pixel_x_m=_scalar(raw, "probe_pixel_width_m", source, obj_dx),
        probe_pixel_y_m=_scalar(raw, "probe_pixel_height_m", source, obj_dy),
        indexes=indexes,
        name=_text(raw["name"]) if "name" in raw else "Unnamed",
        comments=_text(raw["comments"]) if "comments" in raw else "",
        far_field=bool(np.asarray(raw["far_field"]).reshape(-1)[0]) if "far_field" in raw else True,
        polarization=_text(raw["polarization"]) if "polarization" in raw else None,
        probe_photon_counts=counts,
        loss_epochs=epochs[:k].astype(np.int64),
        loss_values=values[:k].astype(np.float64),
        source=source,
        **numbers,
    )
    product.validate(source)
    return product


def _sniff(p: Path) -> str | None:
    """'h5', 'npz' or None from the file's first bytes (not its name)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "npz"
    return None


def read_product(path: str | os.PathLike[str]) -> Product:
    """Read a Ptychodus product (HDF5 or NPZ, recognised by content), never unpickling.

    Parameters
    ----------
    path : path-like
        Product file.

    Returns
    -------
    Product
        Probe mode 0 (logged when the file has more modes) and the single object layer;
        ``source`` is the path.

    Raises
    ------
    DatasetError
        Missing file, not HDF5/NPZ, a missing or malformed key, or a multi-layer object
        (one-line message naming the file and key).
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file: expected a Ptychodus product file, found no such file")
    fmt = _sniff(p)
    if fmt is None:
        raise DatasetError(
            f"{p}: file: expected a Ptychodus product (HDF5 or NPZ), found neither signature"
        )
    try:
        raw = _read_raw_h5(p) if fmt == "h5" else _read_raw_npz(p)
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{p}: file: cannot read without pickle ({_one_line(exc)})") from None
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(
            f"{p}: file: expected a readable {fmt.upper()} product, found an unreadable file "
            f"({_one_line(exc)})"
        ) from None
    return _from_raw(raw, str(p))


def is_product(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a Ptychodus product (without reading its arrays).

    True for an HDF5 file with a root ``probe_position_x_m`` dataset and a ``probe`` (a CXI
    file, also HDF5, is not a product) and for an NPZ with a ``probe_position_x_m`` member.
    """
    p = Path(path)
    fmt = _sniff(p) if p.is_file() else None
    try:
        if fmt == "h5":
            import h5py

            with h5py.File(p, "r") as f:
                return "probe_position_x_m" in f and "probe" in f
        if fmt == "npz":
            with zipfile.ZipFile(p) as z:
                return "probe_position_x_m.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def product_probe(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, N) complex64 probe (mode 0) of a product file, on the file's own scale."""
    return read_product(path).probe


def product_object(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) complex64 object (single layer) of a product file."""
    return read_product(path).object


def product_coords(product: Product) -> tuple[np.ndarray, np.ndarray]:
    """Our scan coordinates (object pixels) of a product's positions, in its object's frame.

    ``x = (x_m - center_x_m) / pixel_width_m + (W - 1) / 2 + δ`` (and likewise y), with
    ``δ`` = :func:`probe_centre_offset` ``(N)``: the location in the product's object array
    that lands on our patch pixel ``N // 2``.

    Returns
    -------
    x, y : (n,) float64
        Column and row coordinates.
    """
    H, W = product.object.shape
    d = probe_centre_offset(product.N)
    x = (product.x_m - product.object_center_x_m) / product.object_pixel_x_m + (W - 1) / 2 + d
    y = (product.y_m - product.object_center_y_m) / product.object_pixel_y_m + (H - 1) / 2 + d
    return x, y


# --------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------


def _pixel_size(ds: PtychoDataset, what: str) -> tuple[float, float, Any]:
    geo = geometry_of(ds.metadata, ds.N)
    if geo is None:
        raise DatasetError(
            f"dataset: key 'metadata.geometry': expected a far-field geometry (energy, "
            f"distance, detector pixel) to {what} in metres, found none"
        )
    return geo.object_pixel_x_m, geo.object_pixel_y_m, geo


def dataset_to_product(
    ds: PtychoDataset,
    object: np.ndarray | None = None,
    *,
    probe: np.ndarray | None = None,
    name: str | None = None,
    comments: str | None = None,
) -> Product:
    """A Ptychodus product of a dataset: metres positions, photon-scale probe, truth object.

    Parameters
    ----------
    ds : PtychoDataset
        Needs ``metadata["geometry"]`` (the object pixel size) and a ``probeGuess``.
    object : (H, W) complex, optional
        Object in the dataset's pixel frame (default ``objectGuess``; ones of
        ``ds.frame_shape`` when there is neither).
    probe : (N, N) complex, optional
        Probe written as is (default ``metadata["scale"] · probeGuess``, or
        ``sqrt(mean photons / Σ|P|²) · probeGuess`` without a scale).
    name, comments : str, optional
        Product name (default ``metadata["name"]`` or ``"ptychobench"``) and comments.

    Returns
    -------
    Product
        ``x_m = (x - δ) · dx``, ``y_m = (y - δ) · dy`` (m), object centre
        ``((W - 1) / 2 · dx, (H - 1) / 2 · dy)``: the metres origin is our object pixel (0, 0),
        and Ptychodus cuts the patch we cut at every position (module docstring).

    Raises
    ------
    DatasetError
        No geometry, no probe, or a malformed object (one line).
    """
    dx, dy, geo = _pixel_size(ds, "express positions")
    if probe is None:
        if ds.probeGuess is None:
            raise DatasetError(
                "dataset: key 'probeGuess': expected an (N, N) complex probe (a product needs "
                "one), found None"
            )
        probe = photon_probe(ds)[0]
    probe = np.asarray(probe).astype(np.complex64)
    if object is None:
        object = ds.objectGuess
    if object is None:
        log.info("dataset has no object; the product gets ones of shape %s", ds.frame_shape)
        object = np.ones(ds.frame_shape, np.complex64)
    obj = np.asarray(object)
    if obj.ndim != 2 or not np.iscomplexobj(obj):
        raise DatasetError(
            f"dataset: key 'objectGuess': expected a 2-D complex object, found shape {obj.shape} "
            f"dtype {obj.dtype}"
        )
    H, W = obj.shape
    d = probe_centre_offset(int(probe.shape[-1]))
    power = float(np.square(np.abs(probe.astype(np.complex128))).sum())
    return Product(
        probe=probe,
        object=obj.astype(np.complex64),
        x_m=(np.asarray(ds.xcoords, np.float64) - d) * dx,
        y_m=(np.asarray(ds.ycoords, np.float64) - d) * dy,
        object_pixel_x_m=dx,
        object_pixel_y_m=dy,
        object_center_x_m=(W - 1) / 2 * dx,
        object_center_y_m=(H - 1) / 2 * dy,
        probe_pixel_x_m=dx,
        probe_pixel_y_m=dy,
        energy_eV=geo.energy_ev,
        detector_distance_m=geo.detector_distance_m,
        indexes=np.arange(ds.n, dtype=np.int64),
        name=name if name is not None else str(ds.metadata.get("name", "ptychobench")),
        comments=(
            comments
            if comments is not None
            else f"written by ptychobench from '{ds.metadata.get('creator', 'a dataset')}'; "
            "metres origin = centre of object pixel (0, 0)"
        ),
        probe_photon_count=power,
    )


def reconstruction_to_product(
    rec: Reconstruction,
    ds: PtychoDataset,
    *,
    name: str | None = None,
    probe_scale: float | None = None,
) -> Product:
    """A product of a reconstruction: its object (and probe, else the dataset's) at ds' positions.

    Parameters
    ----------
    rec : Reconstruction
        ``reconstructed_object`` (H, W) in the dataset's pixel frame. ``reconstructed_probe``
        (N, N), when present, is in our units (those of ``probeGuess``) and is put on the
        photon scale like the dataset's probe: times ``probe_scale``, else the reconstruction's
        ``metadata["probe_photon_scale"]`` (the scale the arm fitted with), else
        :func:`photon_scale` ``(ds)``.
    ds : PtychoDataset
        Positions, geometry and (fallback) probe, as in :func:`dataset_to_product`.
    name : str, optional
        Product name (default: the reconstruction's arm).
    probe_scale : float, optional
        Amplitude factor of the reconstructed probe (see above).

    Returns
    -------
    Product
    """
    arm = str(rec.metadata.get("arm", "reconstruction"))
    probe = None
    if rec.reconstructed_probe is not None:
        s = (
            valid_scale(probe_scale)
            or valid_scale(rec.metadata.get("probe_photon_scale"))
            or photon_scale(ds)
        )
        probe = (np.asarray(rec.reconstructed_probe, np.complex128) * s).astype(np.complex64)
    return dataset_to_product(
        ds,
        rec.reconstructed_object,
        probe=probe,
        name=name if name is not None else arm,
        comments=f"ptychobench reconstruction by {arm}; metres origin = centre of object pixel "
        "(0, 0)",
    )


def _axis_sampler(
    n_out: int, n_in: int, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps: output pixel i reads input ``i - offset`` (valid mask)."""
    if abs(offset - round(offset)) < 1e-6:
        offset = float(round(offset))
    pos = np.arange(n_out, dtype=np.float64) - offset
    valid = (pos >= 0) & (pos <= n_in - 1)
    lo = np.clip(np.floor(pos), 0, n_in - 1).astype(np.int64)
    frac = np.where(valid, pos - lo, 0.0)
    frac[lo == n_in - 1] = 0.0
    return lo, frac, valid


def product_to_reconstruction(product: Product, ds: PtychoDataset) -> Reconstruction:
    """Place a product's object into the dataset's object pixel frame.

    The product's object pixel ``p`` (column) is at ``center_x_m + (p - (W_p - 1) / 2) · dx``
    metres, and our pixel ``j`` at ``j · dx`` (the origin of :func:`dataset_to_product`), so it
    lands on column ``j = p + center_x_m / dx - (W_p - 1) / 2`` (likewise rows): copied exactly
    for an integer offset, linearly interpolated otherwise.

    Parameters
    ----------
    product : Product
        Its object pixel size must equal the dataset's (relative 1e-6).
    ds : PtychoDataset
        Needs ``metadata["geometry"]``; the frame is ``ds.frame_shape``.

    Returns
    -------
    Reconstruction
        ``reconstructed_object`` (H, W) complex64 (0 outside the product's object),
        ``coverage`` (H, W) float32 (1 where the product's object lands, else 0), the product's
        probe when it is (N, N), back in our units (divided by :func:`photon_scale` ``(ds)``,
        1 when there is none; ``metadata["probe_photon_scale"]``), and metadata naming the
        source file, pixel size and offset.

    Raises
    ------
    DatasetError
        No geometry, or a pixel-size mismatch (one line naming both sizes).
    """
    dx, dy, _ = _pixel_size(ds, "place the product's object")
    source = product.source or "product"
    for key, theirs, ours in (
        ("object_pixel_width_m", product.object_pixel_x_m, dx),
        ("object_pixel_height_m", product.object_pixel_y_m, dy),
    ):
        if abs(theirs - ours) > 1e-6 * abs(ours):
            raise DatasetError(
                f"{source}: key {key!r}: expected the dataset's object pixel size {ours:.9g} m "
                f"(relative 1e-6), found {theirs:.9g} m"
            )
    h, w = product.object.shape
    H, W = ds.frame_shape
    x0 = product.object_center_x_m / dx - (w - 1) / 2
    y0 = product.object_center_y_m / dy - (h - 1) / 2
    c_lo, c_frac, c_ok = _axis_sampler(W, w, x0)
    r_lo, r_frac, r_ok = _axis_sampler(H, h, y0)
    obj = product.object.astype(np.complex128)
    c_hi = np.minimum(c_lo + 1, w - 1)
    r_hi = np.minimum(r_lo + 1, h - 1)
    cols = obj[:, c_lo] * (1 - c_frac) + obj[:, c_hi] * c_frac
    img = cols[r_lo, :] * (1 - r_frac)[:, None] + cols[r_hi, :] * r_frac[:, None]
    coverage = (r_ok[:, None] & c_ok[None, :]).astype(np.float32)
    img = np.where(coverage > 0, img, 0).astype(np.complex64)
    if not coverage.any():
        log.warning("%s: the product's object does not overlap the dataset frame", source)
    offset_px = None
    if product.n == ds.n:
        d = probe_centre_offset(ds.N)
        offset_px = float(
            max(
                np.abs(product.x_m / dx + d - ds.xcoords).max(),
                np.abs(product.y_m / dy + d - ds.ycoords).max(),
            )
        )
        if offset_px > 1e-3:
            log.warning(
                "%s: product positions differ from the dataset's by up to %.3g px",
                source,
                offset_px,
            )
    probe = None
    probe_scale = None
    if product.probe.shape == (ds.N, ds.N):
        try:
            probe_scale = photon_scale(ds)
        except DatasetError:
            probe_scale = 1.0
        probe = (product.probe.astype(np.complex128) / probe_scale).astype(np.complex64)
    meta = {
        "arm": "Ptychodus product",
        "source": str(source),
        "format": "ptychodus-product",
        "product_name": product.name,
        "object_pixel_x_m": product.object_pixel_x_m,
        "object_pixel_y_m": product.object_pixel_y_m,
        "object_offset_px": [float(x0), float(y0)],
        "probe_photon_scale": probe_scale,
        "positions_max_offset_px": offset_px,
        "photon_energy_eV": product.energy_eV,
        "detector_distance_m": product.detector_distance_m,
        "loss_values": product.loss_values.tolist(),
        "geometry": ds.metadata.get("geometry"),
    }
    return Reconstruction(img, coverage, meta, probe)
