import math

import pytest
import torch

from ptychobench.physics import dose_scale, make_generator, poisson_counts


def test_dose_scale_formula():
    assert math.isclose(dose_scale(4.0, 100.0), 5.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_dose_scale_rejects_bad_dose(bad):
    with pytest.raises(ValueError, match="dose"):
        dose_scale(1.0, bad)


def test_dose_scale_rejects_zero_energy():
    with pytest.raises(ValueError, match="energy"):
        dose_scale(0.0, 10.0)


def test_poisson_mean_and_variance_at_low_dose():
    lam = torch.full((200_000,), 3.7, dtype=torch.float64)
    n = poisson_counts(lam, make_generator(3))
    assert torch.equal(n, n.round())
    se = math.sqrt(3.7 / lam.numel())
    assert abs(float(n.mean()) - 3.7) < 4 * se
    assert abs(float(n.var()) / 3.7 - 1) < 0.02


def test_seeded_and_reproducible():
    lam = torch.rand(1000, dtype=torch.float64) * 10
    a = poisson_counts(lam, make_generator(7))
    b = poisson_counts(lam, make_generator(7))
    c = poisson_counts(lam, make_generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_negative_rate_rejected():
    with pytest.raises(ValueError, match="negative"):
        poisson_counts(torch.tensor([-1.0]), make_generator(0))
