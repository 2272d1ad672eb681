import math

import torch

from ptychobench.physics import amplitude, exit_wave, farfield, intensity


def test_parseval():
    torch.manual_seed(0)
    psi = torch.randn(5, 64, 64, dtype=torch.complex64)
    lhs = psi.abs().square().sum(dim=(-2, -1)).double()
    rhs = intensity(psi).sum(dim=(-2, -1)).double()
    assert torch.allclose(lhs, rhs, rtol=1e-5)


def test_dc_at_centre():
    psi = torch.ones(64, 64, dtype=torch.complex64)
    I = intensity(psi)
    assert I[32, 32] == I.max()
    assert math.isclose(float(I[32, 32]), 64 * 64, rel_tol=1e-6)
    assert float(I.sum() - I[32, 32]) < 1e-3


def test_tilt_moves_peak_in_the_detector_with_its_sign():
    N = 32
    x = torch.arange(N, dtype=torch.float64)
    # a plane wave exp(2πi·3x/N) diffracts to +3 columns from DC
    psi = torch.exp(2j * math.pi * 3 * x / N)[None, :].expand(N, N)
    peak = torch.nonzero(intensity(psi) > 0.5 * N * N).tolist()
    assert peak == [[16, 19]]


def test_translation_leaves_intensity_unchanged():
    torch.manual_seed(1)
    psi = torch.randn(32, 32, dtype=torch.complex128)
    assert torch.allclose(intensity(psi), intensity(torch.roll(psi, (3, -5), (0, 1))), atol=1e-9)


def test_amplitude_and_exit_wave():
    probe = torch.full((8, 8), 2.0, dtype=torch.complex64)
    obj = torch.full((3, 8, 8), 0.5j, dtype=torch.complex64)
    psi = exit_wave(probe, obj)
    assert torch.allclose(psi, torch.full_like(psi, 1j))
    assert torch.allclose(amplitude(psi).square(), intensity(psi))
    assert farfield(psi).shape == (3, 8, 8)


def test_differentiable():
    psi = torch.randn(2, 16, 16, dtype=torch.complex64, requires_grad=True)
    amplitude(psi).sum().backward()
    assert psi.grad is not None and torch.isfinite(psi.grad.abs()).all()
