"""PtychoPINN: merge / re-extract geometry, physics layer, loss, shapes, config, costs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import smooth_complex
from pydantic import ValidationError

from ptychobench.models import (
    ModelConfig,
    PtychoPINN,
    build_model,
    conv_flops,
    count_parameters,
    flops_per_pattern,
)
from ptychobench.models.blocks import count_conv_flops_measured, widths
from ptychobench.models.pinn import (
    MERGE_MIN_WEIGHT,
    central_window,
    extract_from_canvas,
    merge_patches,
    poisson_nll,
)
from ptychobench.physics import extract_patches, forward_amplitude
from ptychobench.simulate import SimulationConfig, simulate

torch.set_num_threads(1)


def random_probe(N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, N, generator=g, dtype=torch.complex64)


def random_object(H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Rough, asymmetric complex object (no mirror symmetry to hide a sign error)."""
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + 0.5 * torch.rand(H, W, generator=g)
    phase = (torch.rand(H, W, generator=g) - 0.5) * 2.0
    return torch.polar(amp, phase)


def make_pinn(N: int = 32, gridsize: int = 1, s: float = 0.25, **kw) -> PtychoPINN:
    torch.manual_seed(0)
    cfg = {"kind": "pinn", "N": N, "gridsize": gridsize, "n_filters_scale": s, **kw}
    model = build_model(cfg, random_probe(N))
    assert isinstance(model, PtychoPINN)
    return model


def member_patches(obj: torch.Tensor, centre, offsets: torch.Tensor, N: int) -> torch.Tensor:
    """True patches (C, N, N) of the members at centre + offset, bilinear (exact at integers)."""
    coords = torch.as_tensor(centre, dtype=torch.float64) + offsets.to(torch.float64)
    return extract_patches(obj, coords, N, method="bilinear")


INT_OFFSETS = torch.tensor([[-2.0, -1.0], [2.0, 1.0], [-1.0, 2.0], [1.0, -2.0]])
MIRROR_OFFSETS = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])
SUB_OFFSETS = torch.tensor([[-2.3, -0.7], [2.3, 0.7], [-0.4, 2.6], [0.4, -2.6]])


# --------------------------------------------------------------------------- merge geometry


def test_merge_reextract_integer_offsets_per_group():
    N, pad = 32, 8
    win = central_window(N)
    obj = random_object(120, 120, seed=1)
    # two groups with different centres and offsets: merging must be per group (pitfall 3)
    second = torch.tensor([[3.0, 0.0], [-2.0, 2.0], [0.0, -1.0], [-1.0, -1.0]])
    offsets = torch.stack([INT_OFFSETS, second])
    assert float(offsets.sum(dim=1).abs().max()) == 0.0  # zero-mean groups
    centres = [(48.0, 50.0), (70.0, 61.0)]
    patches = (
        torch.stack([member_patches(obj, c, o, N) for c, o in zip(centres, offsets, strict=True)])
        * win
    )
    canvas, weight = merge_patches(patches, offsets, win, pad)
    assert canvas.shape == (2, N + 2 * pad, N + 2 * pad)
    back = extract_from_canvas(canvas, offsets, N)
    err = ((back - patches).abs() * win).max()
    assert float(err) < 1e-5
    # integer offsets: coverage counts are integers 0..4
    assert torch.equal(weight, weight.round())
    assert float(weight.max()) == 4.0


def test_merge_reextract_subpixel_smooth_object():
    N, pad = 32, 8
    win = central_window(N)
    offsets = SUB_OFFSETS[None]
    centre = (48.0, 48.0)

    def roundtrip_error(obj: torch.Tensor) -> tuple[float, float]:
        patches = member_patches(obj, centre, offsets[0], N)[None] * win
        canvas, _ = merge_patches(patches, offsets, win, pad)
        back = extract_from_canvas(canvas, offsets, N)
        err = float(((back - patches).abs() * win).max())
        step = max(
            float((obj[1:] - obj[:-1]).abs().max()), float((obj[:, 1:] - obj[:, :-1]).abs().max())
        )
        return err, step

    very_smooth = (0.7 + 0.015 * smooth_complex(96, 96, seed=1, sigma=10.0)).to(torch.complex64)
    err, _ = roundtrip_error(very_smooth)
    assert err < 1e-3
    # in general the sub-pixel round trip is off by less than half a pixel's worth of variation
    # (co-masked window edges interpolate with one-sided taps); measured ≈ 0.3
    rough = (0.7 + 0.3 * smooth_complex(96, 96, seed=2, sigma=3.0)).to(torch.complex64)
    err, step = roundtrip_error(rough)
    assert 0 < err < 0.5 * step


def test_single_patch_merge_is_identity():
    N, pad = 32, 8
    win = central_window(N)
    patch = random_object(N, N, seed=3)[None, None] * win
    zeros = torch.zeros(1, 1, 2)
    canvas, weight = merge_patches(patch, zeros, win, pad)
    assert torch.equal(canvas[0, pad : pad + N, pad : pad + N], patch[0, 0])
    assert torch.equal(extract_from_canvas(canvas, zeros, N), patch)
    # the gs1 model skips the merge: the physics layer uses the full patch as given
    model = make_pinn(N, gridsize=1)
    full = random_object(N, N, seed=4)[None, None]
    expected = forward_amplitude(model.probe, full) * model.intensity_scale
    got = model.forward_physics(full, torch.zeros(1, 1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_uncovered_canvas_is_exact_zero_and_bounded():
    N, pad = 32, 8
    win = central_window(N)
    g = torch.Generator().manual_seed(5)
    # inconsistent random patches and sub-pixel offsets up to 3 px
    patches = torch.randn(3, 4, N, N, generator=g, dtype=torch.complex64) * win
    offsets = (torch.rand(3, 4, 2, generator=g) - 0.5) * 6.0
    offsets = offsets - offsets.mean(dim=1, keepdim=True)
    canvas, weight = merge_patches(patches, offsets, win, pad)
    assert bool(torch.isfinite(torch.view_as_real(canvas)).all())
    uncovered = weight <= MERGE_MIN_WEIGHT
    assert int(uncovered.sum()) > 0
    assert bool((canvas[uncovered] == 0).all())
    # a weighted average never exceeds the largest input (no ε-amplified borders)
    assert float(canvas.abs().max()) <= float(patches.abs().max()) + 1e-5
    # the canvas's outer frame (beyond window + max offset) is uncovered
    assert bool((canvas[:, :4] == 0).all()) and bool((canvas[:, :, -4:] == 0).all())


def test_offset_beyond_canvas_pad_raises():
    N = 32
    model = make_pinn(N, gridsize=2, canvas_pad=2)
    d = torch.rand(1, 4, N, N)
    ok = torch.tensor([[[-2.0, 0.0], [2.0, 0.0], [0.0, 1.5], [0.0, -1.5]]])
    assert model(d, ok).shape == (1, 4, N, N)
    bad = ok * 1.25
    with pytest.raises(ValueError, match=r"max \|offset\| = 2\.500 px exceeds canvas_pad = 2"):
        model(d, bad)
    with pytest.raises(ValueError, match="canvas_pad"):
        model.predict(d, bad)
    with pytest.raises(ValueError, match="NaN"):
        model(d, torch.full((1, 4, 2), float("nan")))
    with pytest.raises(ValueError, match=r"expected shape \(B, C, 2\) = \(1, 4, 2\)"):
        model(d, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="required for gridsize 2"):
        model(d, None)


def test_mirror_gs2_asymmetric_object():
    """Reference pitfall 1: placement and extraction signs must match the true geometry."""
    N, pad = 32, 8
    model = make_pinn(N, gridsize=2, canvas_pad=pad)
    win = central_window(N)
    obj = random_object(110, 100, seed=6)
    centre = (47.0, 55.0)
    offsets = MIRROR_OFFSETS[None]
    truth = member_patches(obj, centre, offsets[0], N)[None]  # (1, 4, N, N)
    canvas, weight = merge_patches(truth * win, offsets, win, pad)
    assert torch.equal(model.merge(truth, offsets), canvas)  # the model merges co-masked patches
    # the canvas is the object around the group centre wherever it is covered
    centre_patch = extract_patches(
        obj, torch.tensor([centre], dtype=torch.float64), N + 2 * pad, method="bilinear"
    )
    covered = weight[0] > 0.5
    assert int(covered.sum()) > (N // 2 + 4) ** 2 - 1
    assert float((canvas[0] - centre_patch[0])[covered].abs().max()) < 1e-5
    # each re-extracted member equals the TRUE member patch everywhere the canvas covers it
    back = extract_from_canvas(canvas, offsets, N)
    back_cover = extract_from_canvas(weight.to(torch.complex64), offsets, N).real > 0.5
    assert float((back - truth)[back_cover].abs().max()) < 1e-5
    # ... and not the member reflected through the group centre (the test can see a mirror)
    mirrored = member_patches(obj, centre, -offsets[0], N)[None]
    assert float((back - mirrored)[back_cover].abs().max()) > 0.1


# --------------------------------------------------------------------------- physics layer


def test_physics_layer_matches_simulator():
    ds = simulate(
        SimulationConfig(
            N=32, object="grf", object_size=96, scan="raster", step_px=6, noise="none", seed=0
        )
    )
    scale = float(ds.metadata["scale"])
    model = build_model(
        {"kind": "pinn", "N": 32, "n_filters_scale": 0.25, "intensity_scale": scale},
        torch.from_numpy(ds.probeGuess),
    )
    Y = torch.from_numpy(ds.Y)[:, None]
    pred = model.forward_physics(Y, torch.zeros(Y.shape[0], 1, 2)).detach()
    truth = torch.from_numpy(ds.diffraction)[:, None]
    assert pred.dtype == torch.float32 and pred.shape == truth.shape
    rel = float((pred - truth).norm() / truth.norm())
    assert rel < 1e-5
    assert float((pred - truth).abs().max() / truth.abs().max()) < 1e-5
    # the loss's counts are the simulator's counts (no noise: μ = n exactly)
    assert math.isclose(model.intensity_scale, scale, rel_tol=1e-6)


def test_physics_layer_gs2_consistent_patches_match_members():
    """gs2 physics of consistent window-confined patches = the members' own far fields."""
    N, pad = 32, 8
    model = make_pinn(N, gridsize=2, canvas_pad=pad)
    win = central_window(N)
    obj = random_object(96, 96, seed=7)
    truth = member_patches(obj, (48.0, 48.0), INT_OFFSETS, N)[None] * win
    # wherever member c's own window does not reach, the merged canvas adds the neighbours'
    # content; compare against the far field of the re-extracted (merged) object instead
    canvas, _ = merge_patches(truth, INT_OFFSETS[None], win, pad)
    merged = extract_from_canvas(canvas, INT_OFFSETS[None], N)
    expected = forward_amplitude(model.probe, merged) * model.intensity_scale
    got = model.forward_physics(truth, INT_OFFSETS[None]).detach()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert float(((merged - truth).abs() * win).max()) < 1e-5


def test_autocast_keeps_physics_in_float32():
    model = make_pinn(32, gridsize=2)
    d = torch.rand(2, 4, 32, 32) * 3
    off = INT_OFFSETS[None].repeat(2, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(d, off)
        loss = model.loss({"diffraction": d, "offsets": off})
    assert out.dtype == torch.float32
    assert math.isfinite(float(loss))


# --------------------------------------------------------------------------- loss


def test_poisson_nll_gradient_zero_at_counts_and_true_scale():
    g = torch.Generator().manual_seed(8)
    n = torch.randint(1, 60, (4, 16, 16), generator=g).to(torch.float32)
    mu = n.clone().requires_grad_(True)
    poisson_nll(mu, n).backward()
    assert float(mu.grad.abs().max() * n.numel()) < 1e-6
    # minimised over a global scale at the true scale
    shape = torch.rand(4, 16, 16, generator=g) * 50 + 0.5
    counts = torch.poisson(shape, generator=g)
    alphas = torch.linspace(0.5, 1.5, 201)
    losses = torch.stack([poisson_nll(a * shape, counts) for a in alphas])
    best = float(alphas[int(losses.argmin())])
    assert abs(best - float(counts.sum() / shape.sum())) <= 0.005 + 1e-6
    exact = [poisson_nll(a * n, n) for a in (0.9, 1.0, 1.1)]
    assert float(exact[1]) < float(exact[0]) and float(exact[1]) < float(exact[2])


def test_model_loss_definitions():
    model = make_pinn(32, gridsize=1)
    d = torch.rand(3, 1, 32, 32) * 4
    batch = {"diffraction": d, "offsets": torch.zeros(3, 1, 2)}
    pred = d.clone()
    expected = (d.square() - d.square() * torch.log(d.square() + 1e-6)).mean()
    torch.testing.assert_close(model.loss_from_output(pred, batch), expected)
    mae = make_pinn(32, gridsize=1, loss="mae")
    assert float(mae.loss_from_output(pred, batch)) == 0.0
    assert float(mae.loss_from_output(pred + 0.5, batch)) == pytest.approx(0.5)
    out = model(d, batch["offsets"])
    torch.testing.assert_close(model.loss(batch), model.loss_from_output(out, batch))


# --------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize("N", [32, 64])
@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("s", [0.25, 1.0])
def test_shapes_dtypes_and_gradients(N, gridsize, s):
    model = make_pinn(N, gridsize=gridsize, s=s, intensity_scale=5.0)
    B, C = 2, gridsize * gridsize
    d = torch.rand(B, C, N, N) * 3
    off = (INT_OFFSETS[None].repeat(B, 1, 1) * 0.75) if C == 4 else torch.zeros(B, 1, 2)
    patches = model.decode(d)
    assert patches.shape == (B, C, N, N) and patches.dtype == torch.complex64
    q = N // 4
    outside = torch.ones(N, N, dtype=torch.bool)
    outside[q : 3 * q, q : 3 * q] = False
    assert bool((patches[..., outside] == 0).all())
    inside = patches[..., q : 3 * q, q : 3 * q].abs()
    assert float(inside.min()) > 0 and float(inside.max()) < model.config.amplitude_max
    out = model(d, off)
    assert out.shape == (B, C, N, N) and out.dtype == torch.float32
    loss = model.loss({"diffraction": d, "offsets": off})
    assert loss.ndim == 0 and math.isfinite(float(loss))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert float(model.log_intensity_scale.grad.abs()) > 0
    pred = model.predict(d, off)
    assert pred.shape == (B, N, N) and pred.dtype == torch.complex64
    assert not pred.requires_grad


def test_predict_gs2_is_group_canvas_centred():
    N, pad = 32, 8
    model = make_pinn(N, gridsize=2, canvas_pad=pad)
    d = torch.rand(2, 4, N, N)
    off = INT_OFFSETS[None].repeat(2, 1, 1)
    pred = model.predict(d, off)
    canvas = model.merge(model.decode(d), off)
    assert torch.equal(pred, canvas[:, pad : pad + N, pad : pad + N].detach())
    # support = union of the shifted windows (max offset 2): zero outside [N/4-2, 3N/4+2)
    q = N // 4
    assert bool((pred[:, : q - 2] == 0).all()) and bool((pred[:, 3 * q + 2 :] == 0).all())
    assert bool((pred[:, :, : q - 2] == 0).all()) and bool((pred[:, :, 3 * q + 2 :] == 0).all())
    assert float(pred[:, q : 3 * q, q : 3 * q].abs().min()) > 0


def test_gs1_predict_is_decoded_patch():
    model = make_pinn(32, gridsize=1)
    d = torch.rand(3, 1, 32, 32)
    assert torch.equal(model.predict(d, torch.zeros(3, 1, 2)), model.decode(d)[:, 0].detach())
    assert torch.equal(model.predict(d), model.predict(d, torch.zeros(3, 1, 2)))


def test_channel_and_size_mismatch_rejected():
    model = make_pinn(32, gridsize=2)
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 32, 32\) for gridsize 2"):
        model(torch.rand(2, 1, 32, 32), torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match="N = 32"):
        model(torch.rand(2, 4, 64, 64), torch.zeros(2, 4, 2))


def test_training_steps_reduce_loss():
    """A few Adam steps on a fixed batch lower the Poisson NLL (the model is trainable)."""
    torch.manual_seed(1)
    N = 32
    ds = simulate(
        SimulationConfig(
            N=N, object="grf", object_size=64, scan="raster", step_px=8, dose=1e5, seed=1
        )
    )
    d = torch.from_numpy(ds.diffraction)[:16, None]
    input_scale = math.sqrt((N / 2) ** 2 / float(d.square().sum(dim=(-2, -1)).mean()))
    model = build_model(
        {
            "kind": "pinn",
            "N": N,
            "n_filters_scale": 0.25,
            "input_scale": input_scale,
            "intensity_scale": float(ds.metadata["scale"]),
        },
        torch.from_numpy(ds.probeGuess),
    )
    batch = {"diffraction": d, "offsets": torch.zeros(16, 1, 2)}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.loss(batch))
    for _ in range(15):
        opt.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        opt.step()
    assert float(model.loss(batch)) < first - 0.02 * abs(first)


# --------------------------------------------------------------------------- config, rebuild


@pytest.mark.parametrize("probe_trainable", [False, True])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_build_model_roundtrip(probe_trainable, gridsize):
    model = make_pinn(
        32,
        gridsize=gridsize,
        probe_trainable=probe_trainable,
        intensity_scale=123.0,
        intensity_scale_trainable=False,
    )
    cfg = model.config.model_dump(mode="json")
    assert cfg["kind"] == "pinn" and cfg["intensity_scale"] == 123.0
    sd = model.state_dict()
    assert "probe" in sd and "log_intensity_scale" in sd and "window" not in sd
    rebuilt = build_model(cfg, sd["probe"])
    assert list(rebuilt.state_dict()) == list(sd)
    rebuilt.load_state_dict(sd, strict=True)
    d = torch.rand(2, gridsize**2, 32, 32)
    off = INT_OFFSETS[None].repeat(2, 1, 1) if gridsize == 2 else torch.zeros(2, 1, 2)
    assert torch.equal(rebuilt.predict(d, off), model.predict(d, off))
    assert isinstance(model.probe, torch.nn.Parameter) == probe_trainable
    assert not model.log_intensity_scale.requires_grad
    assert count_parameters(model) == count_parameters(rebuilt)
    if probe_trainable:
        loss = model.loss({"diffraction": d, "offsets": off})
        loss.backward()
        assert model.probe.grad is not None and bool(torch.isfinite(model.probe.grad).all())


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"kind": "vae"}, "kind"),
        ({"N": 20}, "N"),
        ({"N": 8}, "N"),
        ({"gridsize": 3}, "gridsize"),
        ({"n_filters_scale": 0}, "n_filters_scale"),
        ({"n_filters_scale": float("nan")}, "n_filters_scale"),
        ({"intensity_scale": -1.0}, "intensity_scale"),
        ({"input_scale": float("inf")}, "input_scale"),
        ({"amplitude_max": 0.0}, "amplitude_max"),
        ({"loss": "l2"}, "loss"),
        ({"canvas_pad": -1}, "canvas_pad"),
        ({"schema_version": 2}, "schema_version"),
        ({"widths": [1, 2]}, "widths"),
    ],
)
def test_bad_configs_rejected(bad, field):
    cfg = {"kind": "pinn", "N": 32, **bad}
    with pytest.raises(ValidationError, match=field):
        build_model(cfg, random_probe(32))


def test_probe_required_and_checked():
    with pytest.raises(ValueError, match="needs the probe"):
        build_model({"kind": "pinn", "N": 32})
    with pytest.raises(ValueError, match=r"probe: expected shape \(32, 32\)"):
        build_model({"kind": "pinn", "N": 32}, random_probe(64))
    model = build_model({"kind": "pinn", "N": 32}, np.ones((32, 32), dtype=np.float32))
    assert model.probe.dtype == torch.complex64


def test_widths_ladder():
    assert widths(1.0) == (32, 64, 128)
    assert widths(2.0) == (64, 128, 256)
    assert widths(0.25) == (8, 16, 32)
    assert widths(0.05) == (4, 4, 6)


# --------------------------------------------------------------------------- cost figures


def test_parameter_and_flop_counts(capsys):
    rows = []
    for s in (0.25, 0.5, 1.0, 2.0):
        cfg = ModelConfig(kind="pinn", N=64, n_filters_scale=s)
        model = build_model(cfg, random_probe(64))
        rows.append((s, count_parameters(model), flops_per_pattern(cfg)))
        if s <= 1.0:  # the analytic count equals a hook-measured count
            measured = count_conv_flops_measured(model, torch.rand(1, 1, 64, 64))
            assert measured == conv_flops(cfg)
    with capsys.disabled():
        for s, p, f in rows:
            print(f"\nPtychoPINN N=64 gs1 s={s}: {p:,} parameters, {f / 1e9:.3f} GFLOP/pattern")
    by_s = {s: (p, f) for s, p, f in rows}
    # exact figures for s = 1 (1 input channel, widths 32/64/128) and the reference's s = 2
    assert by_s[1.0][0] == 563_875
    assert by_s[1.0][1] == pytest.approx(0.362151936e9)
    assert 2.0e6 < by_s[2.0][0] < 2.6e6  # reference: ≈2.25–2.4 M
    assert 1.0e9 < by_s[2.0][1] < 4.0e9  # reference quotes ≈3.6 GFLOP
    # gs2: one forward serves 4 patterns
    cfg2 = ModelConfig(kind="pinn", N=64, gridsize=2)
    assert flops_per_pattern(cfg2) == pytest.approx(conv_flops(cfg2) / 4)
    measured = count_conv_flops_measured(
        build_model(cfg2, random_probe(64)), torch.rand(1, 4, 64, 64), torch.zeros(1, 4, 2)
    )
    assert measured == conv_flops(cfg2)
    # shared (default): the gs1 network once per member, so the same FLOPs per pattern as gs1
    assert cfg2.channel_mode == "shared"
    assert flops_per_pattern(cfg2) == pytest.approx(
        flops_per_pattern(ModelConfig(kind="pinn", N=64))
    )
    joint = ModelConfig(kind="pinn", N=64, gridsize=2, channel_mode="joint")
    assert flops_per_pattern(joint) < flops_per_pattern(cfg2) / 3
    measured = count_conv_flops_measured(
        build_model(joint, random_probe(64)), torch.rand(1, 4, 64, 64), torch.zeros(1, 4, 2)
    )
    assert measured == conv_flops(joint)


def test_shared_channel_mode_decodes_each_member_on_its_own():
    """shared: member c's patch depends on member c's pattern only (permutation equivariant)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind="pinn", N=32, gridsize=2, n_filters_scale=0.25), random_probe(32)
    )
    x = torch.rand(2, 4, 32, 32)
    perm = torch.tensor([2, 0, 3, 1])
    out = model.decode(x)
    torch.testing.assert_close(model.decode(x[:, perm]), out[:, perm], rtol=0, atol=1e-6)
    y = x.clone()
    y[:, 1] = torch.rand(2, 32, 32)  # changing member 1 leaves the others' patches untouched
    changed = model.decode(y)
    torch.testing.assert_close(changed[:, [0, 2, 3]], out[:, [0, 2, 3]], rtol=0, atol=1e-6)
    assert float((changed[:, 1] - out[:, 1]).abs().max()) > 1e-3
    joint = build_model(
        ModelConfig(kind="pinn", N=32, gridsize=2, n_filters_scale=0.25, channel_mode="joint"),
        random_probe(32),
    )
    jo, jc = joint.decode(x), joint.decode(y)
    assert float((jc[:, 0] - jo[:, 0]).abs().max()) > 1e-4  # joint mixes members


def test_decode_patterns_then_merge_equals_predict():
    """Inference decodes each distinct pattern once; the result equals the per-group path."""
    model = make_pinn(32, gridsize=2, canvas_pad=8)
    torch.manual_seed(1)
    x = torch.rand(3, 4, 32, 32)
    off = INT_OFFSETS[None].expand(3, 4, 2).float()
    ref = model.predict(x, off)
    patches = model.decode_patterns(x.reshape(12, 32, 32)).reshape(3, 4, 32, 32)
    torch.testing.assert_close(model.predict_from_patches(patches, off), ref, rtol=1e-5, atol=1e-6)
    joint = make_pinn(32, gridsize=2, channel_mode="joint")
    with pytest.raises(ValueError, match="shared"):
        joint.decode_patterns(x[:, 0])


# --------------------------------------------------------------------------- merge weighting


def gaussian_probe(N: int, sigma: float = 3.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    r2 = ((yy - N // 2) ** 2 + (xx - N // 2) ** 2).double()
    return (torch.exp(-r2 / (2 * sigma**2)) * torch.exp(0.2j * xx)).to(torch.complex64)


def test_probe_merge_weight_is_window_times_normalised_intensity():
    N = 32
    probe = gaussian_probe(N)
    model = build_model({"kind": "pinn", "N": N, "gridsize": 2, "merge_weighting": "probe"}, probe)
    w = model.merge_weight()
    expected = probe.abs().square() / probe.abs().square().max() * central_window(N)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
    assert float(w.max()) == pytest.approx(1.0) and float(w[0, 0]) == 0.0
    assert torch.equal(model.merge_weight("flat"), central_window(N))
    with pytest.raises(ValueError, match="merge weighting: expected 'flat' or 'probe'"):
        model.merge_weight("gauss")


def test_probe_merge_of_equal_patches_is_that_value_wherever_covered():
    from ptychobench.models.pinn import merge_at_members
    from ptychobench.physics import shift_bilinear

    N, v = 32, 0.7 - 0.4j
    weight = gaussian_probe(N).abs().square()
    weight = weight / weight.max() * central_window(N)
    patches = torch.full((2, 4, N, N), v, dtype=torch.complex64) * central_window(N)
    for off in (INT_OFFSETS, SUB_OFFSETS):
        offsets = off[None].repeat(2, 1, 1)
        out = merge_at_members(patches, offsets, weight)
        # the coverage each member sees, recomputed independently
        rel = offsets[:, None, :, :] - offsets[:, :, None, :]
        cover = shift_bilinear(weight.expand(2, 4, 4, N, N), rel).sum(2)
        covered = cover > MERGE_MIN_WEIGHT
        assert int(covered.sum()) > 2 * 4 * 100
        torch.testing.assert_close(
            out[covered], torch.full_like(out[covered], v), rtol=0, atol=1e-5
        )
        assert bool((out[~covered] == 0).all())
        # the same through the canvas merge
        canvas, cw = merge_patches(patches, offsets, weight, 8)
        on = cw > MERGE_MIN_WEIGHT
        torch.testing.assert_close(canvas[on], torch.full_like(canvas[on], v), rtol=0, atol=1e-5)


def test_probe_merge_with_a_uniform_probe_equals_the_flat_merge():
    from ptychobench.models.pinn import merge_at_members

    N = 32
    g = torch.Generator().manual_seed(3)
    quarter = torch.tensor([1, -1, 1j, -1j], dtype=torch.complex64)
    uniform = quarter[torch.randint(0, 4, (N, N), generator=g)]  # |P| = 1 exactly
    flat = build_model({"kind": "pinn", "N": N, "gridsize": 2, "n_filters_scale": 0.25}, uniform)
    torch.manual_seed(0)
    prob = build_model(
        {
            "kind": "pinn",
            "N": N,
            "gridsize": 2,
            "n_filters_scale": 0.25,
            "merge_weighting": "probe",
        },
        uniform,
    )
    prob.load_state_dict(flat.state_dict())
    assert torch.equal(prob.merge_weight(), central_window(N))
    patches = random_object(N, N, 1).expand(3, 4, N, N) * central_window(N)
    off = SUB_OFFSETS[None].repeat(3, 1, 1)
    torch.testing.assert_close(
        merge_at_members(patches, off, prob.merge_weight()),
        merge_at_members(patches, off, central_window(N)),
        rtol=0,
        atol=0,
    )
    d = torch.rand(2, 4, N, N)
    torch.testing.assert_close(prob(d, off[:2]), flat(d, off[:2]), rtol=0, atol=0)
    # a non-uniform probe changes the physics of a probe-weighted model
    gp = gaussian_probe(N)
    a = build_model(flat.config.model_copy(update={"merge_weighting": "probe"}), gp)
    b = build_model(flat.config, gp)
    a.load_state_dict({**flat.state_dict(), "probe": gp})
    b.load_state_dict({**flat.state_dict(), "probe": gp})
    assert float((a(d, off[:2]) - b(d, off[:2])).abs().max()) > 1e-4


def test_per_member_weight_maps_equal_a_shared_map():
    from ptychobench.models.pinn import merge_at_members

    N = 32
    weight = gaussian_probe(N).abs().square() * central_window(N)
    patches = random_object(N, N, 2).expand(2, 4, N, N).clone() * central_window(N)
    off = SUB_OFFSETS[None].repeat(2, 1, 1)
    per = weight.expand(2, 4, N, N)
    torch.testing.assert_close(
        merge_at_members(patches, off, per), merge_at_members(patches, off, weight)
    )
    a, wa = merge_patches(patches, off, per, 8)
    b, wb = merge_patches(patches, off, weight, 8)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(wa, wb)


def test_predict_returns_the_merged_weight():
    N, pad = 32, 8
    model = make_pinn(N, gridsize=2, canvas_pad=pad)
    d = torch.rand(2, 4, N, N)
    off = INT_OFFSETS[None].repeat(2, 1, 1)
    ref = model.predict(d, off)
    out, w = model.predict(d, off, return_weight=True)
    assert torch.equal(out, ref)
    _, cw = merge_patches(model.decode(d), off, central_window(N), pad)
    torch.testing.assert_close(w, cw[:, pad : pad + N, pad : pad + N], rtol=0, atol=0)
    out_p, w_p = model.predict(d, off, weighting="probe", return_weight=True)
    pw = model.merge_weight("probe")
    _, cwp = merge_patches(model.decode(d), off, pw, pad)
    torch.testing.assert_close(w_p, cwp[:, pad : pad + N, pad : pad + N], rtol=0, atol=0)
    assert float((out_p - out).abs().max()) > 1e-4
    gs1 = make_pinn(N, gridsize=1)
    o1, w1 = gs1.predict(torch.rand(3, 1, N, N), weighting="probe", return_weight=True)
    assert w1.shape == (3, N, N) and torch.equal(w1[1], gs1.merge_weight("probe"))


def test_bundle_without_merge_weighting_loads_as_flat(tmp_path):
    import hashlib
    import json

    from ptychobench.models.bundle import load_bundle, save_bundle

    model = make_pinn(32, gridsize=2)
    hist = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "lr": 1e-3, "seconds": 0.1}]
    path = save_bundle(model, tmp_path / "m", history=hist, training={"seed": 0}, data={"N": 32})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model"].pop("merge_weighting") == "flat"
    (path / "config.json").write_text(json.dumps(cfg))  # as written before the field existed
    sums = []
    for line in (path / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if name.strip() == "config.json":
            digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
        sums.append(f"{digest}  {name.strip()}")
    (path / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    net, config = load_bundle(path)
    assert "merge_weighting" not in config["model"]
    assert net.config.merge_weighting == "flat"
    assert torch.equal(net.merge_weight(), central_window(32))
