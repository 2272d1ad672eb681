"""Shared model configuration, convolutional building blocks and analytic cost counts.

Both networks (:class:`~ptychobench.models.pinn.PtychoPINN` and
:class:`~ptychobench.models.baseline.Baseline`) are plain CNN autoencoders without skip
connections, built from two block types (the reference PtychoPINN's, SPEC §5.1):

``ConvPool(c_in, w)``
    Conv3×3(c_in → w, 'same') → ReLU → Conv3×3(w → w) → ReLU → MaxPool 2×2.
``ConvUp(c_in, w)``
    Conv3×3(c_in → w) → ReLU → Conv3×3(w → w) → ReLU → nearest Upsample ×2.

Widths come from ``n_filters_scale`` s: ``(w1, w2, w3) = (round(32 s), round(64 s), round(128 s))``,
each at least 4. The encoder is ``ConvPool(w1), ConvPool(w2), ConvPool(w3)`` (N → N/8); decoders
climb back with ``ConvUp`` blocks and end with one Conv3×3 to the output channels.

Initialisation follows the reference (Keras defaults): Glorot-uniform kernels, zero biases.

Cost counts (:func:`conv_flops`) are analytic: for each 3×3 convolution,
``2 · c_in · c_out · 9 · H_out · W_out`` (multiply-adds × 2); bias adds, activations, pooling,
upsampling, the gs2 merge and the FFT are not counted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

__all__ = [
    "ModelConfig",
    "ConvPool",
    "ConvUp",
    "Encoder",
    "Decoder",
    "widths",
    "encoder_flops",
    "decoder_flops",
    "init_weights",
    "count_conv_flops_measured",
]

KERNEL = 3
"""Side of every convolution kernel."""

MIN_WIDTH = 4
"""Smallest number of filters of any layer."""


class ModelConfig(BaseModel):
    """Everything that determines a model's architecture and its fixed scalars.

    ``model.config.model_dump(mode="json")`` is what a bundle stores under ``config.json["model"]``;
    :func:`ptychobench.models.build_model` rebuilds the model from it (the probe and the learned
    weights come from the bundle's state dict).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pinn", "baseline"] = Field(description="pinn = PtychoPINN, baseline = PtychoNN")
    N: int = Field(description="diffraction pattern / object patch side (px); multiple of 8, >= 16")
    gridsize: Literal[1, 2] = Field(
        1, description="patterns per group = gridsize²; the baseline always infers per pattern"
    )
    n_filters_scale: float = Field(
        1.0, gt=0.0, le=16.0, description="width factor s: filters round(32 s), round(64 s), …"
    )
    amplitude_max: float = Field(
        1.0, gt=0.0, description="amplitude decoder = amplitude_max · sigmoid"
    )
    input_scale: float = Field(
        1.0, gt=0.0, description="the network's first op multiplies diffraction by this"
    )
    intensity_scale: float = Field(
        1.0, gt=0.0, description="PINN: initial value of the learnable far-field amplitude scale"
    )
    intensity_scale_trainable: bool = True
    probe_trainable: bool = False
    loss: Literal["poisson", "mae"] = Field(
        "poisson", description="PINN loss: Poisson NLL on counts, or MAE on amplitude"
    )
    canvas_pad: int = Field(
        8, ge=0, le=4096, description="gs2 merge canvas side = N + 2 · canvas_pad (px)"
    )
    channel_mode: Literal["shared", "joint"] = Field(
        "shared",
        description="PINN gs2: shared = each pattern goes through the same single-channel "
        "network (C× the FLOPs per group) and the group is coupled by the physics merge; joint "
        "= the C patterns are the network's C channels (one network squeezes C patches through "
        "one bottleneck: measured worse, kept for comparison)",
    )
    merge_weighting: Literal["flat", "probe"] = Field(
        "flat",
        description="PINN gs2 merge weight of each member pixel: flat = the decoder's N/2 "
        "window (uniform), probe = window · |P|²/max|P|², the illumination that constrained "
        "the pixel (pty-chi's object-update weighting); bundles written before this field "
        "load as flat",
    )
    schema_version: Literal[1] = 1

    @field_validator("N")
    @classmethod
    def _check_n(cls, v: int) -> int:
        if v < 16 or v % 8 != 0:
            raise ValueError(
                f"N must be a multiple of 8 and >= 16 (64 or 128 are typical), found {v}"
            )
        return v

    @field_validator("n_filters_scale", "amplitude_max", "input_scale", "intensity_scale")
    @classmethod
    def _check_finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, found {v}")
        return v

    @property
    def channels(self) -> int:
        """Patterns per group, ``C = gridsize²``."""
        return self.gridsize * self.gridsize


def widths(n_filters_scale: float) -> tuple[int, int, int]:
    """Encoder widths ``(w1, w2, w3) = (round(32 s), round(64 s), round(128 s))``, each >= 4.

    Parameters
    ----------
    n_filters_scale : float
        Width factor ``s > 0``.

    Returns
    -------
    tuple of int
        ``(w1, w2, w3)``.
    """
    s = float(n_filters_scale)
    return tuple(max(MIN_WIDTH, round(base * s)) for base in (32, 64, 128))  # type: ignore[return-value]


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, KERNEL, padding=KERNEL // 2)


class ConvPool(nn.Sequential):
    """Conv3×3 → ReLU → Conv3×3 → ReLU → MaxPool 2×2: (B, c_in, H, W) → (B, w, H/2, W/2)."""

    def __init__(self, c_in: int, w: int) -> None:
        super().__init__(
            _conv(c_in, w),
            nn.ReLU(inplace=True),
            _conv(w, w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class ConvUp(nn.Sequential):
    """Conv3×3 → ReLU → Conv3×3 → ReLU → nearest Upsample ×2: (B, c_in, H, W) → (B, w, 2H, 2W)."""

    def __init__(self, c_in: int, w: int) -> None:
        super().__init__(
            _conv(c_in, w),
            nn.ReLU(inplace=True),
            _conv(w, w),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
        )


class Encoder(nn.Sequential):
    """``ConvPool`` ladder: (B, c_in, H, W) → (B, widths[-1], H / 2^k, W / 2^k), k = len(widths).

    Parameters
    ----------
    c_in : int
        Input channels.
    ladder : sequence of int
        Output width of each ``ConvPool`` block.
    """

    def __init__(self, c_in: int, ladder: tuple[int, ...]) -> None:
        blocks = []
        for w in ladder:
            blocks.append(ConvPool(c_in, w))
            c_in = w
        super().__init__(*blocks)
        self.out_channels = c_in


class Decoder(nn.Sequential):
    """``ConvUp`` ladder then a Conv3×3 to ``c_out`` (no activation).

    (B, c_in, h, w) → (B, c_out, h · 2^k, w · 2^k), k = len(ladder).

    Parameters
    ----------
    c_in : int
        Input channels.
    ladder : sequence of int
        Output width of each ``ConvUp`` block.
    c_out : int
        Output channels of the final convolution.
    """

    def __init__(self, c_in: int, ladder: tuple[int, ...], c_out: int) -> None:
        blocks: list[nn.Module] = []
        for w in ladder:
            blocks.append(ConvUp(c_in, w))
            c_in = w
        blocks.append(_conv(c_in, c_out))
        super().__init__(*blocks)


def init_weights(module: nn.Module) -> None:
    """Glorot-uniform kernels and zero biases for every ``Conv2d`` inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_cost(c_in: int, c_out: int, side: int) -> float:
    return 2.0 * c_in * c_out * KERNEL * KERNEL * side * side


def encoder_flops(c_in: int, ladder: tuple[int, ...], side: int) -> float:
    """Conv FLOPs (2 × multiply-adds) of :class:`Encoder` on one ``side × side`` input."""
    total = 0.0
    for w in ladder:
        total += _conv_cost(c_in, w, side) + _conv_cost(w, w, side)
        c_in, side = w, side // 2
    return total


def decoder_flops(c_in: int, ladder: tuple[int, ...], c_out: int, side: int) -> float:
    """Conv FLOPs (2 × multiply-adds) of :class:`Decoder` on one ``side × side`` input."""
    total = 0.0
    for w in ladder:
        total += _conv_cost(c_in, w, side) + _conv_cost(w, w, side)
        c_in, side = w, side * 2
    return total + _conv_cost(c_in, c_out, side)


def count_conv_flops_measured(model: nn.Module, *inputs: torch.Tensor) -> float:
    """Conv FLOPs of one forward pass, measured with hooks (a check of the analytic counts).

    Parameters
    ----------
    model : torch.nn.Module
    *inputs : torch.Tensor
        Arguments of ``model.forward``.

    Returns
    -------
    float
        Σ over ``Conv2d`` calls of ``2 · c_in · k_h · k_w · (batch · c_out · H_out · W_out)``.
    """
    total = [0.0]

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv2d)
        kh, kw = mod.kernel_size
        total[0] += 2.0 * mod.in_channels // mod.groups * kh * kw * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]
