"""Sub-pixel translation of (complex) images.

Sign convention (SPEC §2): ``shift(img, t)`` returns ``out(x) = in(x - t)``, so a positive ``t``
moves content toward +x (right, increasing column) and +y (down, increasing row). ``t`` is ordered
``(x, y)`` = (column, row).

Two implementations:

* :func:`shift_fourier` multiplies the spectrum by a phase ramp. Exact for band-limited periodic
  images; content wraps around the borders.
* :func:`shift_bilinear` interpolates the 4 integer neighbours with zero fill outside the image
  (no wrap). Differentiable in both the image and ``t``; used inside networks.

Both are exact for integer ``t`` (up to float rounding for the Fourier version).
"""

from __future__ import annotations

import math

import torch

__all__ = ["shift", "shift_fourier", "shift_bilinear", "bilinear_sample"]


def _as_shift(t: torch.Tensor | tuple[float, float], like: torch.Tensor) -> torch.Tensor:
    if like.is_complex():
        real_dtype = like.real.dtype
    elif like.is_floating_point():
        real_dtype = like.dtype
    else:
        real_dtype = torch.float32
    t = torch.as_tensor(t, device=like.device)
    # keep float64 shifts in float64: the phase ramp of a large shift needs the precision
    return t.to(torch.float64 if t.dtype == torch.float64 else real_dtype)


def shift_fourier(img: torch.Tensor, t: torch.Tensor | tuple[float, float]) -> torch.Tensor:
    """Translate by multiplying the 2-D spectrum with ``exp(-2πi k·t)``.

    Parameters
    ----------
    img : (..., H, W) real or complex tensor
    t : (..., 2) shift (x, y) in pixels, broadcastable against ``img.shape[:-2]``

    Returns
    -------
    (..., H, W) tensor of the input's dtype (real input gives the real part).
    """
    t = _as_shift(t, img)
    H, W = img.shape[-2:]
    ky = torch.fft.fftfreq(H, device=img.device, dtype=t.dtype)
    kx = torch.fft.fftfreq(W, device=img.device, dtype=t.dtype)
    tx = t[..., 0, None, None]
    ty = t[..., 1, None, None]
    ramp = torch.exp(-2j * math.pi * (kx * tx + ky[:, None] * ty))
    out = torch.fft.ifft2(torch.fft.fft2(img) * ramp)
    return out if img.is_complex() else out.real.to(img.dtype)


def bilinear_sample(img: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at real-valued pixel positions with bilinear weights and zero fill.

    Parameters
    ----------
    img : (H, W) real or complex tensor
    ys, xs : tensors of one common (broadcastable) shape S, row and column positions in pixels

    Returns
    -------
    tensor of shape S, ``img``'s dtype. Taps outside ``[0, H-1] x [0, W-1]`` contribute zero.
    """
    H, W = img.shape[-2:]
    ys, xs = torch.broadcast_tensors(ys, xs)
    y0f = torch.floor(ys)
    x0f = torch.floor(xs)
    wy = (ys - y0f).to(img.real.dtype if img.is_complex() else img.dtype)
    wx = (xs - x0f).to(wy.dtype)
    y0 = y0f.long()
    x0 = x0f.long()
    flat = img.reshape(-1)
    out = torch.zeros(ys.shape, dtype=img.dtype, device=img.device)
    for dy, dx, w in (
        (0, 0, (1 - wy) * (1 - wx)),
        (0, 1, (1 - wy) * wx),
        (1, 0, wy * (1 - wx)),
        (1, 1, wy * wx),
    ):
        yy = y0 + dy
        xx = x0 + dx
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).reshape(-1)
        vals = flat.index_select(0, idx).reshape(ys.shape)
        # integer shifts hit w == 0 for the far taps, so the result stays bit-exact
        out = out + torch.where(inside, vals * w, torch.zeros((), dtype=img.dtype))
    return out


def _shift_axis(
    img: torch.Tensor, base: torch.Tensor, frac: torch.Tensor, dim: int
) -> torch.Tensor:
    """Bilinear shift of (B, H, W) images along ``dim`` by ``base + frac`` (B,); zero fill."""
    size = img.shape[dim]
    ar = torch.arange(size, device=img.device)
    src0 = ar[None, :] - base[:, None]  # tap with weight (1 - frac)
    src1 = src0 - 1  # tap with weight frac
    shape = [img.shape[0], 1, 1]
    shape[dim] = size
    out = None
    for src, w in ((src0, 1 - frac), (src1, frac)):
        valid = ((src >= 0) & (src < size)).reshape(shape)
        idx = src.clamp(0, size - 1).reshape(shape).expand_as(img)
        vals = torch.gather(img, dim, idx)
        w = w.reshape(-1, 1, 1).to(vals.real.dtype if vals.is_complex() else vals.dtype)
        term = torch.where(valid, vals * w, torch.zeros((), dtype=img.dtype, device=img.device))
        out = term if out is None else out + term
    return out


def shift_bilinear(img: torch.Tensor, t: torch.Tensor | tuple[float, float]) -> torch.Tensor:
    """Translate with bilinear interpolation and zero fill (no wrap-around).

    Separable and batched: one gather per axis and tap, whatever the number of images.

    Parameters
    ----------
    img : (..., H, W) real or complex tensor
    t : (..., 2) shift (x, y) in pixels, broadcastable against ``img.shape[:-2]``

    Returns
    -------
    (..., H, W) tensor, ``out(x, y) = img(x - tx, y - ty)``.
    """
    t = _as_shift(t, img)
    H, W = img.shape[-2:]
    batch = torch.broadcast_shapes(img.shape[:-2], t.shape[:-1])
    img_b = img.expand(*batch, H, W).reshape(-1, H, W)
    t_b = t.expand(*batch, 2).reshape(-1, 2)
    base = torch.floor(t_b)
    frac = t_b - base
    base = base.long()
    out = _shift_axis(img_b, base[:, 0], frac[:, 0], dim=2)
    out = _shift_axis(out, base[:, 1], frac[:, 1], dim=1)
    return out.reshape(*batch, H, W)


def shift(
    img: torch.Tensor, t: torch.Tensor | tuple[float, float], method: str = "fourier"
) -> torch.Tensor:
    """Translate ``img`` by ``t`` = (x, y) pixels: ``out(x) = in(x - t)``.

    ``method`` is ``"fourier"`` (exact for band-limited images, periodic) or ``"bilinear"``.
    """
    if method == "fourier":
        return shift_fourier(img, t)
    if method == "bilinear":
        return shift_bilinear(img, t)
    raise ValueError(f"unknown shift method {method!r}: expected 'fourier' or 'bilinear'")
