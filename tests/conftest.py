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
