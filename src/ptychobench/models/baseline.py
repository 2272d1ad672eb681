"""Supervised PtychoNN-style baseline: one diffraction pattern → one object patch (SPEC §5.2).

Architecture (widths ``(w1, w2, w3)`` from ``n_filters_scale``, see
:mod:`ptychobench.models.blocks`)::

    diffraction (B·C, 1, N, N) × input_scale ──► Encoder ConvPool(w1, w2, w3)  (B·C, w3, N/8, N/8)
        ├─► amplitude decoder ConvUp(w3, w2, w1), Conv(1) → amplitude_max · sigmoid
        └─► phase decoder     ConvUp(w3, w2, w1), Conv(1) → π · tanh            (B·C, N, N)

The network never sees positions: groups of C patterns (any square C, e.g. gs2 training data) are
flattened into B·C independent patterns (flat index ``b·C + c``), and offsets are ignored.

Loss: ``mean|A − |Y|| + mean|wrap(φ − angle(Y))|`` with the phase difference wrapped to (−π, π]
(``atan2(sin d, cos d)``), ``A`` and ``φ`` the decoders' outputs and ``Y`` the ground-truth
object patches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptychobench.models.blocks import Decoder, Encoder, ModelConfig, init_weights, widths

__all__ = ["Baseline", "flatten_patterns", "supervised_loss", "wrap_phase"]


def wrap_phase(d: torch.Tensor) -> torch.Tensor:
    """Wrap phases (radians) to (−π, π] via ``atan2(sin d, cos d)`` (gradient 1 almost everywhere).

    Parameters
    ----------
    d : torch.Tensor
        Real tensor, any shape.

    Returns
    -------
    torch.Tensor
        Same shape.
    """
    return torch.atan2(torch.sin(d), torch.cos(d))


def supervised_loss(
    amplitude: torch.Tensor, phase: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``MAE(amplitude, |Y|) + MAE(wrap(phase − angle(Y)))``.

    Parameters
    ----------
    amplitude, phase : torch.Tensor
        (P, N, N) real predictions.
    target : torch.Tensor
        (P, N, N) complex ground-truth patches ``Y``.

    Returns
    -------
    torch.Tensor
        Scalar float32.
    """
    target = target.to(torch.complex64)
    amp_err = (amplitude.float() - target.abs()).abs().mean()
    phase_err = wrap_phase(phase.float() - torch.angle(target)).abs().mean()
    return amp_err + phase_err


def flatten_patterns(diffraction: torch.Tensor, N: int) -> torch.Tensor:
    """(B, C, N, N) groups → (B·C, 1, N, N) single patterns (flat index ``b·C + c``).

    Parameters
    ----------
    diffraction : torch.Tensor
        (B, C, N, N) amplitudes; C must be a square (1, 4, 9, …).
    N : int
        Expected pattern side.

    Returns
    -------
    torch.Tensor
        (B·C, 1, N, N).

    Raises
    ------
    ValueError
        Wrong rank, wrong N, or a non-square channel count.
    """
    if diffraction.ndim != 4:
        raise ValueError(
            f"diffraction: expected shape (B, C, {N}, {N}) (groups of C patterns), "
            f"found {tuple(diffraction.shape)}"
        )
    B, C, H, W = diffraction.shape
    if (H, W) != (N, N):
        raise ValueError(f"diffraction: expected {N}×{N} patterns (model N = {N}), found {H}×{W}")
    g = math.isqrt(C)
    if C < 1 or g * g != C:
        raise ValueError(
            f"diffraction: {C} channels is not a square gridsize (expected C = gridsize² = 1, 4, "
            f"9, …; shape {tuple(diffraction.shape)})"
        )
    return diffraction.reshape(B * C, 1, N, N)


class Baseline(nn.Module):
    """Supervised PtychoNN-style network (see the module docstring).

    Parameters
    ----------
    config : ModelConfig
        ``kind`` must be ``"baseline"``.
    probe : torch.Tensor, optional
        Ignored (the baseline does not model the physics); accepted for a uniform
        :func:`ptychobench.models.build_model`.

    Attributes
    ----------
    kind : str
        ``"baseline"``.
    config : ModelConfig
    """

    kind = "baseline"

    def __init__(self, config: ModelConfig, probe: torch.Tensor | None = None) -> None:
        super().__init__()
        if config.kind != "baseline":
            raise ValueError(f"kind: Baseline needs kind 'baseline', found {config.kind!r}")
        self.config = config
        w1, w2, w3 = widths(config.n_filters_scale)
        self.encoder = Encoder(1, (w1, w2, w3))
        self.decoder_amplitude = Decoder(w3, (w3, w2, w1), 1)
        self.decoder_phase = Decoder(w3, (w3, w2, w1), 1)
        # per-pixel standardisation of the (scaled) input, set from the training data by
        # set_input_statistics; the identity until then. Most photons sit in the bright-field
        # disk, so without it the weak scattered signal that carries the object is drowned out
        # and training stalls at the mean patch.
        N = config.N
        self.register_buffer("input_mean", torch.zeros(N, N))
        self.register_buffer("input_std", torch.ones(N, N))
        init_weights(self)

    @torch.no_grad()
    def set_input_statistics(self, diffraction: torch.Tensor) -> None:
        """Per-pixel mean and std of ``diffraction · input_scale`` over training patterns.

        Parameters
        ----------
        diffraction : torch.Tensor
            (P, N, N) or (B, C, N, N) training amplitudes.
        """
        x = diffraction.reshape(-1, self.config.N, self.config.N).double()
        x = x * self.config.input_scale
        std = x.std(dim=0)
        # a floor keeps dark pixels (no photons ever) from being amplified to noise
        floor = 1e-2 * float(std.max()) if float(std.max()) > 0 else 1.0
        self.input_mean.copy_(x.mean(dim=0).float())
        self.input_std.copy_(std.clamp(min=floor).float())

    def forward(
        self, diffraction: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitude and phase of each flattened pattern.

        Parameters
        ----------
        diffraction : torch.Tensor
            (B, C, N, N) amplitudes, C a square.
        offsets : torch.Tensor, optional
            Ignored (the baseline never sees positions).

        Returns
        -------
        amplitude : torch.Tensor
            (B·C, N, N) float32 in (0, amplitude_max).
        phase : torch.Tensor
            (B·C, N, N) float32 in (−π, π).
        """
        x = flatten_patterns(diffraction, self.config.N) * self.config.input_scale
        x = (x - self.input_mean) / self.input_std
        z = self.encoder(x)
        amp = self.config.amplitude_max * torch.sigmoid(self.decoder_amplitude(z).float())
        phase = math.pi * torch.tanh(self.decoder_phase(z).float())
        return amp[:, 0], phase[:, 0]

    def loss_from_output(
        self, output: tuple[torch.Tensor, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Loss of a forward output against the batch (for DDP: ``loss_from_output(ddp(...))``).

        Parameters
        ----------
        output : tuple of torch.Tensor
            ``(amplitude, phase)`` from :meth:`forward`, each (B·C, N, N).
        batch : dict
            ``"Y"`` (B, C, N, N) complex ground-truth object patches.

        Returns
        -------
        torch.Tensor
            Scalar float32.
        """
        amp, phase = output
        if "Y" not in batch:
            raise ValueError("batch: the baseline needs ground-truth patches under key 'Y'")
        N = self.config.N
        Y = batch["Y"]
        if Y.numel() != amp.numel() or tuple(Y.shape[-2:]) != (N, N):
            raise ValueError(
                f"Y: expected {amp.shape[0]} patches of {N}×{N} (shape of the diffraction), "
                f"found {tuple(Y.shape)}"
            )
        return supervised_loss(amp, phase, Y.reshape(-1, N, N))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss of a batch.

        Parameters
        ----------
        batch : dict
            ``"diffraction"`` (B, C, N, N) float32, ``"Y"`` (B, C, N, N) complex64;
            ``"offsets"`` is ignored.

        Returns
        -------
        torch.Tensor
            Scalar: MAE(amplitude) + MAE(wrapped phase).
        """
        return self.loss_from_output(self(batch["diffraction"]), batch)

    @torch.no_grad()
    def predict(
        self, diffraction: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One object patch per pattern.

        Parameters
        ----------
        diffraction : torch.Tensor
            (B, C, N, N) amplitudes, C a square.
        offsets : torch.Tensor, optional
            Ignored.

        Returns
        -------
        torch.Tensor
            (B·C, N, N) complex64, centred on each pattern's own scan position.
        """
        amp, phase = self(diffraction)
        return torch.polar(amp, phase)
