"""Supervised PtychoNN-style baseline: shapes, flattening, loss, config, costs."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from ptychobench.models import (
    Baseline,
    ModelConfig,
    build_model,
    conv_flops,
    count_parameters,
    flops_per_pattern,
)
from ptychobench.models.baseline import flatten_patterns, supervised_loss, wrap_phase
from ptychobench.models.blocks import count_conv_flops_measured
from ptychobench.simulate import SimulationConfig, simulate

torch.set_num_threads(1)


def make_baseline(N: int = 32, s: float = 0.25, **kw) -> Baseline:
    torch.manual_seed(0)
    model = build_model({"kind": "baseline", "N": N, "n_filters_scale": s, **kw})
    assert isinstance(model, Baseline)
    return model


def random_patches(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + 0.5 * torch.rand(*shape, generator=g)
    phase = (torch.rand(*shape, generator=g) * 2 - 1) * math.pi
    return torch.polar(amp, phase)


@pytest.mark.parametrize("N", [32, 64])
@pytest.mark.parametrize("C", [1, 4])
@pytest.mark.parametrize("s", [0.25, 1.0])
def test_shapes_dtypes_and_gradients(N, C, s):
    model = make_baseline(N, s, amplitude_max=1.5)
    B = 2
    d = torch.rand(B, C, N, N) * 3
    amp, phase = model(d)
    assert amp.shape == phase.shape == (B * C, N, N)
    assert amp.dtype == phase.dtype == torch.float32
    assert 0 < float(amp.min()) and float(amp.max()) < 1.5
    assert -math.pi < float(phase.min()) and float(phase.max()) < math.pi
    pred = model.predict(d, torch.zeros(B, C, 2))
    assert pred.shape == (B * C, N, N) and pred.dtype == torch.complex64
    assert not pred.requires_grad
    batch = {"diffraction": d, "offsets": torch.zeros(B, C, 2), "Y": random_patches(B, C, N, N)}
    loss = model.loss(batch)
    assert loss.ndim == 0 and math.isfinite(float(loss))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_flattening_is_group_major_and_offsets_ignored():
    model = make_baseline(32)
    d = torch.rand(3, 4, 32, 32)
    grouped = model.predict(d, torch.zeros(3, 4, 2))
    single = model.predict(d.reshape(12, 1, 32, 32))
    torch.testing.assert_close(grouped, single, rtol=1e-5, atol=1e-6)
    # pattern (b, c) is output b·C + c
    torch.testing.assert_close(
        grouped[2 * 4 + 1], model.predict(d[2:3, 1:2])[0], rtol=1e-5, atol=1e-6
    )
    # the baseline never sees positions: huge absolute offsets change nothing
    torch.testing.assert_close(model.predict(d, torch.full((3, 4, 2), 273.0)), grouped)
    torch.testing.assert_close(model.predict(d, None), grouped)


def test_non_square_channel_count_rejected():
    model = make_baseline(32)
    with pytest.raises(ValueError, match="5 channels is not a square gridsize"):
        model.predict(torch.rand(2, 5, 32, 32))
    with pytest.raises(ValueError, match="5 channels is not a square gridsize"):
        flatten_patterns(torch.rand(2, 5, 32, 32), 32)
    with pytest.raises(ValueError, match=r"expected 32×32 patterns \(model N = 32\), found 64×64"):
        model.predict(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expected shape \(B, C, 32, 32\)"):
        model.predict(torch.rand(2, 32, 32))
    assert flatten_patterns(torch.rand(2, 9, 32, 32), 32).shape == (18, 1, 32, 32)


def test_wrap_phase_and_loss_values():
    d = torch.tensor([0.0, math.pi - 0.1, -math.pi + 0.1, 2 * math.pi - 0.2, 3.0 * math.pi])
    w = wrap_phase(d)
    torch.testing.assert_close(w[:4], torch.tensor([0.0, math.pi - 0.1, -math.pi + 0.1, -0.2]))
    assert abs(abs(float(w[4])) - math.pi) < 1e-5
    Y = random_patches(6, 8, 8, seed=1)
    zero = supervised_loss(Y.abs(), torch.angle(Y), Y)
    assert float(zero) < 1e-6
    # amplitude error 0.1 everywhere, phase error across the branch cut: 0.2, not 2π − 0.2
    target = torch.polar(torch.ones(4, 8, 8), torch.full((4, 8, 8), -math.pi + 0.1))
    loss = supervised_loss(torch.full((4, 8, 8), 0.9), torch.full((4, 8, 8), math.pi - 0.1), target)
    assert float(loss) == pytest.approx(0.1 + 0.2, abs=1e-5)
    # the phase part has gradient ±1 per element (mean → 1/numel)
    phase = torch.full((4, 8, 8), math.pi - 0.1, requires_grad=True)
    supervised_loss(torch.ones(4, 8, 8), phase, target).backward()
    torch.testing.assert_close(phase.grad, torch.full_like(phase, -1.0 / phase.numel()))


def test_loss_needs_matching_ground_truth():
    model = make_baseline(32)
    d = torch.rand(2, 4, 32, 32)
    with pytest.raises(ValueError, match="key 'Y'"):
        model.loss({"diffraction": d, "offsets": torch.zeros(2, 4, 2)})
    with pytest.raises(ValueError, match=r"expected 8 patches of 32×32"):
        model.loss({"diffraction": d, "Y": random_patches(2, 1, 32, 32)})
    out = model(d)
    Y = random_patches(2, 4, 32, 32)
    batch = {"diffraction": d, "Y": Y}
    torch.testing.assert_close(model.loss(batch), model.loss_from_output(out, batch))
    torch.testing.assert_close(
        model.loss(batch), supervised_loss(out[0], out[1], Y.reshape(8, 32, 32))
    )


def test_training_steps_reduce_loss():
    torch.manual_seed(2)
    N = 32
    ds = simulate(
        SimulationConfig(
            N=N, object="grf", object_size=64, scan="raster", step_px=8, dose=1e5, seed=2
        )
    )
    d = torch.from_numpy(ds.diffraction)[:16, None]
    Y = torch.from_numpy(ds.Y)[:16, None]
    input_scale = math.sqrt((N / 2) ** 2 / float(d.square().sum(dim=(-2, -1)).mean()))
    model = make_baseline(N, input_scale=input_scale, amplitude_max=1.1)
    batch = {"diffraction": d, "Y": Y}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.loss(batch))
    for _ in range(20):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch)) < 0.8 * first


def test_build_model_roundtrip_and_bad_configs():
    model = make_baseline(32, input_scale=0.5, gridsize=2)
    cfg = model.config.model_dump(mode="json")
    assert cfg["kind"] == "baseline" and cfg["input_scale"] == 0.5
    rebuilt = build_model(cfg, None)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    d = torch.rand(1, 4, 32, 32)
    assert torch.equal(rebuilt.predict(d), model.predict(d))
    # a probe passed for uniformity is ignored and not stored
    with_probe = build_model(cfg, torch.ones(32, 32, dtype=torch.complex64))
    assert list(with_probe.state_dict()) == list(model.state_dict())
    for bad, field in [
        ({"kind": "supervised"}, "kind"),
        ({"N": 30}, "N"),
        ({"n_filters_scale": -1}, "n_filters_scale"),
        ({"extra_key": 1}, "extra_key"),
    ]:
        with pytest.raises(ValidationError, match=field):
            build_model({"kind": "baseline", "N": 32, **bad})
    with pytest.raises(TypeError, match="expected a dict or ModelConfig"):
        build_model("baseline")  # type: ignore[arg-type]


def test_parameter_and_flop_counts(capsys):
    rows = []
    for s in (0.25, 0.5, 1.0, 2.0):
        cfg = ModelConfig(kind="baseline", N=64, n_filters_scale=s)
        model = build_model(cfg)
        rows.append((s, count_parameters(model), flops_per_pattern(cfg)))
        if s <= 1.0:
            assert count_conv_flops_measured(model, torch.rand(1, 1, 64, 64)) == conv_flops(cfg)
    with capsys.disabled():
        for s, p, f in rows:
            print(f"\nBaseline N=64 s={s}: {p:,} parameters, {f / 1e9:.3f} GFLOP/pattern")
    by_s = {s: (p, f) for s, p, f in rows}
    assert by_s[1.0][0] == 1_154_210  # reference PtychoNN-style baseline: ≈1.15 M at s = 1
    assert by_s[2.0][0] == 4_612_418  # reference: ≈4.61 M at s = 2
    assert by_s[1.0][1] == pytest.approx(0.611057664e9)


def test_input_statistics_standardise_the_training_inputs():
    from ptychobench.models import build_model

    torch.manual_seed(0)
    m = build_model({"kind": "baseline", "N": 16, "n_filters_scale": 0.25, "input_scale": 2.0})
    d = torch.rand(200, 1, 16, 16) * torch.linspace(0.1, 3, 16)
    m.set_input_statistics(d)
    x = (d[:, 0] * 2.0 - m.input_mean) / m.input_std
    assert torch.allclose(x.mean(0), torch.zeros(16, 16), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(16, 16), atol=1e-3)
    state = m.state_dict()
    assert "input_mean" in state and "input_std" in state  # travels in the bundle
    m2 = build_model(m.config.model_dump(mode="json"))
    m2.load_state_dict(state)
    assert torch.equal(m2.input_std, m.input_std)
