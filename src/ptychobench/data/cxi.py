"""CXI 1.6 files (HDF5) as CDTools, Ptychodus and ptychobench read them.

Layout written by :func:`write_cxi`
-----------------------------------
``E = /entry_1``, ``S = E/instrument_1/source_1``, ``D = E/instrument_1/detector_1``; ``n``
patterns of ``N × N`` pixels; ``dx, dy`` the object pixel ``λz/(N p)`` of
``metadata["geometry"]``; ``δ = N//2 − (N−1)/2``; every length in metres, energy in joules.

=============================== ========= ========= ==============================================
path                            shape     dtype     content
=============================== ========= ========= ==============================================
``/cxi_version``                ()        int64     160
``/number_of_entries``          ()        int64     1
``E/program_name``              ()        bytes     ``ptychobench X.Y.Z``
``S/energy``                    ()        float64   photon energy (J), ``units='J'``
``S/wavelength``                ()        float64   λ (m)
``S/illumination``              link      →         ``E/image_1/data``
``D/data``                      (n, N, N) int32     photon counts (int64 beyond 2³¹); noiseless
                                          float64   data: intensities, ``quantity='intensity'``
``D/distance``                  ()        float64   z
``D/x_pixel_size``, ``y_...``   ()        float64   p_x, p_y
``D/basis_vectors``             (2, 3)    float64   ``[[0, −p_y, 0], [−p_x, 0, 0]]`` (CXI default:
                                                    rows along −y, columns along −x)
``D/corner_position``           (3,)      float64   outer corner of pixel (0, 0):
                                                    ``((N//2 + ½) p_x, (N//2 + ½) p_y, z)`` (DC
                                                    pixel ``(N//2, N//2)`` on the beam)
``D/translation``               link      →         ``E/sample_1/geometry_1/translation``
``E/data_1/data``               link      →         ``D/data``
``E/data_1/translation``        link      →         ``E/sample_1/geometry_1/translation``
``E/sample_1/geometry_1/``      (n, 3)    float64   ``((x − δ) dx, (y − δ) dy, 0)``, ``units='m'``
``translation``
``E/image_1/data``              (N, N)    complex64 probe on the photon scale, ``s · P``
``E/image_1/image_size``        (3,)      float64   ``(N dx, N dy, 0)``
``E/image_2/data``              (H, W)    complex64 truth object (when the dataset has one)
``E/image_2/image_size``        (3,)      float64   ``(W dx, H dy, 0)``
``E/ptychodus/object_center_``  ()        float64   ``(W−1)/2 · dx`` and ``(H−1)/2 · dy``
``x_m``, ``..._y_m``                                (Ptychodus' object centre)
``E/ptychobench/xcoords``, ``y`` (n,)     float64   our exact positions (pixels)
``E/ptychobench/probeGuess``    (N, N)    complex64 our exact probe
``E/ptychobench/objectGuess``,  as NPZ    as NPZ    optional, as in the NPZ
``Y``, ``groups``
``E/ptychobench/metadata``      ()        str       UTF-8 JSON (attrs ``layout=2``,
                                                    ``probe_centre_offset_px=δ`` on the group)
=============================== ========= ========= ==============================================

* **Counts.** Simulated amplitudes are ``float32(sqrt(count))``; the writer stores the counts
  ``rint(a²)`` as int32 when ``float32(sqrt(rint(a²))) == a`` for every value (int64 beyond
  2³¹), else (noiseless data) the float64 intensities ``a.astype(float64)²`` with
  ``quantity='intensity'``. Either way ``float32(sqrt(stored)) == a`` bit for bit, so the
  amplitudes come back exactly without a second copy.
* **Probe.** ``image_1`` holds ``s · probeGuess`` with ``s = metadata["scale"]`` (expected counts
  ``= |F(s P · O)|²`` with the orthonormal FFT, so ``Σ|s P|²`` = photons per pattern through a
  unit object), or ``s = sqrt(mean photons / Σ|P|²)`` without a scale (attributes
  ``photon_scale``, ``photon_scale_source``). Ptychodus reads ``image_1/data`` (else
  ``source_1/illumination``) as its probe; CDTools reads no probe from a CXI file (it starts from
  a SHARP-style guess made from the mean pattern).
* **Object.** The truth object is ``image_2`` (Ptychodus' object slot): ``image_1`` is where
  Ptychodus looks for the probe, so an object there would be taken for the probe.
* **Our extras.** ``/entry_1/ptychobench`` keeps the exact arrays and the metadata JSON, so
  NPZ → CXI → NPZ is bit-exact; the diffraction itself is recovered from the counts.
* **No geometry** (``metadata["geometry"]`` absent): the file is still valid CXI (data, probe,
  object, extras) but carries no source, detector geometry or ``translation`` — metres cannot be
  made up, and pixel translations would break the SI rule other readers rely on. Our reader
  takes the positions from the extras; other tools get the patterns but no positions (a warning
  is logged).

Sign, axis and origin convention
--------------------------------
CXI's frame is right-handed, z downstream, y up. The detector basis is the CXI default: data
rows run along −y, columns along −x. ``translation`` is the sample translation; CDTools negates
it to a probe translation and projects it on its object basis (parallel to the detector
basis, pitch ``λz/(Np)``), which gives pixel ``(i, j) = (T_y/dy, T_x/dx)``
(``tools.interactions.translations_to_pixel``) and cuts ``obj[i:i+N, j:j+N]`` after subtracting
its minimum translation; Ptychodus takes ``T`` as the probe position and maps it onto object pixel
``(T − centre)/d + (W−1)/2`` at the probe array's centre ``(N−1)/2``
(``ObjectGeometry.map_coordinates_probe_to_object``). Both therefore put object columns along +x
and rows along +y, and with ``T = ((x − δ) dx, (y − δ) dy, 0)`` — the metres origin at the centre
of our object pixel (0, 0), the same convention as :mod:`ptychobench.data.product` — and the
object centre ``((W−1)/2 dx, (H−1)/2 dy)``, each cuts at every position exactly the patch we cut
(ours lands a coordinate on patch pixel ``N//2``, Ptychodus on ``(N−1)/2``: hence ``δ``).

Checked in ``tests/test_cxi.py`` with the installed readers: CDTools' pixel translations are
``(y − δ, x − δ)`` to 1e-14 px in float64 and to ~4e-6 px in its own float32 pipeline (it stores
wavelength, distance and translations as float32); its forward model on our truth, probe and
positions reproduces ``s²|F(P·Y)|²`` to ~2e-7 (relative L2; a 1-px shift gives ~0.12);
Ptychodus maps every position to object pixel ``x − δ`` and cuts our patch to 1e-14 px.

Reading (:func:`read_cxi`)
--------------------------
Positions: our exact copies when present (they must agree with the metre translations to
1e-6 px); otherwise, from the file's geometry, ``x = −(û₁·T)/dx + δ``, ``y = −(û₀·T)/dy + δ``
(``û₀, û₁`` the unit detector basis rows; this is CDTools' projection, and for the default basis
``x = T_x/dx + δ``), shifted by a whole number of pixels so that ``min x, min y ∈ [N//2, N//2+1)``
(recorded in ``metadata["transformations"]``). λ comes from ``source_1/wavelength`` (CDTools'
first choice) else ``source_1/energy``; when both are given they must agree to 1e-5. Data:
integer data are counts; float data with ``quantity='intensity'`` are intensities; other
float data must hold integral values (counts);
our old files' ``data_1/data`` with ``quantity='amplitude'`` is read as amplitude. A foreign
probe (``source_1/illumination``, or a complex ``source_1/probe``) is on the photon scale, so
``metadata["scale"] = 1``; no probe gives ``probeGuess = None``. Refused, each in one line: a
detector mask with a flagged pixel, translations in pixels or without a geometry, pattern and
translation counts that differ, non-integer counts, missing data, corrupt HDF5.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychobench import __version__
from ptychobench.data.dataset import (
    DatasetError,
    PtychoDataset,
    metadata_json,
    parse_metadata,
    photon_probe,
    validate,
)
from ptychobench.data.io import _canonical, _check_exists, atomic_path
from ptychobench.physics.geometry import (
    EV_J,
    Geometry,
    energy_ev_from_wavelength,
    geometry_of,
    probe_centre_offset,
)

__all__ = [
    "CXI_VERSION",
    "coords_from_translation",
    "read_cxi",
    "translation_from_coords",
    "write_cxi",
]

log = logging.getLogger(__name__)

CXI_VERSION = 160

ENTRY = "/entry_1"
SOURCE = "/entry_1/instrument_1/source_1"
ENERGY = f"{SOURCE}/energy"
WAVELENGTH = f"{SOURCE}/wavelength"
ILLUMINATION = f"{SOURCE}/illumination"
OLD_PROBE = f"{SOURCE}/probe"  # our layout 1 (NeXus uses source_1/probe for the radiation)
DETECTOR = "/entry_1/instrument_1/detector_1"
DETECTOR_DATA = f"{DETECTOR}/data"
DISTANCE = f"{DETECTOR}/distance"
X_PIXEL = f"{DETECTOR}/x_pixel_size"
Y_PIXEL = f"{DETECTOR}/y_pixel_size"
BASIS = f"{DETECTOR}/basis_vectors"
CORNER = f"{DETECTOR}/corner_position"
MASK = f"{DETECTOR}/mask"
DATA = "/entry_1/data_1/data"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
TRANSLATION_LINKS = ("/entry_1/data_1/translation", f"{DETECTOR}/translation")
PROBE_IMAGE = "/entry_1/image_1"
OBJECT_IMAGE = "/entry_1/image_2"
PTYCHODUS = "/entry_1/ptychodus"
PB = "/entry_1/ptychobench"

#: CXI mask bit "pixel signal is above the background": not a bad pixel (as CDTools reads it).
_MASK_HAS_SIGNAL = 0x00001000
_METRES = ("", "m", "meter", "meters", "metre", "metres")
_PIXELS = ("pixel", "pixels", "px")
_CHUNK = 1024  # patterns per pass over the data (bounded float64 temporaries)
_PB_ARRAYS = ("xcoords", "ycoords", "probeGuess", "objectGuess", "Y", "groups")


# --------------------------------------------------------------------------------------------
# conventions (pure numbers)
# --------------------------------------------------------------------------------------------


def translation_from_coords(
    xcoords: np.ndarray, ycoords: np.ndarray, geometry: Geometry
) -> np.ndarray:
    """(n, 3) float64 CXI sample translations (m) of our pixel coordinates.

    ``T = ((x − δ) dx, (y − δ) dy, 0)`` with the object pixel ``dx, dy`` of ``geometry``; see the
    module docstring for why CDTools and Ptychodus then cut the patches we cut.
    """
    d = probe_centre_offset(geometry.N)
    x = np.asarray(xcoords, dtype=np.float64)
    y = np.asarray(ycoords, dtype=np.float64)
    return np.stack(
        [
            (x - d) * geometry.object_pixel_x_m,
            (y - d) * geometry.object_pixel_y_m,
            np.zeros_like(x),
        ],
        axis=-1,
    )


def _default_basis(geometry: Geometry) -> np.ndarray:
    """CXI default detector basis rows: first data axis along −y, second along −x."""
    return np.array(
        [[0.0, -geometry.detector_pixel_y_m, 0.0], [-geometry.detector_pixel_x_m, 0.0, 0.0]]
    )


def coords_from_translation(
    translation: np.ndarray, geometry: Geometry, basis: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Our (x, y) pixel coordinates (no re-origin) of CXI sample translations (m).

    ``x = −(û₁·T)/dx + δ``, ``y = −(û₀·T)/dy + δ`` with ``û₀, û₁`` the unit rows of the detector
    ``basis`` (default: the CXI default, which gives ``x = T_x/dx + δ``, ``y = T_y/dy + δ``).
    """
    t = np.asarray(translation, dtype=np.float64)
    if t.shape[-1] == 2:
        t = np.concatenate([t, np.zeros(t.shape[:-1] + (1,))], axis=-1)
    b = _default_basis(geometry) if basis is None else np.asarray(basis, dtype=np.float64)
    u0 = b[0] / np.linalg.norm(b[0])
    u1 = b[1] / np.linalg.norm(b[1])
    d = probe_centre_offset(geometry.N)
    x = -(t @ u1) / geometry.object_pixel_x_m + d
    y = -(t @ u0) / geometry.object_pixel_y_m + d
    return x, y


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _err(source: str, key: str, expected: str, found: object) -> DatasetError:
    return DatasetError(_one_line(f"{source}: key '{key}': expected {expected}, found {found}"))


def _counts_of(amp: np.ndarray) -> np.ndarray | None:
    """The integer counts behind float32 amplitudes (``rint(a²)``), or None if a value is not
    ``float32(sqrt(count))`` for any count (noiseless data)."""
    n = amp.shape[0]
    top = 0.0
    for start in range(0, n, _CHUNK):
        a = amp[start : start + _CHUNK]
        c = np.rint(np.square(a, dtype=np.float64))
        if not np.array_equal(np.sqrt(c).astype(np.float32), a):
            return None
        if c.size:
            top = max(top, float(c.max()))
    dtype = np.int32 if top < 2**31 else np.int64
    out = np.empty(amp.shape, dtype=dtype)
    for start in range(0, n, _CHUNK):
        out[start : start + _CHUNK] = np.rint(
            np.square(amp[start : start + _CHUNK], dtype=np.float64)
        )
    return out


def _geometry_for_write(ds: PtychoDataset, source: str) -> Geometry | None:
    try:
        return geometry_of(ds.metadata, ds.N)
    except (ValueError, TypeError) as exc:
        raise _err(source, "metadata.geometry", "a valid far-field geometry", exc) from None


def _scalar(group: Any, name: str, value: float, units: str | None = None) -> None:
    d = group.create_dataset(name, data=np.float64(value))
    if units:
        d.attrs["units"] = units


def _image(f: Any, path: str, data: np.ndarray, geometry: Geometry | None, description: str) -> Any:
    import h5py

    g = f.require_group(path)
    d = g.create_dataset("data", data=data)
    d.attrs["axes"] = "y:x"
    g.create_dataset("data_space", data=np.bytes_("real"))
    g.create_dataset("data_type", data=np.bytes_("amplitude"))
    g.create_dataset("description", data=np.bytes_(description))
    g.create_dataset("dimensionality", data=np.int64(2))
    if geometry is not None:
        H, W = data.shape
        size = g.create_dataset(
            "image_size",
            data=np.array([W * geometry.object_pixel_x_m, H * geometry.object_pixel_y_m, 0.0]),
        )
        size.attrs["units"] = "m"
        g["source_1"] = h5py.SoftLink(SOURCE)
        g["detector_1"] = h5py.SoftLink(DETECTOR)
    return d


def write_cxi(ds: PtychoDataset, path: str | os.PathLike[str]) -> None:
    """Validate and atomically write a dataset as a CXI 1.6 file (layout: module docstring).

    Parameters
    ----------
    ds : PtychoDataset
        With ``metadata["geometry"]`` for a file other tools can place (energy, distance,
        detector pixel); without one the file carries no metres (module docstring).
    path : path-like
        Destination, normally ending in ``.cxi``.

    Raises
    ------
    DatasetError
        If the dataset fails validation or its geometry is malformed (nothing is written).
    """
    import h5py

    source = str(path)
    validate(ds, source=source)
    geo = _geometry_for_write(ds, source)
    arrays = _canonical(ds)
    meta_text = metadata_json(ds.metadata, source=source)
    amp = arrays["diffraction"]
    n, N = ds.n, ds.N
    counts = _counts_of(amp)
    probe = None if ds.probeGuess is None else photon_probe(ds)
    if geo is None:
        log.warning(
            "%s: the dataset has no geometry (metadata['geometry']); the CXI file carries no "
            "metres (energy, detector, translations): other readers get the patterns but "
            "cannot place them",
            source,
        )

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
        f.create_dataset("number_of_entries", data=np.int64(1))
        entry = f.create_group(ENTRY)
        entry.create_dataset("program_name", data=np.bytes_(f"ptychobench {__version__}"))

        # -- detector data (counts or intensities), linked from data_1 --------------------
        det = f.require_group(DETECTOR)
        if counts is not None:
            d = det.create_dataset(
                "data", data=counts, chunks=(1, N, N), compression="gzip", shuffle=True
            )
            d.attrs["quantity"] = "counts"
            d.attrs["description"] = "photon counts per pixel (amplitude = sqrt(counts))"
        else:
            d = det.create_dataset("data", shape=(n, N, N), dtype=np.float64, chunks=(1, N, N))
            for start in range(0, n, _CHUNK):
                d[start : start + _CHUNK] = np.square(amp[start : start + _CHUNK], dtype=np.float64)
            d.attrs["quantity"] = "intensity"
            d.attrs["description"] = "noiseless intensity in photons (amplitude**2, float64)"
        if geo is not None:
            d.attrs["axes"] = "translation:y:x"
        f.require_group("/entry_1/data_1")["data"] = h5py.SoftLink(DETECTOR_DATA)

        # -- geometry: source, detector, translations ------------------------------------
        if geo is not None:
            src = f.require_group(SOURCE)
            _scalar(src, "energy", geo.energy_j, "J")
            _scalar(src, "wavelength", geo.wavelength_m, "m")
            _scalar(det, "distance", geo.detector_distance_m, "m")
            _scalar(det, "x_pixel_size", geo.detector_pixel_x_m, "m")
            _scalar(det, "y_pixel_size", geo.detector_pixel_y_m, "m")
            b = det.create_dataset("basis_vectors", data=_default_basis(geo))
            b.attrs["units"] = "m"
            corner = det.create_dataset(
                "corner_position",
                data=np.array(
                    [
                        (N // 2 + 0.5) * geo.detector_pixel_x_m,
                        (N // 2 + 0.5) * geo.detector_pixel_y_m,
                        geo.detector_distance_m,
                    ]
                ),
            )
            corner.attrs["units"] = "m"
            t = f.create_dataset(
                TRANSLATION, data=translation_from_coords(arrays["xcoords"], arrays["ycoords"], geo)
            )
            t.attrs["units"] = "m"
            t.attrs["description"] = (
                "sample translation (m); object pixel (row i, col j) is at (j*dx, i*dy) and "
                "translation ((x - d)*dx, (y - d)*dy, 0) cuts the patch whose pixel N//2 is "
                "at ptychobench coordinate (x, y), d = N//2 - (N - 1)/2"
            )
            for link in TRANSLATION_LINKS:
                f[link] = h5py.SoftLink(TRANSLATION)

        # -- probe (photon scale) and truth object ------------------------------------------
        if probe is not None:
            p, s, how = probe
            d = _image(
                f,
                PROBE_IMAGE,
                p,
                geo,
                "probe on the photon scale: sum |P|^2 = photons per "
                "pattern through a unit object (orthonormal FFT)",
            )
            d.attrs["photon_scale"] = s
            d.attrs["photon_scale_source"] = how
            f.require_group(SOURCE)["illumination"] = h5py.SoftLink(f"{PROBE_IMAGE}/data")
        if "objectGuess" in arrays:
            _image(
                f,
                OBJECT_IMAGE,
                arrays["objectGuess"],
                geo,
                "ground-truth object (complex transmission) in the scan's pixel frame",
            )
            if geo is not None:
                H, W = arrays["objectGuess"].shape
                pt = f.require_group(PTYCHODUS)
                _scalar(pt, "object_center_x_m", (W - 1) / 2 * geo.object_pixel_x_m)
                _scalar(pt, "object_center_y_m", (H - 1) / 2 * geo.object_pixel_y_m)

        # -- our exact arrays and provenance -----------------------------------------------
        pb = f.require_group(PB)
        pb.attrs["layout"] = 2
        pb.attrs["probe_centre_offset_px"] = probe_centre_offset(N)
        for key in _PB_ARRAYS:
            if key in arrays:
                pb.create_dataset(key, data=arrays[key])
        pb.create_dataset("metadata", data=meta_text, dtype=h5py.string_dtype("utf-8"))


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_cxi(path: str | os.PathLike[str]) -> PtychoDataset:
    """Read and validate a CXI file: ours (any layout) or one CDTools, Ptychodus, ... wrote.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    PtychoDataset
        ``probeGuess`` is None when the file has no probe; ``metadata["geometry"]`` is the
        file's geometry (foreign files) or our metadata (our files).

    Raises
    ------
    DatasetError
        One line naming the file, the HDF5 path, what was expected and what was found.
    """
    import h5py

    p = Path(path)
    source = str(p)
    _check_exists(p)
    try:
        f = h5py.File(p, "r")
    except Exception as exc:
        raise DatasetError(
            _one_line(f"{source}: cannot read as CXI/HDF5 (corrupt or not HDF5): {exc}")
        ) from exc
    try:
        with f:
            return _read(f, source)
    except DatasetError:
        raise
    except Exception as exc:  # h5py errors on corrupt content
        raise DatasetError(_one_line(f"{source}: corrupt CXI/HDF5 content: {exc}")) from exc


def _node(f: Any, path: str, source: str) -> Any:
    """The HDF5 dataset at ``path`` (links followed), None if absent; a group is an error."""
    import h5py

    obj = f.get(path)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise _err(source, path, "an HDF5 dataset", "a group")
    return obj


def _attr(node: Any, name: str) -> str | None:
    value = node.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return str(value)


def _number(f: Any, path: str, source: str) -> float | None:
    node = _node(f, path, source)
    if node is None:
        return None
    value = np.asarray(node[()])
    if value.dtype.kind not in "iuf" or value.size < 1:
        raise _err(source, path, "a number", f"{value.dtype} of shape {value.shape}")
    flat = value.reshape(-1).astype(np.float64)
    if not np.all(flat == flat[0]):
        raise _err(source, path, "one value for the whole scan", f"{flat.size} different values")
    v = float(flat[0])
    if not (math.isfinite(v) and v > 0):
        raise _err(source, path, "a positive finite number", v)
    return v


def _file_geometry(f: Any, source: str, N: int) -> tuple[Geometry | None, np.ndarray | None, str]:
    """(geometry, basis rows or None, what is missing) from the source and detector groups."""
    missing = []
    energy_j = _number(f, ENERGY, source)
    wavelength = _number(f, WAVELENGTH, source)
    if wavelength is not None:  # what CDTools reads first; CDTools stores both as float32
        energy_ev = energy_ev_from_wavelength(wavelength)
        if energy_j is not None and not math.isclose(energy_j / EV_J, energy_ev, rel_tol=1e-5):
            raise _err(
                source,
                ENERGY,
                f"the photon energy of '{WAVELENGTH}' ({energy_ev:.9g} eV)",
                f"{energy_j / EV_J:.9g} eV",
            )
    elif energy_j is not None:
        energy_ev = energy_j / EV_J
    else:
        energy_ev = None
        missing.append(f"'{ENERGY}' or '{WAVELENGTH}'")

    basis = None
    bnode = _node(f, BASIS, source)
    if bnode is not None:
        b = np.asarray(bnode[()], dtype=np.float64)
        if b.shape == (3, 2):
            b = b.T
        if b.shape != (2, 3) or not np.isfinite(b).all():
            raise _err(source, BASIS, "a (2, 3) matrix of finite numbers", f"shape {b.shape}")
        norms = np.linalg.norm(b, axis=1)
        if not (norms > 0).all():
            raise _err(source, BASIS, "non-zero basis vectors", b.tolist())
        u = b / norms[:, None]
        if abs(u[0] @ u[1]) > 1e-9 or np.abs(u[:, 2]).max() > 1e-9:
            raise _err(
                source, BASIS, "orthogonal detector axes in the x-y plane (no tilt)", b.tolist()
            )
        basis = b
    px = _number(f, X_PIXEL, source)
    py = _number(f, Y_PIXEL, source)
    if basis is not None:
        bx, by = float(np.linalg.norm(basis[1])), float(np.linalg.norm(basis[0]))
        for path, given, implied in ((X_PIXEL, px, bx), (Y_PIXEL, py, by)):
            if given is not None and not math.isclose(given, implied, rel_tol=1e-6):
                raise _err(
                    source, path, f"the pixel size of '{BASIS}' ({implied:.9g} m)", f"{given} m"
                )
        px, py = bx, by
    elif px is None and py is None:
        missing.append(f"'{X_PIXEL}' / '{Y_PIXEL}' or '{BASIS}'")
    else:  # one given: square pixels, as CDTools assumes
        px = px if px is not None else py
        py = py if py is not None else px

    distance = _number(f, DISTANCE, source)
    if distance is None:
        corner = _node(f, CORNER, source)
        if corner is not None:
            c = np.asarray(corner[()], dtype=np.float64).reshape(-1)
            if c.size == 3 and math.isfinite(c[2]) and c[2] > 0:
                distance = float(c[2])
        if distance is None:
            missing.append(f"'{DISTANCE}'")
    if missing:
        return None, basis, ", ".join(missing)
    try:
        geo = Geometry(float(energy_ev), float(distance), float(px), float(py), int(N))
    except ValueError as exc:
        raise _err(source, DETECTOR, "a valid far-field geometry", exc) from None
    return geo, basis, ""


def _diffraction(f: Any, source: str) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(float32 amplitude, the path read, a transformation record)."""
    path = DATA if f.get(DATA) is not None else DETECTOR_DATA
    node = _node(f, path, source)
    if node is None:
        raise _err(source, DATA, f"the diffraction data (or '{DETECTOR_DATA}')", "missing")
    if node.ndim != 3 or node.shape[1] != node.shape[2] or node.shape[0] < 1:
        raise _err(source, path, "(n, N, N) square patterns, n >= 1", f"shape {node.shape}")
    quantity = (_attr(node, "quantity") or "").strip().lower()
    kind = node.dtype.kind
    if kind not in "iuf" and not (kind == "b"):
        raise _err(source, path, "real photon counts or intensities", f"dtype {node.dtype}")
    n = node.shape[0]
    out = np.empty(node.shape, dtype=np.float32)
    if quantity == "amplitude":  # our layout-1 files
        if kind != "f":
            raise _err(source, path, "float amplitudes (quantity='amplitude')", node.dtype)
        what = "amplitude"
    elif kind in "iub":
        what = "counts"
    elif quantity == "intensity":
        what = "intensity"
    else:
        what = "counts"
    for start in range(0, n, _CHUNK):
        block = np.asarray(node[start : start + _CHUNK])
        b64 = block.astype(np.float64)
        finite = np.isfinite(b64)
        if not finite.all():
            i = np.unravel_index(int(np.argmin(finite)), b64.shape)
            idx = (i[0] + start, int(i[1]), int(i[2]))
            raise _err(source, path, "finite values", f"{b64[i]} at index {idx}")
        if b64.size and float(b64.min()) < 0:
            i = np.unravel_index(int(np.argmin(b64)), b64.shape)
            idx = (int(i[0]) + start, int(i[1]), int(i[2]))
            raise _err(source, path, f"{what} >= 0", f"{b64[i]} at index {idx}")
        if what == "counts" and kind == "f":
            frac = b64 != np.rint(b64)
            if frac.any():
                i = np.unravel_index(int(np.argmax(frac)), b64.shape)
                idx = (int(i[0]) + start, int(i[1]), int(i[2]))
                raise _err(
                    source,
                    path,
                    "photon counts (integral values; float intensities need the attribute "
                    "quantity='intensity')",
                    f"non-integer value {float(b64[i])!r} at index {idx}",
                )
        if what == "amplitude":
            out[start : start + _CHUNK] = block.astype(np.float32)
        else:
            out[start : start + _CHUNK] = np.sqrt(b64).astype(np.float32)
    record = {
        "op": "cxi_data_to_amplitude",
        "path": path,
        "quantity": what,
        "source_dtype": str(node.dtype),
    }
    record["formula"] = "as is" if what == "amplitude" else "sqrt"
    return out, path, record


def _check_mask(f: Any, source: str, N: int) -> None:
    for path in (MASK, "/entry_1/data_1/mask"):
        node = _node(f, path, source)
        if node is None:
            continue
        m = np.asarray(node[()])
        if m.shape[-2:] != (N, N) or m.dtype.kind not in "iub":
            raise _err(source, path, f"an ({N}, {N}) integer pixel mask", f"{m.dtype} {m.shape}")
        flagged = (m.astype(np.uint64) & ~np.uint64(_MASK_HAS_SIGNAL)) != 0
        if flagged.any():
            i = tuple(int(k) for k in np.unravel_index(int(np.argmax(flagged)), m.shape))
            raise _err(
                source,
                path,
                "no flagged pixels (ptychobench cannot yet exclude pixels from its losses)",
                f"{int(flagged.sum())} flagged pixel(s), first at {i} (value {int(m[i])})",
            )


def _probe(f: Any, source: str, N: int, own: bool) -> tuple[np.ndarray | None, str | None]:
    """(probe, path) — our exact copy, else our layout-1 probe, else a foreign illumination."""
    candidates = [f"{PB}/probeGuess"] if own else []
    candidates += [OLD_PROBE] if own else [ILLUMINATION, OLD_PROBE]
    for path in candidates:
        node = _node(f, path, source)
        if node is None:
            continue
        if node.dtype.kind != "c":
            if path == OLD_PROBE:  # NeXus: source_1/probe names the radiation ("x-ray")
                continue
            raise _err(source, path, "a complex probe", f"dtype {node.dtype}")
        a = np.asarray(node[()])
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim > 2:
            log.warning("%s: '%s' has %s probe modes; using the first", source, path, a.shape[:-2])
            a = a.reshape((-1,) + a.shape[-2:])[0]
        if a.shape != (N, N):
            raise _err(source, path, f"an ({N}, {N}) probe (the pattern size)", f"shape {a.shape}")
        return a.astype(np.complex64), path
    return None, None


def _translation(f: Any, source: str, n: int) -> tuple[np.ndarray | None, str, str]:
    """(translation (n, 3) or None, path, unit kind 'm' | 'pixel')."""
    for path in (TRANSLATION, *TRANSLATION_LINKS):
        node = _node(f, path, source)
        if node is None:
            continue
        t = np.asarray(node[()])
        if t.dtype.kind not in "iuf" or t.ndim != 2 or t.shape[1] not in (2, 3):
            raise _err(source, path, "an (n, 3) array of translations", f"{t.dtype} {t.shape}")
        if t.shape[0] != n:
            raise _err(source, path, f"{n} translations (one per pattern in the data)", t.shape[0])
        t = t.astype(np.float64)
        if not np.isfinite(t).all():
            raise _err(source, path, "finite translations", "NaN/Inf")
        if t.shape[1] == 2:
            t = np.concatenate([t, np.zeros((n, 1))], axis=1)
        units = (_attr(node, "units") or "").strip().lower()
        if units in _PIXELS:
            return t, path, "pixel"
        if units not in _METRES:
            raise _err(source, path, "translations in metres (CXI: SI units)", f"units {units!r}")
        return t, path, "m"
    return None, TRANSLATION, ""


def _as_float64(a: np.ndarray) -> np.ndarray:
    """Cast real floats to float64; anything else is left for ``validate`` to report."""
    return a.astype(np.float64, copy=False) if a.dtype.kind == "f" else a


def _read(f: Any, source: str) -> PtychoDataset:
    import h5py

    if not isinstance(f.get(ENTRY), h5py.Group):
        raise _err(source, ENTRY, "a CXI entry group", "missing")
    pb = f.get(PB)
    own = isinstance(pb, h5py.Group) and isinstance(pb.get("metadata"), h5py.Dataset)

    diffraction, data_path, data_record = _diffraction(f, source)
    n, N = diffraction.shape[0], diffraction.shape[1]
    _check_mask(f, source, N)
    geo, basis, missing = _file_geometry(f, source, N)
    t, t_path, units = _translation(f, source, n)

    if own:
        meta = parse_metadata(pb["metadata"].asstr()[()], source=source)
    else:
        meta = {"creator": f"CXI file {Path(source).name}", "transformations": []}
        program = _node(f, f"{ENTRY}/program_name", source)
        if program is not None:
            value = program[()]
            meta["program_name"] = value.decode() if isinstance(value, bytes) else str(value)
        if geo is not None:
            meta["geometry"] = geo.to_metadata()
        meta["transformations"].append(data_record)

    # -- positions -------------------------------------------------------------------------
    exact = {k: _node(f, f"{PB}/{k}", source) for k in ("xcoords", "ycoords")} if own else {}
    if own and exact["xcoords"] is not None and exact["ycoords"] is not None:
        x = np.asarray(exact["xcoords"][()])
        y = np.asarray(exact["ycoords"][()])
        if t is not None:
            if units == "pixel":  # layout 1: (x, y, 0) in object pixels
                tx, ty = t[:, 0], t[:, 1]
            elif geo is None:
                raise _err(
                    source,
                    t_path,
                    f"a geometry to check the metre translations ({missing})",
                    "none",
                )
            else:
                tx, ty = coords_from_translation(t, geo, basis)
            if x.shape != tx.shape or y.shape != ty.shape:
                raise _err(source, f"{PB}/xcoords", f"{n} positions", f"shape {x.shape}")
            dev = np.maximum(np.abs(tx - x), np.abs(ty - y))
            if not (dev <= 1e-6).all():
                i = int(np.argmax(np.where(np.isfinite(dev), dev, np.inf)))
                raise _err(
                    source,
                    t_path,
                    f"positions equal to '{PB}/xcoords, ycoords' to 1e-6 px",
                    f"a difference of {dev[i]:.3g} px at index {i}",
                )
    else:
        if t is None:
            raise _err(source, TRANSLATION, "the scan translations (n, 3) in metres", "missing")
        if units == "pixel" or geo is None:
            raise _err(
                source,
                t_path,
                "translations in metres with the geometry to convert them to pixels",
                "units 'pixel' (translations must be in metres)"
                if units == "pixel"
                else f"no geometry (missing {missing})",
            )
        x_raw, y_raw = coords_from_translation(t, geo, basis)
        kx = N // 2 - math.floor(float(x_raw.min()))
        ky = N // 2 - math.floor(float(y_raw.min()))
        x, y = x_raw + kx, y_raw + ky
        meta.setdefault("transformations", []).append(
            {
                "op": "cxi_translation_to_pixels",
                "path": t_path,
                "formula": "x = -(u1.T)/dx + d + kx, y = -(u0.T)/dy + d + ky",
                "d": probe_centre_offset(N),
                "origin_shift_px": [kx, ky],
                "object_pixel_m": [geo.object_pixel_x_m, geo.object_pixel_y_m],
            }
        )

    # -- probe ------------------------------------------------------------------------------
    probe, probe_path = _probe(f, source, N, own)
    if probe is None:
        log.info("%s: no probe in the file; reconstructing needs --probe FILE", source)
    elif not own:
        meta["scale"] = 1.0  # a CXI illumination is on the photon scale
        meta.setdefault("transformations", []).append({"op": "cxi_probe", "path": probe_path})

    extras: dict[str, np.ndarray | None] = {"objectGuess": None, "Y": None, "groups": None}
    if own:
        for key in extras:
            node = _node(f, f"{PB}/{key}", source)
            if node is not None:
                extras[key] = np.asarray(node[()])

    ds = PtychoDataset(
        diffraction=diffraction,
        probeGuess=probe,
        xcoords=_as_float64(x),
        ycoords=_as_float64(y),
        objectGuess=extras["objectGuess"],
        Y=extras["Y"],
        metadata=meta,
        groups=extras["groups"],
    )
    validate(ds, source=source)
    return ds
