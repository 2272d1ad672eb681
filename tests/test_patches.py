import pytest
import torch
from conftest import smooth_complex

from ptychobench.physics import extract_patches, normalise_overlay, overlay_patches


@pytest.mark.parametrize("method", ["fourier", "bilinear"])
def test_integer_extraction_matches_slicing(method):
    obj = torch.randn(50, 60, dtype=torch.complex64)
    coords = torch.tensor([[20.0, 25.0], [40.0, 9.0]])
    p = extract_patches(obj, coords, 16, method=method)
    assert torch.equal(p[0], obj[17:33, 12:28])
    # the coordinate lands on patch pixel (N//2, N//2)
    assert p[1, 8, 8] == obj[9, 40]


def test_outside_object_reads_zero():
    obj = torch.ones(20, 20, dtype=torch.complex64)
    p = extract_patches(obj, torch.tensor([[2.0, 2.0]]), 8, method="bilinear")
    assert p[0, :2].abs().sum() == 0 and p[0, 2:, 2:].abs().min() == 1


def test_subpixel_methods_agree_on_smooth_object():
    obj = smooth_complex(96, 96, sigma=5.0).to(torch.complex64)
    coords = torch.tensor([[40.3, 50.7], [47.5, 45.25]], dtype=torch.float64)
    a = extract_patches(obj, coords, 32, method="fourier")
    b = extract_patches(obj, coords, 32, method="bilinear")
    assert ((a - b).norm() / a.norm()) < 0.01


def test_fourier_extraction_matches_shifted_object():
    obj = smooth_complex(64, 64, sigma=3.0)
    from ptychobench.physics import shift_fourier

    p = extract_patches(obj, torch.tensor([[32.25, 30.5]], dtype=torch.float64), 16, margin=16)
    # patch(i, j) = obj(y=30.5-8+i, x=32.25-8+j) = shifted(obj, t=-frac)[22+i, 24+j]
    ref = shift_fourier(obj, torch.tensor([-0.25, -0.5], dtype=torch.float64))[22:38, 24:40]
    assert ((p[0] - ref).norm() / ref.norm()) < 1e-3


@pytest.mark.parametrize("method", ["fourier", "bilinear"])
def test_overlay_is_the_adjoint_of_extraction(method):
    torch.manual_seed(0)
    obj = torch.randn(40, 44, dtype=torch.complex128)
    coords = torch.tensor([[12.3, 15.6], [25.0, 20.0], [30.7, 28.1]], dtype=torch.float64)
    y = torch.randn(3, 12, 12, dtype=torch.complex128)
    lhs = torch.vdot(extract_patches(obj, coords, 12, method=method).reshape(-1), y.reshape(-1))
    canvas, _ = overlay_patches(y, coords, obj.shape, method=method)
    rhs = torch.vdot(obj.reshape(-1), canvas.reshape(-1))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_round_trip_reproduces_object_where_covered_integer():
    obj = torch.randn(48, 48, dtype=torch.complex64)
    xs = torch.arange(8.0, 41.0, 4.0)
    coords = torch.cartesian_prod(xs, xs)
    p = extract_patches(obj, coords, 16)
    canvas, weight = overlay_patches(p, coords, obj.shape)
    rec = normalise_overlay(canvas, weight)
    covered = weight > 0
    assert covered[0:48, 0:48].all()
    assert torch.allclose(rec[covered], obj[covered], atol=1e-6)


@pytest.mark.parametrize("method", ["fourier", "bilinear"])
def test_round_trip_reproduces_smooth_object_subpixel(method):
    obj = smooth_complex(80, 80, sigma=5.0).to(torch.complex64)
    g = torch.Generator().manual_seed(1)
    coords = 16 + 48 * torch.rand(200, 2, generator=g, dtype=torch.float64)
    p = extract_patches(obj, coords, 16, method=method)
    canvas, weight = overlay_patches(p, coords, obj.shape, method=method)
    rec = normalise_overlay(canvas, weight)
    interior = (slice(16, 64), slice(16, 64))
    assert (weight[interior] > 1).all()
    err = (rec[interior] - obj[interior]).norm() / obj[interior].norm()
    assert err < 0.015


def test_uncovered_pixels_are_exact_zeros():
    obj = torch.ones(40, 40, dtype=torch.complex64)
    coords = torch.tensor([[10.0, 10.0]])
    canvas, weight = overlay_patches(extract_patches(obj, coords, 8), coords, obj.shape)
    rec = normalise_overlay(canvas, weight)
    assert rec[20:, 20:].abs().sum() == 0 and torch.isfinite(rec.abs()).all()


def test_weight_counts_coverage():
    coords = torch.tensor([[10.0, 10.0], [12.0, 10.0]])
    _, w = overlay_patches(torch.zeros(2, 8, 8, dtype=torch.complex64), coords, (30, 30))
    assert w[10, 9] == 2 and w[10, 7] == 1 and w[10, 15] == 1 and w[10, 16] == 0


def test_bad_coords_shape():
    with pytest.raises(ValueError, match=r"expected shape \(B, 2\)"):
        extract_patches(torch.ones(10, 10, dtype=torch.complex64), torch.ones(3), 4)
    with pytest.raises(ValueError, match="one per patch"):
        overlay_patches(torch.ones(2, 4, 4), torch.ones(3, 2), (10, 10))
