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
