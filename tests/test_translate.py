import pytest
import torch
from conftest import smooth_complex

from ptychobench.physics import shift, shift_bilinear, shift_fourier


def delta(H=32, W=40, y=10, x=12, dtype=torch.complex64):
    img = torch.zeros(H, W, dtype=dtype)
    img[y, x] = 1
    return img


@pytest.mark.parametrize("method", ["fourier", "bilinear"])
def test_positive_shift_moves_content_toward_plus_x_and_plus_y(method):
    out = shift(delta(), torch.tensor([3.0, 2.0]), method=method)
    peak = torch.nonzero(out.abs() > 0.5)
    assert peak.tolist() == [[12, 15]]  # (row 10+2, col 12+3)


def test_integer_shift_bilinear_is_bit_exact():
    img = torch.randn(32, 40, dtype=torch.complex64)
    out = shift_bilinear(img, (5.0, -3.0))
    expected = torch.zeros_like(img)
    expected[:-3, 5:] = img[3:, :-5]  # out(y, x) = in(y + 3, x - 5), zero fill
    assert torch.equal(out, expected)


def test_integer_shift_fourier_equals_roll():
    img = torch.randn(32, 40, dtype=torch.complex128)
    out = shift_fourier(img, (5.0, -3.0))
    assert torch.allclose(out, torch.roll(img, shifts=(-3, 5), dims=(0, 1)), atol=1e-12)


def test_real_input_stays_real():
    img = torch.rand(16, 16, dtype=torch.float64)
    out = shift_fourier(img, (1.0, 2.0))
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.roll(img, (2, 1), (0, 1)), atol=1e-12)


def test_fourier_and_bilinear_agree_on_smooth_images():
    img = smooth_complex(64, 64, sigma=6.0)
    t = torch.tensor([2.3, -1.6], dtype=torch.float64)
    a = shift_fourier(img, t)[8:-8, 8:-8]
    b = shift_bilinear(img, t)[8:-8, 8:-8]
    rel = (a - b).abs().norm() / a.abs().norm()
    assert rel < 0.01


def test_fourier_shift_is_unitary_and_invertible():
    img = torch.randn(2, 24, 24, dtype=torch.complex128)
    t = torch.tensor([[0.37, -4.2], [1.5, 0.25]], dtype=torch.float64)
    out = shift_fourier(img, t)
    assert torch.allclose(out.norm(), img.norm())
    assert torch.allclose(shift_fourier(out, -t), img, atol=1e-12)


def test_batched_shifts_apply_per_image():
    img = torch.stack([delta(), delta()])
    out = shift_bilinear(img, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert out[0, 10, 13].abs() == 1 and out[1, 11, 12].abs() == 1


def test_bilinear_half_pixel_splits_weight():
    out = shift_bilinear(delta(dtype=torch.float32), (0.5, 0.0))
    assert torch.allclose(out[10, 12:14], torch.tensor([0.5, 0.5]))


def test_bilinear_is_differentiable_in_shift():
    img = smooth_complex(32, 32, sigma=4.0)
    t = torch.tensor([0.3, 0.2], dtype=torch.float64, requires_grad=True)
    shift_bilinear(img, t).abs().square().sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown shift method"):
        shift(delta(), (1.0, 1.0), method="cubic")
