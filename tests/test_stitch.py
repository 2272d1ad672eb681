import numpy as np
import pytest
import torch

from ptychobench.physics import extract_patches
from ptychobench.stitch import Stitcher, stitch


def truth(H=80, W=90, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((H, W)) * np.exp(1j * rng.random((H, W)))).astype(np.complex64)


def test_stitching_true_patches_reproduces_the_object_in_its_frame():
    obj = truth()
    xs, ys = np.meshgrid(np.arange(20.0, 71.0, 4.0), np.arange(20.0, 61.0, 4.0))
    coords = np.stack([xs.ravel(), ys.ravel()], -1)
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(coords), 32)
    img, cov = stitch(patches, coords, obj.shape, crop=8)
    covered = cov > 0
    # crop 8 at step 4 covers [x-4, x+4) around every position: a solid block
    assert covered[16:64, 16:72].all() and not covered[:16].any() and not covered[:, 72:].any()
    assert np.allclose(img[covered], obj[covered], atol=1e-6)
    assert np.all(img[~covered] == 0)


def test_chunked_equals_one_shot_and_origin_shifts_into_the_frame():
    obj = truth(seed=1)
    coords = np.random.default_rng(2).uniform(20, 60, size=(50, 2))
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(coords), 16)
    one, _ = stitch(patches, coords, obj.shape, crop=6)
    s = Stitcher(obj.shape, 16, 6, origin=tuple(coords.mean(0)))
    centred = coords - coords.mean(0)
    for i in range(0, 50, 7):
        s.add(patches[i : i + 7], centred[i : i + 7])
    two, _ = s.result()
    assert np.allclose(one, two, atol=1e-5)


@pytest.mark.parametrize("M", [0, -2, 17])
def test_crop_size_validated(M):
    with pytest.raises(ValueError, match="0 < M <= N=16"):
        stitch(np.zeros((1, 16, 16), np.complex64), np.zeros((1, 2)), (20, 20), crop=M)


def test_shape_errors():
    s = Stitcher((20, 20), 16, 4)
    with pytest.raises(ValueError, match="patches"):
        s.add(np.zeros((2, 8, 8), np.complex64), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="coords"):
        s.add(np.zeros((2, 16, 16), np.complex64), np.zeros((3, 2)))


# ------------------------------------------------------------------------- probe weighting


def _random_patches(B, N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((B, N, N)) * np.exp(1j * rng.random((B, N, N)))).astype(np.complex64)


def test_probe_weighting_with_a_uniform_probe_equals_flat_with_half_window_crop():
    N = 16
    patches = _random_patches(30, N)
    coords = np.random.default_rng(1).integers(10, 50, size=(30, 2)).astype(np.float64)
    probe = np.exp(1j * np.random.default_rng(2).random((N, N))).astype(np.complex64)  # |P| = 1
    flat, cov_flat = stitch(patches, coords, (60, 60), crop=N // 2)
    prob, cov_prob = stitch(patches, coords, (60, 60), crop=4, weighting="probe", probe=probe)
    np.testing.assert_allclose(prob, flat, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cov_prob, cov_flat, rtol=0, atol=1e-6)
    assert cov_flat.max() > 1  # patches do overlap


def test_probe_weighting_unlit_pixels_are_exact_zero_with_zero_coverage():
    N = 16
    yy, xx = np.mgrid[:N, :N]
    # lit disk of radius 3 around the patch centre: the window corners are dark
    probe = ((yy - N // 2) ** 2 + (xx - N // 2) ** 2 <= 9).astype(np.complex64)
    patches = _random_patches(2, N, seed=3) + 1.0
    coords = np.array([[20.0, 20.0], [23.0, 20.0]])
    img, cov = stitch(patches, coords, (40, 40), weighting="probe", probe=probe)
    # a window corner of patch 0 (probe 0 there, outside patch 1's disk)
    r, c = 20 - N // 2 + N // 4, 20 - N // 2 + N // 4
    assert img[r, c] == 0 and cov[r, c] == 0
    # outside every window
    assert img[0, 0] == 0 and cov[0, 0] == 0
    assert np.all(img[cov == 0] == 0)
    lit = cov > 0
    # a pixel lit by patch 0 only keeps patch 0's value exactly
    assert lit[20, 18] and img[20, 18] == pytest.approx(patches[0][8, 6], abs=1e-6)
    # the lit set is exactly the union of the two disks
    assert lit.sum() == 2 * np.count_nonzero(probe) - _disk_overlap(probe, 3)


def _disk_overlap(probe, dx):
    m = np.abs(probe) > 0
    return int(np.logical_and(m[:, dx:], m[:, :-dx]).sum())


def test_probe_weighting_of_two_overlapping_patches_is_the_analytic_weighted_average():
    N = 16
    yy, xx = np.mgrid[:N, :N].astype(np.float64)
    amp = np.exp(-((yy - N // 2) ** 2 + (xx - N // 2) ** 2) / (2 * 2.5**2))
    probe = (amp * np.exp(0.3j * xx)).astype(np.complex64)
    v1, v2 = 2.0 + 1.0j, -0.5 + 3.0j
    patches = np.stack([np.full((N, N), v1), np.full((N, N), v2)]).astype(np.complex64)
    coords = np.array([[20.0, 30.0], [23.0, 31.0]])  # (x, y)
    img, cov = stitch(patches, coords, (50, 50), weighting="probe", probe=probe)
    r, c = 31, 22  # object pixel (row y, col x)
    # patch pixel (i, j) of a patch at (x, y) is object pixel (y - N/2 + i, x - N/2 + j)
    i1, j1 = r - (30 - N // 2), c - (20 - N // 2)
    i2, j2 = r - (31 - N // 2), c - (23 - N // 2)
    peak = amp.max() ** 2
    w1, w2 = amp[i1, j1] ** 2 / peak, amp[i2, j2] ** 2 / peak
    assert 0 < w1 < w2 < 1  # both inside the N/2 window, unequal
    assert img[r, c] == pytest.approx((w1 * v1 + w2 * v2) / (w1 + w2), abs=1e-5)
    assert cov[r, c] == pytest.approx(w1 + w2, abs=1e-6)


def test_explicit_weight_maps_override_the_default_weight():
    N = 16
    patches = _random_patches(3, N, seed=4)
    coords = np.array([[20.0, 20.0], [24.0, 21.0], [22.0, 25.0]])
    rng = np.random.default_rng(5)
    w = rng.random((3, N, N)).astype(np.float32)
    s = Stitcher((45, 45), N, 4)
    s.add(patches, coords, weights=w)
    img, cov = s.result(min_weight=0.0)
    # reference: per-pixel Σ w·p / Σ w with integer placement
    num = np.zeros((45, 45), np.complex128)
    den = np.zeros((45, 45))
    for k, (x, y) in enumerate(coords.astype(int)):
        num[y - N // 2 : y + N // 2, x - N // 2 : x + N // 2] += w[k] * patches[k]
        den[y - N // 2 : y + N // 2, x - N // 2 : x + N // 2] += w[k]
    covered = den > 0
    np.testing.assert_allclose(cov, den, atol=1e-5)
    np.testing.assert_allclose(img[covered], num[covered] / den[covered], atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        s.add(patches, coords, weights=w[:2])


def test_weighting_names_and_probe_are_validated():
    with pytest.raises(ValueError) as e:
        Stitcher((20, 20), 16, 4, weighting="gaussian")
    assert str(e.value) == "stitch weighting: expected 'flat' or 'probe', found 'gaussian'"
    with pytest.raises(ValueError, match="stitch weighting 'probe': expected the probe"):
        stitch(np.zeros((1, 16, 16), np.complex64), np.zeros((1, 2)), (20, 20), weighting="probe")
    with pytest.raises(ValueError, match=r"expected a probe of shape \(16, 16\)"):
        Stitcher((20, 20), 16, 4, weighting="probe", probe=np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match="all zeros"):
        Stitcher((20, 20), 16, 4, weighting="probe", probe=np.zeros((16, 16), np.complex64))


# ------------------------------------------------------------------------ phase synchronisation


def _scrambled(seed=0, spread=np.pi):
    """True patches of a random object on a 4 px raster, each times its own random e^{iθ}."""
    obj = truth(seed=seed)
    xs, ys = np.meshgrid(np.arange(20.0, 71.0, 4.0), np.arange(20.0, 61.0, 4.0))
    coords = np.stack([xs.ravel(), ys.ravel()], -1)
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(coords), 32)
    theta = np.random.default_rng(seed + 10).uniform(-spread, spread, len(coords))
    rotated = patches * torch.from_numpy(np.exp(1j * theta).astype(np.complex64))[:, None, None]
    return obj, coords, rotated


def _error_up_to_one_global_phase(img, obj, covered):
    a, b = img[covered], obj[covered]
    g = np.vdot(a, b)
    return float(np.linalg.norm(a * g / abs(g) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("spread,iterations", [(1.0, 20), (np.pi, 300)])
def test_phase_sync_undoes_random_per_patch_phase_offsets(spread, iterations):
    obj, coords, rotated = _scrambled(spread=spread)
    plain, cov = stitch(rotated, coords, obj.shape, crop=12)
    synced, cov2 = stitch(rotated, coords, obj.shape, crop=12, phase_sync=iterations)
    covered = cov > 0
    assert np.array_equal(cov, cov2)  # the weights do not change, only the patches' phases
    err_plain = _error_up_to_one_global_phase(plain, obj, covered)
    err_sync = _error_up_to_one_global_phase(synced, obj, covered)
    assert err_plain > 0.25, err_plain
    # converged from any start given enough iterations; from a moderate one, 20 cut it 10-fold
    assert err_sync < (1e-3 if iterations >= 300 else 0.1 * err_plain), (err_plain, err_sync)


def test_phase_sync_leaves_consistent_patches_alone_and_zero_iterations_is_the_plain_stitch():
    obj = truth(seed=3)
    xs, ys = np.meshgrid(np.arange(20.0, 71.0, 4.0), np.arange(20.0, 61.0, 4.0))
    coords = np.stack([xs.ravel(), ys.ravel()], -1)
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(coords), 32)
    plain, cov = stitch(patches, coords, obj.shape, crop=12)
    synced, _ = stitch(patches, coords, obj.shape, crop=12, phase_sync=5)
    covered = cov > 0
    assert np.allclose(synced[covered], obj[covered], atol=1e-5)  # not even a global rotation
    zero, _ = stitch(patches, coords, obj.shape, crop=12, phase_sync=0)
    assert np.array_equal(zero, plain)


def test_phase_sync_with_probe_weights_keeps_unlit_pixels_zero():
    N = 16
    probe = np.zeros((N, N), np.complex64)
    probe[6:10, 6:10] = 1.0  # lights only the centre of the N/2 window
    obj, coords, rotated = _scrambled(seed=4)
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(coords), N)
    img, cov = stitch(patches, coords, obj.shape, weighting="probe", probe=probe, phase_sync=10)
    assert np.all(img[cov == 0] == 0) and np.all(cov[:10] == 0)
    assert (cov > 0).sum() > 0


def test_a_patch_that_overlaps_nothing_keeps_its_phase():
    from ptychobench.stitch import synchronise_phases

    p = torch.full((2, 4, 4), complex(0.0, 1.0), dtype=torch.complex64)
    w = torch.ones((2, 4, 4))
    c = torch.tensor([[5.0, 5.0], [30.0, 30.0]], dtype=torch.float64)
    out = synchronise_phases(p, w, c, (40, 40), iterations=3)
    assert torch.equal(out, p)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_phase_sync_iterations_are_validated(bad):
    with pytest.raises(ValueError, match="phase sync: expected an integer number of iterations"):
        Stitcher((10, 10), 8, 4, phase_sync=bad)
