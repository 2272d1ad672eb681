import numpy as np
import pytest
import torch


def smooth_complex(H: int, W: int, seed: int = 0, sigma: float = 3.0) -> torch.Tensor:
    """A smooth (nearly band-limited, periodic) random complex image (H, W) complex128."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(H)[:, None]
    kx = np.fft.fftfreq(W)[None, :]
    filt = np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    spec = (rng.normal(size=(H, W)) + 1j * rng.normal(size=(H, W))) * filt
    img = np.fft.ifft2(spec)
    img /= np.abs(img).max()
    return torch.from_numpy(img)


@pytest.fixture
def smooth():
    return smooth_complex


def make_dataset(n=12, N=8, H=40, W=48, seed=0, metadata=None):
    """Small valid PtychoDataset with every optional key (shared by the data-layer tests)."""
    from ptychobench.data.dataset import SCHEMA_VERSION, PtychoDataset

    rng = np.random.default_rng(seed)
    meta = {"schema_version": SCHEMA_VERSION, "creator": "test", "transformations": []}
    return PtychoDataset(
        diffraction=rng.random((n, N, N), dtype=np.float32),
        probeGuess=(rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(
            np.complex64
        ),
        xcoords=rng.uniform(N / 2, W - 1 - N / 2, n),
        ycoords=rng.uniform(N / 2, H - 1 - N / 2, n),
        objectGuess=np.exp(1j * rng.uniform(-1, 1, (H, W))).astype(np.complex64),
        Y=np.exp(1j * rng.uniform(-1, 1, (n, N, N))).astype(np.complex64),
        metadata=meta if metadata is None else metadata,
        groups=np.arange(n, dtype=np.int64)[:, None],
    )


ARRAY_KEYS = ("diffraction", "probeGuess", "xcoords", "ycoords", "objectGuess", "Y", "groups")


def assert_same(a, b) -> None:
    """Two datasets hold bit-identical arrays (dtype, shape, bytes) and equal metadata."""
    for key in ARRAY_KEYS:
        x, y = getattr(a, key), getattr(b, key)
        if x is None:
            assert y is None, key
            continue
        assert x.dtype == y.dtype, key
        assert x.shape == y.shape, key
        # bitwise, not just numerically equal
        assert x.tobytes() == y.tobytes(), key
    assert a.metadata == b.metadata
