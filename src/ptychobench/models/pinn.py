"""PtychoPINN: a physics-informed, unsupervised CNN for ptychography (SPEC §5.1).

Data flow for a batch of B groups of C = gridsize² patterns (shapes in brackets)::

    diffraction (B, C, N, N) ── × input_scale ──► Encoder: ConvPool(w1, w2, w3)   (B, w3, N/8, N/8)
        ├─► amplitude decoder: ConvUp(w2), ConvUp(w1), Conv(C) → amplitude_max · sigmoid
        └─► phase decoder:     ConvUp(w2), ConvUp(w1), Conv(C) → π · tanh        (B, C, N/2, N/2)
    object patches O = A · exp(iφ), zero-padded by N/4: support = central N/2 window (B, C, N, N)
    gs2 only: merge on a canvas of side S = N + 2·canvas_pad centred on the group centre
        (each patch times its weight map, and the weight map, shifted by +offset; canvas =
        Σ w·patches / Σ w where Σ w > 1e-3, exact zero elsewhere), then re-extract each member:
        shift by −offset, central N×N crop                                       (B, C, N, N)
    physics (float32, autocast off): Ψ = P · O;  Â = |fftshift(fft2(Ψ, ortho))| · exp(λ)
        — :func:`ptychobench.physics.forward_amplitude`, the simulator's own forward model

Offsets are ``member position − group centre`` (x, y) in object pixels, zero-mean per group; the
network never sees absolute positions. A member's patch is centred on the member position, so it
sits at ``shift(+offset)`` on a canvas centred on the group centre (positive t moves content
right/down, :func:`ptychobench.physics.shift_bilinear`).

Merge weight (``config.merge_weighting``, SPEC §5.4 "Weighting"): ``"flat"`` weights every pixel
of the decoder's N/2 window equally; ``"probe"`` weights it by ``window · |P|²/max|P|²``, the
member's own illumination in its own frame (moved with its patch), so window corners the probe
never lit do not dilute a neighbour's well-constrained pixels. The weight is computed from the
current probe, detached (a trainable probe gets no gradient through its weighting).

Loss (per pixel, mean over pixels, patterns and batch): Poisson NLL ``μ − n·log(μ + ε)`` with
``μ = Â²`` (predicted counts), ``n = diffraction²`` (measured counts) and ``ε = 1e-6`` (keeps the
log finite where the probe, and so ``μ``, vanishes; small against one photon), or ``|Â − d|``
(``loss="mae"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptychobench.models.blocks import Decoder, Encoder, ModelConfig, init_weights, widths
from ptychobench.physics import forward_amplitude, shift_bilinear
from ptychobench.stitch import probe_weight, support_window, validate_weighting

__all__ = [
    "POISSON_EPS",
    "MERGE_MIN_WEIGHT",
    "PtychoPINN",
    "central_window",
    "check_offsets",
    "extract_from_canvas",
    "merge_at_members",
    "merge_patches",
    "poisson_nll",
]

POISSON_EPS = 1e-6
"""ε inside the Poisson log: ``μ − n·log(μ + ε)``."""

MERGE_MIN_WEIGHT = 1e-3
"""Canvas pixels whose summed merge weight is at most this are uncovered (exact zero)."""


def central_window(
    N: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The decoder's support: 1 on rows/cols ``[N/4, 3N/4)``, 0 elsewhere.

    Parameters
    ----------
    N : int
        Patch side (multiple of 4).
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        (N, N) mask.
    """
    return support_window(N, dtype, device)


def check_offsets(offsets: torch.Tensor, B: int, C: int, pad: int) -> torch.Tensor:
    """Validate group offsets for the merge; return them as float32.

    Parameters
    ----------
    offsets : torch.Tensor
        (B, C, 2) member − group centre, (x, y) px.
    B, C : int
        Expected groups and members.
    pad : int
        Canvas pad: every ``|offset|`` must be ``<= pad``.

    Returns
    -------
    torch.Tensor
        (B, C, 2) float32.

    Raises
    ------
    ValueError
        Wrong shape, non-finite values, or ``max |offset| > pad``.
    """
    if not torch.is_tensor(offsets):
        offsets = torch.as_tensor(offsets)
    if tuple(offsets.shape) != (B, C, 2):
        raise ValueError(
            f"offsets: expected shape (B, C, 2) = ({B}, {C}, 2) ordered (x, y), "
            f"found {tuple(offsets.shape)}"
        )
    offsets = offsets.to(torch.float32)
    if B * C == 0:
        return offsets
    if not bool(torch.isfinite(offsets).all()):
        raise ValueError("offsets: found NaN or Inf")
    largest = float(offsets.abs().max())
    if largest > pad:
        raise ValueError(
            f"offsets: max |offset| = {largest:.3f} px exceeds canvas_pad = {pad} px; rebuild the "
            f"model with canvas_pad >= {math.ceil(largest)} (the canvas_pad does not change the "
            "weights)"
        )
    return offsets


def merge_patches(
    patches: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    pad: int,
    min_weight: float = MERGE_MIN_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of a group's patches on a shared canvas centred on the group centre.

    Each patch is multiplied by its weight map (so only the decoder's support counts), zero-padded
    by ``pad`` and shifted by ``+offset`` with :func:`ptychobench.physics.shift_bilinear`; its
    weight map is shifted identically. ``canvas = Σ w·patches / Σ w`` where ``Σ w > min_weight``
    and exactly zero elsewhere (no ε-amplified borders).

    Parameters
    ----------
    patches : torch.Tensor
        (B, C, N, N) complex.
    offsets : torch.Tensor
        (B, C, 2) member − centre, (x, y) px (validate with :func:`check_offsets` first).
    weight : torch.Tensor
        Real, >= 0, (N, N) shared by every member or (B, C, N, N) per member, in each member's
        frame: the window (``"flat"``) or ``window · |P|²/max|P|²`` (``"probe"``).
    pad : int
        Canvas pad; the canvas side is ``S = N + 2·pad``.
    min_weight : float
        Coverage threshold.

    Returns
    -------
    canvas : torch.Tensor
        (B, S, S) complex, the merged object of each group.
    weight : torch.Tensor
        (B, S, S) real, Σ of the shifted weight maps (the coverage).
    """
    padding = (pad, pad, pad, pad)
    placed = shift_bilinear(F.pad(patches * weight, padding), offsets)
    masks = shift_bilinear(F.pad(weight, padding), offsets)
    numerator = placed.sum(dim=1)
    weight = masks.sum(dim=1)
    covered = weight > min_weight
    safe = torch.where(covered, weight, torch.ones_like(weight))
    canvas = torch.where(covered, numerator / safe, torch.zeros((), dtype=numerator.dtype))
    return canvas, weight


def extract_from_canvas(canvas: torch.Tensor, offsets: torch.Tensor, N: int) -> torch.Tensor:
    """Re-extract each member's N×N patch from its group's canvas: shift by −offset, centre crop.

    Parameters
    ----------
    canvas : torch.Tensor
        (B, S, S) complex (or real) canvases centred on the group centres.
    offsets : torch.Tensor
        (B, C, 2) member − centre, (x, y) px.
    N : int
        Patch side (``S − N`` must be even).

    Returns
    -------
    torch.Tensor
        (B, C, N, N), each centred on its member's position.
    """
    S = canvas.shape[-1]
    pad = (S - N) // 2
    moved = shift_bilinear(canvas[:, None], -offsets)
    return moved[..., pad : pad + N, pad : pad + N]


def merge_at_members(
    patches: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    min_weight: float = MERGE_MIN_WEIGHT,
) -> torch.Tensor:
    """Merge a group's patches and re-extract every member, in each member's own frame.

    The same weighted average as :func:`merge_patches` followed by :func:`extract_from_canvas`,
    but each
    source patch is moved once, by the relative offset ``o_d − o_c``, straight into member
    ``c``'s N×N frame: a member's own patch is used exactly (shift 0), and a neighbour's is
    interpolated once instead of twice. Two bilinear shifts blur sub-pixel detail by an amount
    that depends on each member's fractional offset, which the decoder cannot know; the
    forward model then cannot fit what the simulator (Fourier-exact) put into the data.

    Parameters
    ----------
    patches : torch.Tensor
        (B, C, N, N) complex, each centred on its member's position.
    offsets : torch.Tensor
        (B, C, 2) member − centre, (x, y) px.
    weight : torch.Tensor
        Real, >= 0, (N, N) shared by every member or (B, C, N, N) per member, in each member's
        frame (moved with its patch): the window (``"flat"``) or ``window · |P|²/max|P|²``
        (``"probe"``).
    min_weight : float
        Coverage threshold on ``Σ w``; at or below it the merged object is exactly zero.

    Returns
    -------
    torch.Tensor
        (B, C, N, N): member ``c``'s view of the merged object.
    """
    B, C, N, _ = patches.shape
    rel = offsets[:, None, :, :] - offsets[:, :, None, :]  # [b, c, d] = o_d − o_c
    src = (patches * weight).unsqueeze(1).expand(B, C, C, N, N)
    placed = shift_bilinear(src, rel)
    w = weight.to(rel.dtype)
    if w.ndim == 4:  # (B, C, N, N): source member d sits on dim 2, like src
        w = w.unsqueeze(1)
    masks = shift_bilinear(w.expand(B, C, C, N, N), rel)
    numerator = placed.sum(dim=2)
    weight = masks.sum(dim=2)
    covered = weight > min_weight
    safe = torch.where(covered, weight, torch.ones_like(weight))
    return torch.where(covered, numerator / safe, torch.zeros((), dtype=numerator.dtype))


def poisson_nll(mu: torch.Tensor, counts: torch.Tensor, eps: float = POISSON_EPS) -> torch.Tensor:
    """Poisson negative log-likelihood per pixel, averaged: ``mean(μ − n·log(μ + ε))``.

    The constant ``log n!`` is dropped. Its gradient ``1 − n/(μ + ε)`` vanishes at ``μ ≈ n``.

    Parameters
    ----------
    mu : torch.Tensor
        Predicted counts (any shape), ``>= 0``.
    counts : torch.Tensor
        Measured counts, same shape.
    eps : float
        Keeps the log finite where ``μ = 0``.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    return (mu - counts * torch.log(mu + eps)).mean()


def _as_probe(probe: torch.Tensor | None, N: int) -> torch.Tensor:
    if probe is None:
        raise ValueError(
            "PtychoPINN needs the probe: pass probe=(N, N) complex (a bundle's model.pt holds it "
            "under 'probe')"
        )
    probe = torch.as_tensor(probe).detach()
    if tuple(probe.shape) != (N, N):
        raise ValueError(
            f"probe: expected shape ({N}, {N}) for N = {N}, found {tuple(probe.shape)}"
        )
    probe = probe.to(torch.complex64).clone()
    if not bool(torch.isfinite(torch.view_as_real(probe)).all()):
        raise ValueError("probe: found NaN or Inf")
    return probe


class PtychoPINN(nn.Module):
    """Physics-informed PtychoPINN (see the module docstring for the architecture).

    Parameters
    ----------
    config : ModelConfig
        ``kind`` must be ``"pinn"``.
    probe : torch.Tensor
        (N, N) complex probe (stored in the state dict under ``probe``; a Parameter when
        ``config.probe_trainable``, else a buffer).

    Attributes
    ----------
    kind : str
        ``"pinn"``.
    config : ModelConfig
    log_intensity_scale : torch.nn.Parameter
        Scalar ``λ``, predicted amplitude = ``exp(λ) · |F(P·O)|``; init ``log(intensity_scale)``.
    """

    kind = "pinn"

    def __init__(self, config: ModelConfig, probe: torch.Tensor | None) -> None:
        super().__init__()
        if config.kind != "pinn":
            raise ValueError(f"kind: PtychoPINN needs kind 'pinn', found {config.kind!r}")
        self.config = config
        N, C = config.N, config.channels
        c_net = 1 if config.channel_mode == "shared" else C
        w1, w2, w3 = widths(config.n_filters_scale)
        self.encoder = Encoder(c_net, (w1, w2, w3))
        self.decoder_amplitude = Decoder(w3, (w2, w1), c_net)
        self.decoder_phase = Decoder(w3, (w2, w1), c_net)
        init_weights(self)
        p = _as_probe(probe, N)
        if config.probe_trainable:
            self.probe = nn.Parameter(p)
        else:
            self.register_buffer("probe", p)
        self.log_intensity_scale = nn.Parameter(
            torch.tensor(math.log(config.intensity_scale), dtype=torch.float32),
            requires_grad=config.intensity_scale_trainable,
        )
        self.register_buffer("window", central_window(N), persistent=False)

    # ------------------------------------------------------------------------------ helpers

    @property
    def intensity_scale(self) -> float:
        """Current far-field amplitude scale ``exp(λ)``."""
        return float(self.log_intensity_scale.detach().exp())

    def merge_weight(self, weighting: str | None = None) -> torch.Tensor:
        """(N, N) gs2 merge weight of a member pixel, in the member's own frame.

        Parameters
        ----------
        weighting : str, optional
            ``"flat"`` (the decoder's window) or ``"probe"`` (``window · |P|²/max|P|²`` of the
            current probe, detached); default ``config.merge_weighting``.

        Returns
        -------
        torch.Tensor
            (N, N) float32 on the model's device.
        """
        name = validate_weighting(
            self.config.merge_weighting if weighting is None else weighting, "merge weighting"
        )
        if name == "flat":
            return self.window
        return probe_weight(self.probe.detach(), self.config.N, window=self.window)

    def _check_diffraction(self, diffraction: torch.Tensor) -> None:
        N, C = self.config.N, self.config.channels
        if diffraction.ndim != 4 or tuple(diffraction.shape[1:]) != (C, N, N):
            raise ValueError(
                f"diffraction: expected shape (B, {C}, {N}, {N}) for gridsize "
                f"{self.config.gridsize} and N = {N}, found {tuple(diffraction.shape)}"
            )

    def _offsets(self, offsets: torch.Tensor | None, B: int, C: int) -> torch.Tensor | None:
        """Validated float32 offsets for gs2; ``None`` at gs1 (the merge is skipped)."""
        if C == 1:
            if offsets is not None and tuple(offsets.shape) != (B, 1, 2):
                raise ValueError(
                    f"offsets: expected shape (B, 1, 2) = ({B}, 1, 2) for gridsize 1, "
                    f"found {tuple(offsets.shape)}"
                )
            return None
        if offsets is None:
            raise ValueError(f"offsets: required for gridsize {self.config.gridsize}")
        return check_offsets(offsets, B, C, self.config.canvas_pad).to(self.window.device)

    # ------------------------------------------------------------------------------ network

    def decode(self, diffraction: torch.Tensor) -> torch.Tensor:
        """Network part: diffraction → object patches confined to the central N/2 window.

        Parameters
        ----------
        diffraction : torch.Tensor
            (B, C, N, N) float amplitudes.

        Returns
        -------
        torch.Tensor
            (B, C, N, N) complex64, exactly zero outside rows/cols ``[N/4, 3N/4)``.
        """
        self._check_diffraction(diffraction)
        x = diffraction * self.config.input_scale
        B, C, N, _ = x.shape
        if self.config.channel_mode == "shared":
            x = x.reshape(B * C, 1, N, N)
        amp, phase = self._heads(self.encoder(x))
        amp, phase = amp.reshape(B, C, N // 2, N // 2), phase.reshape(B, C, N // 2, N // 2)
        q = self.config.N // 4
        return F.pad(torch.polar(amp, phase), (q, q, q, q))

    def _heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent → (amplitude ``amplitude_max·sigmoid``, phase ``π·tanh``), float32, N/2 × N/2."""
        amp = self.config.amplitude_max * torch.sigmoid(self.decoder_amplitude(z).float())
        return amp, math.pi * torch.tanh(self.decoder_phase(z).float())

    def merge(self, patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Merge a group's patches on its canvas (see :func:`merge_patches`).

        Parameters
        ----------
        patches : torch.Tensor
            (B, C, N, N) complex.
        offsets : torch.Tensor
            (B, C, 2) member − centre, (x, y) px, ``|offset| <= canvas_pad``.

        Returns
        -------
        torch.Tensor
            (B, S, S) complex64, ``S = N + 2·canvas_pad``, centred on the group centre.
        """
        B, C = patches.shape[:2]
        offsets = check_offsets(offsets, B, C, self.config.canvas_pad).to(patches.device)
        canvas, _ = merge_patches(
            patches.to(torch.complex64), offsets, self.merge_weight(), self.config.canvas_pad
        )
        return canvas

    def forward_physics(
        self, object_patches: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Physics layer: (gs2: merge → re-extract) → probe → far field → scale.

        Runs in float32 / complex64 with autocast disabled. At gs1 the given patches are used
        as they are (full N×N); at gs2 only their central-window content enters the merge.

        Parameters
        ----------
        object_patches : torch.Tensor
            (B, C, N, N) complex object patches, each centred on its member's position.
        offsets : torch.Tensor, optional
            (B, C, 2) member − centre, (x, y) px; required at gs2, ignored at gs1.

        Returns
        -------
        torch.Tensor
            (B, C, N, N) float32 predicted diffraction amplitude (sqrt of predicted counts).
        """
        B, C = object_patches.shape[:2]
        N = self.config.N
        if object_patches.ndim != 4 or tuple(object_patches.shape[1:]) != (
            self.config.channels,
            N,
            N,
        ):
            raise ValueError(
                f"object_patches: expected shape (B, {self.config.channels}, {N}, {N}), "
                f"found {tuple(object_patches.shape)}"
            )
        off = self._offsets(offsets, B, C)
        device_type = object_patches.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            obj = object_patches.to(torch.complex64)
            if off is not None:
                obj = merge_at_members(obj, off, self.merge_weight())
            amp = forward_amplitude(self.probe.to(torch.complex64), obj)
            return amp * self.log_intensity_scale.float().exp()

    def forward(
        self, diffraction: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted diffraction amplitude of each pattern (what the loss compares to the data).

        Parameters
        ----------
        diffraction : torch.Tensor
            (B, C, N, N) measured amplitudes.
        offsets : torch.Tensor, optional
            (B, C, 2) member − centre, (x, y) px; required at gs2.

        Returns
        -------
        torch.Tensor
            (B, C, N, N) float32.
        """
        return self.forward_physics(self.decode(diffraction), offsets)

    # ------------------------------------------------------------------------------ protocol

    def loss_from_output(
        self, predicted: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Loss of a forward output against the batch (for DDP: ``loss_from_output(ddp(...))``).

        Parameters
        ----------
        predicted : torch.Tensor
            (B, C, N, N) output of :meth:`forward`.
        batch : dict
            ``"diffraction"`` (B, C, N, N) measured amplitudes.

        Returns
        -------
        torch.Tensor
            Scalar float32.
        """
        measured = batch["diffraction"].to(torch.float32)
        predicted = predicted.to(torch.float32)
        if self.config.loss == "mae":
            return (predicted - measured).abs().mean()
        return poisson_nll(predicted.square(), measured.square())

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss of a batch.

        Parameters
        ----------
        batch : dict
            ``"diffraction"`` (B, C, N, N) float32 amplitudes, ``"offsets"`` (B, C, 2).

        Returns
        -------
        torch.Tensor
            Scalar: Poisson NLL per pixel (or amplitude MAE), mean over pixels and batch.
        """
        return self.loss_from_output(self(batch["diffraction"], batch.get("offsets")), batch)

    @torch.no_grad()
    def predict(
        self,
        diffraction: torch.Tensor,
        offsets: torch.Tensor | None = None,
        *,
        weighting: str | None = None,
        return_weight: bool = False,
        min_weight: float = MERGE_MIN_WEIGHT,
        full_canvas: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Object patch per group (gs2, merged canvas cropped N×N) or per pattern (gs1).

        Parameters
        ----------
        diffraction : torch.Tensor
            (B, C, N, N) amplitudes.
        offsets : torch.Tensor, optional
            (B, C, 2) member − centre, (x, y) px; required at gs2.
        weighting, return_weight, min_weight, full_canvas
            As in :meth:`predict_from_patches`.

        Returns
        -------
        torch.Tensor
            (B, N, N) complex64 centred on the group centre (gs2) / the scan position (gs1);
            with ``return_weight`` also its (B, N, N) float32 Σ-weight map.
        """
        return self.predict_from_patches(
            self.decode(diffraction),
            offsets,
            weighting=weighting,
            return_weight=return_weight,
            min_weight=min_weight,
            full_canvas=full_canvas,
        )

    def decode_single(self, diffraction: torch.Tensor) -> torch.Tensor:
        """Decode single patterns, independent of any group (gradients flow; see TTR).

        Parameters
        ----------
        diffraction : torch.Tensor
            (P, N, N) amplitudes.

        Returns
        -------
        torch.Tensor
            (P, N, N) complex64 patches, as :meth:`decode` would return them per member; exactly
            zero outside the central N/2 window.
        """
        if self.config.channel_mode != "shared" and self.config.channels != 1:
            raise ValueError("decode_single needs channel_mode 'shared' (or gridsize 1)")
        P, N = diffraction.shape[0], self.config.N
        x = diffraction.reshape(P, 1, N, N) * self.config.input_scale
        amp, phase = self._heads(self.encoder(x))
        q = N // 4
        return F.pad(torch.polar(amp, phase), (q, q, q, q))[:, 0]

    @torch.no_grad()
    def decode_patterns(self, diffraction: torch.Tensor) -> torch.Tensor:
        """Shared channel mode: decode single patterns, independent of any group.

        Lets inference decode each distinct pattern of a chunk once although gs2 groups share
        members; :meth:`predict_from_patches` then merges them per group.

        Parameters
        ----------
        diffraction : torch.Tensor
            (P, N, N) amplitudes.

        Returns
        -------
        torch.Tensor
            (P, N, N) complex64 patches (:meth:`decode_single` without gradients).
        """
        return self.decode_single(diffraction)

    @torch.no_grad()
    def predict_from_patches(
        self,
        patches: torch.Tensor,
        offsets: torch.Tensor | None = None,
        *,
        weighting: str | None = None,
        return_weight: bool = False,
        min_weight: float = MERGE_MIN_WEIGHT,
        full_canvas: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C, N, N) decoded patches → (B, N, N) object per group (gs2 merge) or pattern.

        Parameters
        ----------
        patches : torch.Tensor
            (B, C, N, N) complex, each centred on its member's position.
        offsets : torch.Tensor, optional
            (B, C, 2) member − centre, (x, y) px; required at gs2.
        weighting : str, optional
            gs2 merge weighting, ``"flat"`` or ``"probe"`` (default ``config.merge_weighting``).
        return_weight : bool
            Also return the (B, N, N) Σ-weight map of each output, cropped like it: gs2 the
            merge's Σ w over the members (:func:`merge_patches`; 0 where the merge is uncovered,
            ``Σ w <= min_weight``), gs1 the single member's weight (:meth:`merge_weight`).
            Stitching the output with it as per-patch weight adds ``Σ_members w·patch``, what
            stitching the members one by one would add.
        min_weight : float
            gs2 merge coverage threshold (default ``MERGE_MIN_WEIGHT``). Pass 0 when the output
            is stitched with its Σ-weight map: the stitcher applies its own threshold to the
            total weight, and a group then adds exactly its members' weighted sum.
        full_canvas : bool
            gs2: return the whole (B, S, S) canvas (``S = N + 2·canvas_pad``, centred on the group
            centre) instead of its central N×N: a member farther than N/4 from the centre has part
            of its window outside the N×N crop. No effect at gs1.

        Returns
        -------
        torch.Tensor, or (torch.Tensor, torch.Tensor) with ``return_weight``
        """
        B, C = patches.shape[:2]
        off = self._offsets(offsets, B, C)
        if weighting is not None:
            validate_weighting(weighting, "merge weighting")
        if off is None:
            out = patches[:, 0]
            if not return_weight:
                return out
            N = self.config.N
            return out, self.merge_weight(weighting).to(out.device).expand(B, N, N).clone()
        w = self.merge_weight(weighting).to(patches.device)
        canvas, weight = merge_patches(patches, off, w, self.config.canvas_pad, min_weight)
        if not full_canvas:
            pad, N = self.config.canvas_pad, self.config.N
            canvas = canvas[:, pad : pad + N, pad : pad + N]
            weight = weight[:, pad : pad + N, pad : pad + N]
        if not return_weight:
            return canvas
        return canvas, torch.where(weight > min_weight, weight, torch.zeros_like(weight))
