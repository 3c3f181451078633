"""Calibration of a regression predictive: the mixture over S draws of N(draw_s, sigma), in float64.

``draws`` is an (examples x S) tensor of predictions, ``targets`` an (examples,) tensor and ``scale``
the Gaussian likelihood's sigma.  Scores: the mixture's NLL; the quantile calibration error of
Kuleshov et al. 2018 (the mean over levels q of |share of targets below the predicted q-quantile - q|);
the CRPS in closed form for a Gaussian mixture (Grimit et al. 2006), the regression counterpart of the
Brier score; :func:`fit_noise_scale`, the counterpart of temperature scaling (the sigma that minimizes
the NLL on held-out rows); and :func:`residual_noise_scale`, the noise around each draw when sigma was
learned under the posterior.
"""

from __future__ import annotations

import math

import torch

from .kinds import positive_int

__all__ = ["crps", "fit_noise_scale", "mixture_log_density", "mixture_nll", "probability_integral_transform",
           "quantile_calibration_error", "quantile_coverage", "regression_calibration", "residual_noise_scale"]

RESIDUAL_FLOOR = 0.1  # the residual noise is kept at least this share of the learned one


def _prepare(draws: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if draws.dim() != 2 or targets.dim() != 1 or draws.shape[0] != targets.shape[0] or draws.shape[0] == 0:
        raise ValueError(f"draws must be (examples x draws) and targets (examples,), non-empty; got shapes "
                         f"{tuple(draws.shape)} and {tuple(targets.shape)}")
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale = {scale!r} must be a finite number > 0 (the noise standard deviation)")
    return draws.detach().double().cpu(), targets.detach().double().cpu()


def _log_density(draws: torch.Tensor, targets: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log F_i'(y_i) per example, differentiable in ``log_scale``."""
    z = (targets[:, None] - draws) / log_scale.exp()
    per_draw = -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)
    return per_draw.logsumexp(-1) - math.log(draws.shape[1])


def mixture_log_density(draws: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """Per example, the log density of the predictive mixture at the target."""
    draws, targets = _prepare(draws, targets, scale)
    return _log_density(draws, targets, torch.tensor(math.log(scale), dtype=torch.float64))


def mixture_nll(draws: torch.Tensor, targets: torch.Tensor, scale: float) -> float:
    """Mean -log density of the predictive mixture at the targets."""
    return -mixture_log_density(draws, targets, scale).mean().item()


def probability_integral_transform(draws: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """F_i(y_i): the predictive CDF at each target, uniform on [0, 1] when the predictive is calibrated."""
    draws, targets = _prepare(draws, targets, scale)
    return torch.special.ndtr((targets[:, None] - draws) / scale).mean(-1)


def quantile_coverage(pit: torch.Tensor, num_levels: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """(the levels q_k = (k + 1/2) / num_levels, the share of PIT values <= q_k): a calibration curve."""
    positive_int.check("num_levels", num_levels)
    levels = (torch.arange(num_levels, dtype=torch.float64) + 0.5) / num_levels
    return levels, (pit.detach().double().cpu()[:, None] <= levels).double().mean(0)


def quantile_calibration_error(pit: torch.Tensor, num_levels: int = 15) -> float:
    """Mean over the levels q_k of |share of PIT values <= q_k - q_k| (:func:`quantile_coverage`)."""
    levels, observed = quantile_coverage(pit, num_levels)
    return (observed - levels).abs().mean().item()


def _expected_abs(mean: torch.Tensor, std: float) -> torch.Tensor:
    """E|X| for X ~ N(mean, std^2)."""
    z = mean / std
    return std * (z * (2 * torch.special.ndtr(z) - 1) + 2 * torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi))


def crps(draws: torch.Tensor, targets: torch.Tensor, scale: float) -> float:
    """Mean CRPS of the Gaussian mixture: E|X - y| - E|X - X'| / 2, each term in closed form."""
    draws, targets = _prepare(draws, targets, scale)
    to_target = _expected_abs(targets[:, None] - draws, scale).mean(-1)
    between = _expected_abs(draws[:, :, None] - draws[:, None, :], math.sqrt(2) * scale).mean((-1, -2))
    return (to_target - between / 2).mean().item()


def fit_noise_scale(draws: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The noise scale sigma > 0 minimizing the predictive mixture's NLL on held-out rows (L-BFGS over log
    sigma), started at the root mean squared error of the draws' mean."""
    draws, targets = _prepare(draws, targets, 1.0)
    rmse = (draws.mean(-1) - targets).pow(2).mean().sqrt().clamp_min(1e-6)
    log_scale = rmse.log().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([log_scale], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -_log_density(draws, targets, log_scale).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_scale.detach().exp())


def residual_noise_scale(scale: float, draw_variance: float) -> float:
    """The noise around each posterior draw, so that the predictive mixture of N(f_s, s) counts the draws'
    spread once.  A sigma learned under q maximizes E_q[log N(y | f, sigma)], so sigma^2 fits
    E_q[(y - f)^2] = (y - E_q f)^2 + Var_q f averaged over the training rows: the spread is already in it,
    and the mixture adds it again.  s^2 = sigma^2 - ``draw_variance`` (the mean over training rows of the
    draws' variance), at least ``RESIDUAL_FLOOR`` * sigma."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale = {scale!r} must be a finite number > 0 (the learned noise standard deviation)")
    if not (draw_variance >= 0 and math.isfinite(draw_variance)):
        raise ValueError(f"draw_variance = {draw_variance!r} must be a finite number >= 0")
    return math.sqrt(max(scale**2 - draw_variance, (RESIDUAL_FLOOR * scale) ** 2))


def regression_calibration(draws: torch.Tensor, targets: torch.Tensor, scale: float,
                           num_levels: int = 15) -> dict[str, float]:
    """``nll``, ``ece`` (the quantile calibration error) and ``crps`` of the predictive mixture."""
    pit = probability_integral_transform(draws, targets, scale)
    return {"nll": mixture_nll(draws, targets, scale), "ece": quantile_calibration_error(pit, num_levels),
            "crps": crps(draws, targets, scale)}
