"""Tests for ptychobench.physics.objects: ranges, dtypes, determinism, specs and errors."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ptychobench.physics.objects import list_images, make_object

SPECS = ["lines", "grf", "image:camera+astronaut", "image:coins+brick"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("a_min, phi_max", [(0.5, np.pi / 2), (0.0, np.pi), (0.9, 0.3)])
def test_ranges_hold_exactly(spec: str, a_min: float, phi_max: float) -> None:
    obj = make_object(spec, 96, a_min=a_min, phi_max=phi_max, seed=3)
    assert obj.shape == (96, 96)
    assert obj.dtype == np.complex64
    amp = np.abs(obj).astype(np.float64)
    phase = np.angle(obj).astype(np.float64)
    # complex64 rounding is the only slack: the maps span the full ranges by construction.
    assert amp.min() == pytest.approx(a_min, abs=1e-6)
    assert amp.max() == pytest.approx(1.0, abs=1e-6)
    if phi_max < np.pi:
        assert phase.min() == pytest.approx(-phi_max, abs=1e-6)
        assert phase.max() == pytest.approx(phi_max, abs=1e-6)
    else:
        # ±π are the same complex number; check via the phasor instead.
        assert np.all(np.abs(phase) <= np.pi + 1e-6)
        assert np.min(obj.real / np.maximum(amp, 1e-12)) == pytest.approx(-1.0, abs=1e-6)
    assert np.all(np.abs(phase) <= phi_max + 1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_rectangular_shape(spec: str) -> None:
    obj = make_object(spec, (40, 72))
    assert obj.shape == (40, 72)
    assert obj.dtype == np.complex64
    assert np.all(np.isfinite(obj))


@pytest.mark.parametrize("spec", ["lines", "grf"])
def test_seeded_determinism(spec: str) -> None:
    a = make_object(spec, 64, seed=7)
    b = make_object(spec, 64, seed=7)
    c = make_object(spec, 64, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Correlation between different seeds is weak: they are genuinely different textures.
    r = np.corrcoef(np.abs(a).ravel(), np.abs(c).ravel())[0, 1]
    assert abs(r) < 0.5


@pytest.mark.parametrize("spec", ["lines", "grf"])
def test_amplitude_and_phase_are_independent_draws(spec: str) -> None:
    obj = make_object(spec, 128, seed=0)
    r = np.corrcoef(np.abs(obj).ravel(), np.angle(obj).ravel())[0, 1]
    assert abs(r) < 0.5
    # Both channels carry structure.
    assert np.abs(obj).std() > 0.05
    assert np.angle(obj).std() > 0.1


def test_lines_is_smooth_and_textured() -> None:
    amp = np.abs(make_object("lines", 128, a_min=0.0, seed=1)).astype(np.float64)
    # The G1 + 2G5 + 5G10 blur makes neighbouring pixels strongly correlated.
    r = np.corrcoef(amp[:, :-1].ravel(), amp[:, 1:].ravel())[0, 1]
    assert r > 0.9


def test_image_amplitude_and_phase_sources() -> None:
    obj = make_object("image:camera+astronaut", 128)
    swapped = make_object("image:astronaut+camera", 128)
    # The amplitude of one is the (rescaled) phase source of the other.
    m_amp = (np.abs(obj) - 0.5) / 0.5
    m_phase_swapped = (np.angle(swapped) / (np.pi / 2) + 1) / 2
    np.testing.assert_allclose(m_amp, m_phase_swapped, atol=1e-5)


def test_image_single_name_has_zero_phase() -> None:
    obj = make_object("image:moon", 64, a_min=0.2)
    assert np.all(np.angle(obj) == 0)
    assert np.abs(obj).min() == pytest.approx(0.2, abs=1e-6)


def test_image_spec_is_case_and_space_insensitive() -> None:
    np.testing.assert_array_equal(
        make_object(" Image:Camera + Astronaut ", 48), make_object("image:camera+astronaut", 48)
    )


def test_camera_astronaut_phase_std() -> None:
    # SPEC §2: camera+astronaut has phase std ≈ 0.9 rad (at the default phi_max = π/2), while
    # moon is mostly flat.
    std = float(np.angle(make_object("image:camera+astronaut", 392)).std())
    assert std == pytest.approx(0.92, abs=0.05)
    moon = float(np.angle(make_object("image:moon+moon", 392)).std())
    assert moon < 0.25


def test_list_images_load_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    names = list_images()
    assert names == sorted(names)
    assert {"camera", "astronaut", "moon", "coins", "brick"} <= set(names)

    def _no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    for name in names:
        obj = make_object(f"image:{name}+{name}", 16)
        assert obj.shape == (16, 16)
        assert np.all(np.isfinite(obj))


@pytest.mark.parametrize(
    "spec", ["foo", "image:", "image:nonexistent", "image:camera+nope", "image:a+b+c", "lines2"]
)
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        make_object(spec, 32)
    message = str(err.value)
    assert f"unknown object {spec!r}" in message
    assert "lines, lines:coupled, grf, image:A+B" in message
    assert "camera" in message and "astronaut" in message
    assert ".npz" in message


def _coupled_formula(m: np.ndarray) -> np.ndarray:
    """The PtychoPINN paper's phase of a lines map normalised to [0, 1]."""
    return np.pi * np.tanh((m - m.max() / 2) / (3 * m.mean()))


@pytest.mark.parametrize("a_min", [0.5, 0.2])
def test_lines_coupled_phase_is_the_paper_formula_of_the_amplitude(a_min: float) -> None:
    obj = make_object("lines:coupled", 128, a_min=a_min, seed=4)
    amp = np.abs(obj).astype(np.float64)
    phase = np.angle(obj).astype(np.float64)
    m = (amp - a_min) / (1 - a_min)
    # complex64 rounding of A and φ is the only slack.
    assert np.max(np.abs(phase - _coupled_formula(m))) < 1e-5
    # The amplitude map is the first draw of "lines" with the same seed (its amplitude map).
    plain = make_object("lines", 128, a_min=a_min, seed=4)
    np.testing.assert_allclose(amp, np.abs(plain), rtol=0, atol=1e-6)
    assert not np.allclose(phase, np.angle(plain), atol=1e-3)  # only the phase differs


@pytest.mark.parametrize("size", [96, (40, 72)])
@pytest.mark.parametrize("a_min", [0.5, 0.0, 0.9])
def test_lines_coupled_ranges(size: int | tuple[int, int], a_min: float) -> None:
    obj = make_object("lines:coupled", size, a_min=a_min, seed=3)
    assert obj.shape == ((size, size) if isinstance(size, int) else size)
    assert obj.dtype == np.complex64
    amp = np.abs(obj).astype(np.float64)
    phase = np.angle(obj).astype(np.float64)
    assert amp.min() == pytest.approx(a_min, abs=1e-6)
    assert amp.max() == pytest.approx(1.0, abs=1e-6)
    assert np.all(amp >= a_min - 1e-6) and np.all(amp <= 1 + 1e-6)
    assert np.all(np.abs(phase) < np.pi)
    assert phase.std() > 0.1


def test_lines_coupled_ignores_phi_max() -> None:
    # The phase is the paper's fixed formula, not scaled by phi_max.
    a = make_object("lines:coupled", 64, phi_max=0.3, seed=2)
    b = make_object("lines:coupled", 64, phi_max=np.pi, seed=2)
    assert a.tobytes() == b.tobytes()
    assert np.abs(np.angle(a)).max() > 0.3


def test_lines_coupled_seeded_determinism_and_spelling() -> None:
    a = make_object("lines:coupled", 64, seed=7)
    b = make_object("lines:coupled", 64, seed=7)
    c = make_object("lines:coupled", 64, seed=8)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert make_object(" Lines:COUPLED ", 64, seed=7).tobytes() == a.tobytes()


@pytest.mark.parametrize("spec", ["lines:bogus", "grf:coupled", "lines:", "GRF:x"])
def test_unknown_lines_grf_variant(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        make_object(spec, 32)
    message = str(err.value)
    assert repr(spec) in message
    assert "lines:coupled" in message
    assert "lines, lines:coupled, grf, image:A+B" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"a_min": 1.0}, "a_min"),
        ({"a_min": -0.1}, "a_min"),
        ({"phi_max": 0.0}, "phi_max"),
        ({"phi_max": 3.2}, "phi_max"),
    ],
)
def test_bad_ranges(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_object("grf", 32, **kwargs)


@pytest.mark.parametrize("size", [7, (32, 4), (32, 32, 32), 0, True])
def test_bad_size(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        make_object("grf", size)  # type: ignore[arg-type]
