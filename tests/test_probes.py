"""Tests for ptychobench.physics.probes: shapes, normalisation, sizes against analytic values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ptychobench.physics import probes
from ptychobench.physics.probes import (
    ProbeInfo,
    disk,
    fly64,
    gaussian,
    make_probe,
    probe_info,
)


def _radial_profile(intensity: np.ndarray) -> np.ndarray:
    """Azimuthal mean of intensity in 1-px rings around (N//2, N//2), normalised to the centre."""
    N = intensity.shape[0]
    y, x = np.indices(intensity.shape)
    r = np.rint(np.hypot(x - N // 2, y - N // 2)).astype(int).ravel()
    profile = np.bincount(r, intensity.ravel()) / np.bincount(r)
    return profile / profile[0]


def _support_diameter(probe: np.ndarray, threshold: float = 1e-3) -> float:
    """Equal-area diameter of the region where |P| > threshold * max |P|, px."""
    amp = np.abs(probe)
    return float(2 * np.sqrt(np.count_nonzero(amp > threshold * amp.max()) / np.pi))


@pytest.mark.parametrize("name", ["fly64", "gaussian", "disk"])
@pytest.mark.parametrize("N", [64, 128])
def test_unit_max_dtype_and_centroid(name: str, N: int) -> None:
    probe = make_probe(name, N)
    assert probe.shape == (N, N)
    assert probe.dtype == np.complex64
    assert np.abs(probe).max() == 1.0
    # Global phase removed: the peak is exactly 1 + 0j.
    assert probe.flat[np.argmax(np.abs(probe))] == 1.0 + 0.0j
    cy, cx = ndimage.center_of_mass(np.abs(probe) ** 2)
    assert abs(cy - N // 2) < 0.5
    assert abs(cx - N // 2) < 0.5


@pytest.mark.parametrize("N", [64, 128])
def test_fly64_has_weak_rings(N: int) -> None:
    profile = _radial_profile(np.abs(fly64(N)) ** 2)
    # First local minimum after the core, then a secondary maximum (the first ring).
    d = np.diff(profile)
    first_min = int(np.argmax(d > 0))  # first index where the profile starts rising again
    assert first_min > 0, "radial profile never rises: no ring"
    ring = first_min + int(np.argmax(profile[first_min:]))
    assert profile[ring] > profile[first_min]
    assert 1e-3 < profile[ring] < 0.2, profile[ring]


@pytest.mark.parametrize("N", [64, 128])
def test_fly64_phase_curved_across_core(N: int) -> None:
    probe = fly64(N)
    fwhm = probe_info(probe).fwhm_px
    c = N // 2
    # Global phase is already removed (centre is 1 + 0j); compare centre with r ≈ FWHM.
    r = int(round(fwhm))
    ring_values = [probe[c, c + r], probe[c, c - r], probe[c + r, c], probe[c - r, c]]
    dphi = [abs(np.angle(v * np.conj(probe[c, c]))) for v in ring_values]
    assert min(dphi) > 0.1, dphi
    # Radial symmetry: the four directions agree.
    assert np.ptp(dphi) < 1e-3


@pytest.mark.parametrize("N", [64, 128])
def test_fly64_support_diameter(N: int) -> None:
    diameter = _support_diameter(fly64(N))
    assert 0.35 * N <= diameter <= 0.5 * N, diameter


def test_fly64_effective_diameter_range_and_scaling() -> None:
    info64 = probe_info(fly64(64))
    info128 = probe_info(fly64(128))
    assert 18 <= info64.effective_diameter_px <= 28
    assert info128.effective_diameter_px / info64.effective_diameter_px == pytest.approx(
        2.0, rel=0.03
    )
    assert info128.fwhm_px / info64.fwhm_px == pytest.approx(2.0, rel=0.03)
    # The rings carry energy: effective diameter is well above the core FWHM.
    assert info64.effective_diameter_px > 2 * info64.fwhm_px


def test_fly64_is_deterministic() -> None:
    np.testing.assert_array_equal(fly64(64), fly64(64))


@pytest.mark.parametrize("fwhm", [5.0, 8.0, 12.8, 20.0])
def test_gaussian_sizes_match_analytic(fwhm: float) -> None:
    info = probe_info(gaussian(64, fwhm_px=fwhm))
    # Amplitude sigma s; intensity sigma s/√2; FWHM = 2√(2 ln 2) s/√2; 1/e² diameter = 2√2 s.
    s = fwhm / (2 * np.sqrt(np.log(2)))
    assert 2 * np.sqrt(2 * np.log(2)) * s / np.sqrt(2) == pytest.approx(fwhm)
    assert info.fwhm_px == pytest.approx(fwhm, rel=0.02)
    assert info.effective_diameter_px == pytest.approx(2 * np.sqrt(2) * s, rel=0.02)


def test_gaussian_default_size_is_similar_to_fly64() -> None:
    for N in (64, 128):
        g = probe_info(gaussian(N)).effective_diameter_px
        f = probe_info(fly64(N)).effective_diameter_px
        assert 0.3 * N <= g <= 0.4 * N
        assert g == pytest.approx(f, rel=0.15)


def test_gaussian_phase_is_flat() -> None:
    probe = gaussian(64)
    assert np.all(probe.imag == 0)
    assert np.all(probe.real >= 0)


@pytest.mark.parametrize("blur", [0.0, 1.0])
@pytest.mark.parametrize("diameter", [12.0, 21.76, 30.0])
def test_disk_diameter(diameter: float, blur: float) -> None:
    probe = disk(64, diameter_px=diameter, blur_px=blur)
    info = probe_info(probe)
    # Half intensity = amplitude 1/√2. A straight edge blurred with sigma b crosses it 0.545 b
    # inside the aperture edge; unblurred, the 1-px anti-aliasing ramp crosses it √0.5 - 0.5 px
    # inside. Edge curvature moves it in a little more (covered by the tolerance).
    expected = diameter - 2 * (0.545 * blur if blur > 0 else np.sqrt(0.5) - 0.5)
    assert info.fwhm_px == pytest.approx(expected, rel=0.03)
    # Uniform disk: 86.5 % of the energy lies inside sqrt(0.865) of the diameter.
    assert info.effective_diameter_px == pytest.approx(np.sqrt(1 - np.exp(-2)) * diameter, rel=0.05)


def test_disk_hard_edge_and_default() -> None:
    hard = disk(64, diameter_px=20.0, blur_px=0.0)
    r = np.hypot(*(np.indices((64, 64)) - 32))
    assert np.all(np.abs(hard)[r <= 9.5] == 1.0)
    assert np.all(np.abs(hard)[r >= 10.5] == 0.0)
    default = probe_info(disk(64)).effective_diameter_px
    assert 0.3 * 64 <= default <= 0.4 * 64


def test_probe_info_is_a_frozen_dataclass() -> None:
    info = probe_info(gaussian(64))
    assert isinstance(info, ProbeInfo)
    with pytest.raises(AttributeError):
        info.fwhm_px = 1.0  # type: ignore[misc]


def test_probe_info_works_off_centre_and_on_real_input() -> None:
    centred = probe_info(gaussian(64, fwhm_px=8.0))
    shifted = probe_info(np.roll(np.abs(gaussian(64, fwhm_px=8.0)), (5, -7), axis=(0, 1)))
    assert shifted.fwhm_px == pytest.approx(centred.fwhm_px, rel=1e-6)
    assert shifted.effective_diameter_px == pytest.approx(centred.effective_diameter_px, rel=1e-3)


def test_probe_info_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        probe_info(np.ones(8))
    with pytest.raises(ValueError, match="zero"):
        probe_info(np.zeros((8, 8), np.complex64))
    bad = np.ones((8, 8), np.complex64)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe_info(bad)


def test_unknown_probe_name() -> None:
    with pytest.raises(ValueError) as err:
        make_probe("foo", 64)
    message = str(err.value)
    assert "unknown probe 'foo'" in message
    for name in probes.PROBE_NAMES:
        assert name in message
    assert ".npz/.cxi" in message


@pytest.mark.parametrize("bad", [0, 4, 7.5, True])
def test_bad_size_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="N must be"):
        gaussian(bad)  # type: ignore[arg-type]


def test_bad_parameters_rejected() -> None:
    with pytest.raises(ValueError, match="fwhm_px"):
        gaussian(64, fwhm_px=-1.0)
    with pytest.raises(ValueError, match="diameter_px"):
        disk(64, diameter_px=100.0)
    with pytest.raises(ValueError, match="blur_px"):
        disk(64, blur_px=-1.0)


def _outside(probe: np.ndarray, radius: float) -> float:
    """Fraction of the intensity beyond ``radius`` px from pixel (N//2, N//2)."""
    N = probe.shape[0]
    y, x = np.indices(probe.shape)
    inten = np.abs(probe) ** 2
    return float(inten[np.hypot(x - N // 2, y - N // 2) > radius].sum() / inten.sum())


@pytest.mark.parametrize("N", [64, 128])
def test_kb_is_wide_tailed_separable_and_centred(N: int) -> None:
    probe = make_probe("kb", N)
    assert probe.shape == (N, N) and probe.dtype == np.complex64
    assert probe[N // 2, N // 2] == 1.0 + 0.0j  # the peak, on the scan position's pixel
    # tails: a sixth of the intensity lies beyond N/4 (fly64's taper leaves none there) and the
    # window edge is still lit, which is what makes it the yardstick's hard case
    assert 0.10 < _outside(probe, N / 4) < 0.25
    assert _outside(fly64(N), N / 4) == 0.0
    assert np.abs(probe[0]).max() > 1e-2
    # two mirrors: a rank-one field, a different focus per axis
    s = np.linalg.svd(probe.astype(np.complex128), compute_uv=False)
    assert s[1] / s[0] < 1e-5
    inten = np.abs(probe) ** 2
    assert inten[:, N // 2].sum() > 1.5 * inten[N // 2, :].sum()  # the shorter pupil: wider in y
    info = probe_info(probe)
    assert info.effective_diameter_px > 1.4 * probe_info(fly64(N)).effective_diameter_px


def test_kb_scales_with_n_and_is_deterministic() -> None:
    a, b = probe_info(make_probe("kb", 64)), probe_info(make_probe("kb", 128))
    assert b.fwhm_px / a.fwhm_px == pytest.approx(2.0, rel=0.03)
    assert b.effective_diameter_px / a.effective_diameter_px == pytest.approx(2.0, rel=0.03)
    np.testing.assert_array_equal(make_probe("kb", 64), make_probe("KB", 64))
