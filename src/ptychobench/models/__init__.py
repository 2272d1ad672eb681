"""Models: PtychoPINN (physics-informed) and the supervised PtychoNN-style baseline (SPEC §5).

Model protocol (both kinds are ``torch.nn.Module``):

* ``model.kind`` (``"pinn"`` | ``"baseline"``) and ``model.config`` (:class:`ModelConfig`;
  ``model.config.model_dump(mode="json")`` goes into a bundle's ``config.json["model"]``);
* ``model.loss(batch) -> scalar`` with ``batch["diffraction"]`` (B, C, N, N) float32 amplitudes,
  ``batch["offsets"]`` (B, C, 2) member − group centre (x, y) px and, for the baseline,
  ``batch["Y"]`` (B, C, N, N) complex64 ground-truth patches;
* ``model(diffraction, offsets)`` → training output and ``model.loss_from_output(output, batch)``
  (``loss(batch) == loss_from_output(model(d, o), batch)``; use this split under DDP, whose
  gradient hooks need the wrapper's ``forward``);
* ``model.predict(diffraction, offsets) -> (B', N, N) complex64`` (no grad): PINN gs1 one patch
  per pattern, PINN gs2 one patch per group centred on the group centre, baseline one patch per
  pattern (B' = B·C, offsets ignored).

:func:`build_model` rebuilds either model from its config dict; :func:`count_parameters` and
:func:`flops_per_pattern` give the cost figures the report quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ptychobench.models.baseline import Baseline
from ptychobench.models.blocks import ModelConfig, decoder_flops, encoder_flops, widths
from ptychobench.models.pinn import PtychoPINN

__all__ = [
    "Baseline",
    "ModelConfig",
    "PtychoPINN",
    "build_model",
    "count_parameters",
    "conv_flops",
    "flops_per_pattern",
]


def _as_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"model config: expected a dict or ModelConfig, found {type(config)!r}")
    return ModelConfig.model_validate(dict(config))


def build_model(
    config: ModelConfig | Mapping[str, Any], probe: torch.Tensor | None = None
) -> nn.Module:
    """Build a PtychoPINN or a Baseline from its configuration.

    Parameters
    ----------
    config : dict or ModelConfig
        ``model.config.model_dump(mode="json")`` of a model (a bundle's ``config.json["model"]``).
    probe : torch.Tensor, optional
        (N, N) complex probe; required for ``kind="pinn"`` (its state dict holds it under
        ``probe``), ignored by the baseline.

    Returns
    -------
    torch.nn.Module
        A freshly initialised :class:`PtychoPINN` or :class:`Baseline` on the CPU.

    Raises
    ------
    pydantic.ValidationError
        (a ``ValueError``) naming the bad field: unknown kind, bad N, unknown key, ...
    ValueError
        PINN without a probe, or a probe of the wrong shape.
    """
    cfg = _as_config(config)
    if cfg.kind == "pinn":
        return PtychoPINN(cfg, probe)
    return Baseline(cfg, probe)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of real scalar parameters (a complex parameter counts twice).

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad`` (default). Buffers (e.g. a fixed probe) are
        never counted.

    Returns
    -------
    int
    """
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel() * (2 if p.is_complex() else 1)
    return total


def conv_flops(config: ModelConfig | Mapping[str, Any]) -> float:
    """Analytic conv FLOPs (2 × multiply-adds) of one network forward pass.

    One PINN forward consumes one group (C patterns); one baseline forward one pattern. Counted:
    every 3×3 convolution, ``2 · c_in · c_out · 9 · H_out · W_out``; not counted: biases,
    activations, pooling, upsampling, the gs2 merge, the probe product and the FFT.

    Parameters
    ----------
    config : dict or ModelConfig

    Returns
    -------
    float
    """
    cfg = _as_config(config)
    w1, w2, w3 = widths(cfg.n_filters_scale)
    N = cfg.N
    if cfg.kind == "pinn":
        C = cfg.channels
        if cfg.channel_mode == "shared":  # the single-channel network runs once per pattern
            enc = C * encoder_flops(1, (w1, w2, w3), N)
            dec = C * decoder_flops(w3, (w2, w1), 1, N // 8)
        else:
            enc = encoder_flops(C, (w1, w2, w3), N)
            dec = decoder_flops(w3, (w2, w1), C, N // 8)
    else:
        enc = encoder_flops(1, (w1, w2, w3), N)
        dec = decoder_flops(w3, (w3, w2, w1), 1, N // 8)
    return enc + 2 * dec


def flops_per_pattern(config: ModelConfig | Mapping[str, Any]) -> float:
    """Analytic conv FLOPs per diffraction pattern: :func:`conv_flops` / patterns per forward.

    The PINN divides by C = gridsize² (one forward handles a group), the baseline by 1.

    Parameters
    ----------
    config : dict or ModelConfig

    Returns
    -------
    float
        FLOPs (multiply-adds × 2) per pattern.
    """
    cfg = _as_config(config)
    per_forward = conv_flops(cfg)
    return per_forward / (cfg.channels if cfg.kind == "pinn" else 1)
