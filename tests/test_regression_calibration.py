"""The regression predictive's scores against scipy (density, CDF) and Monte Carlo (CRPS), and the
quantile ECE and the refitted noise scale on data drawn from a known predictive; the residual noise
scale on a conjugate linear-Gaussian regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from monteclora_pyro.regression_calibration import (
    crps,
    fit_noise_scale,
    mixture_nll,
    probability_integral_transform,
    quantile_calibration_error,
    regression_calibration,
    residual_noise_scale,
)


def mixture_data(n: int = 3000, draws: int = 5, scale: float = 0.7, seed: int = 0):
    """Per-example draws and a target drawn from their Gaussian mixture with noise ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 1, generator=generator) + 0.5 * torch.randn(n, draws, generator=generator)
    pick = torch.randint(draws, (n,), generator=generator)
    targets = means[torch.arange(n), pick] + scale * torch.randn(n, generator=generator)
    return means, targets


def test_nll_and_pit_match_scipys_mixture():
    draws, targets = mixture_data(200)
    x, mu = targets.double().numpy()[:, None], draws.double().numpy()
    density = stats.norm.pdf(x, mu, 0.7).mean(1)
    assert mixture_nll(draws, targets, 0.7) == pytest.approx(-np.log(density).mean(), rel=1e-9)
    pit = probability_integral_transform(draws, targets, 0.7)
    np.testing.assert_allclose(pit.numpy(), stats.norm.cdf(x, mu, 0.7).mean(1), rtol=1e-9)


def test_crps_matches_monte_carlo():
    draws, targets = mixture_data(300, seed=1)
    generator = torch.Generator().manual_seed(2)
    rows = torch.arange(300)[:, None]

    def sample():
        return draws.double()[rows, torch.randint(5, (300, 20000), generator=generator)] + \
            0.7 * torch.randn(300, 20000, generator=generator, dtype=torch.float64)

    first, second = sample(), sample()
    monte_carlo = ((first - targets.double()[:, None]).abs() - 0.5 * (first - second).abs()).mean()
    assert crps(draws, targets, 0.7) == pytest.approx(float(monte_carlo), rel=5e-3)
    # one draw: the closed form of a single Gaussian (Gneiting and Raftery 2007)
    z = (targets.double() - draws[:, 0].double()) / 0.7
    single = 0.7 * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert crps(draws[:, :1], targets, 0.7) == pytest.approx(float(single.mean()), rel=1e-9)


def test_quantile_ece_is_small_when_calibrated_and_grows_with_over_or_under_confidence():
    draws, targets = mixture_data()
    calibrated = quantile_calibration_error(probability_integral_transform(draws, targets, 0.7))
    overconfident = quantile_calibration_error(probability_integral_transform(draws, targets, 0.2))
    underconfident = quantile_calibration_error(probability_integral_transform(draws, targets, 3.0))
    assert calibrated < 0.02 < 0.05 < min(overconfident, underconfident)
    # every PIT value at 0 (all targets below every quantile): the error is the mean of 1 - q_k = 1/2
    assert quantile_calibration_error(torch.zeros(10), num_levels=15) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_levels = 0 must be an integer >= 1"):
        quantile_calibration_error(torch.zeros(10), num_levels=0)


def test_fitted_noise_scale_recovers_the_scale_that_made_the_targets():
    for true_scale in (0.3, 1.5):
        draws, targets = mixture_data(20000, scale=true_scale, seed=3)
        assert fit_noise_scale(draws, targets) == pytest.approx(true_scale, rel=0.05)
    scores = regression_calibration(*mixture_data(), 0.7)
    assert set(scores) == {"nll", "ece", "crps"}


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_bad_scale_is_named(scale):
    with pytest.raises(ValueError, match="scale = .* must be a finite number > 0"):
        mixture_nll(*mixture_data(10), scale)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"draws must be \(examples x draws\).*got shapes \(10,\) and \(10,\)"):
        crps(torch.zeros(10), torch.zeros(10), 1.0)


def _linear_regression(n: int, weights: torch.Tensor, noise: float, generator: torch.Generator):
    inputs = torch.randn(n, len(weights), generator=generator, dtype=torch.float64)
    return inputs, inputs @ weights + noise * torch.randn(n, generator=generator, dtype=torch.float64)


def test_the_residual_noise_counts_the_draws_spread_once():
    """Bayesian linear regression (prior N(0, I), noise 0.5), with the sigma an ELBO learns under q in closed
    form: sigma^2 = mean_i E_q[(y_i - x_i w)^2].  Under the exact posterior that sigma is the true noise and
    the residual one keeps it (the spread on the training rows is d/n of it); under a q whose spread is
    inflated by hand (20 times the posterior's std), sigma absorbs the spread, and the residual noise takes
    it out again: the predictive mixture on fresh rows then has a lower NLL and a mean variance equal to
    the learned sigma^2, instead of sigma^2 plus the spread a second time."""
    generator = torch.Generator().manual_seed(0)
    noise, weights = 0.5, torch.randn(3, generator=generator, dtype=torch.float64)
    inputs, targets = _linear_regression(400, weights, noise, generator)
    fresh_inputs, fresh_targets = _linear_regression(4000, weights, noise, generator)
    covariance = torch.linalg.inv(torch.eye(3, dtype=torch.float64) + inputs.T @ inputs / noise**2)
    mean = covariance @ inputs.T @ targets / noise**2
    for inflation in (1.0, 20.0):
        q_covariance = inflation**2 * covariance
        spread = torch.einsum("nd,de,ne->n", inputs, q_covariance, inputs)  # Var_q[x_i w] per training row
        learned = float(((targets - inputs @ mean) ** 2 + spread).mean().sqrt())
        residual = residual_noise_scale(learned, float(spread.mean()))
        assert residual**2 == pytest.approx(learned**2 - float(spread.mean()), rel=1e-12)
        draws = mean + torch.randn(64, 3, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(
            q_covariance).T
        predictions = fresh_inputs @ draws.T  # fresh rows x draws
        if inflation == 1.0:
            assert learned == pytest.approx(noise, rel=0.1)
            assert residual == pytest.approx(learned, rel=0.02)
        else:
            assert learned > 1.3 * noise
            assert mixture_nll(predictions, fresh_targets, residual) < mixture_nll(predictions, fresh_targets, learned)
            assert residual**2 + float(predictions.var(1).mean()) == pytest.approx(learned**2, rel=0.15)
    assert residual_noise_scale(1.0, 4.0) == pytest.approx(0.1)  # a spread beyond sigma^2: the floor
    with pytest.raises(ValueError, match="draw_variance = -1.0 must be a finite number >= 0"):
        residual_noise_scale(1.0, -1.0)
    with pytest.raises(ValueError, match="scale = 0.0 must be a finite number > 0"):
        residual_noise_scale(0.0, 0.0)
