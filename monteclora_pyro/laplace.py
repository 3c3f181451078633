"""The Laplace approximation over the LoRA factors (Laplace-LoRA, arXiv 2308.13111), diagonal or Kronecker-factored.

After training, q(theta) = N(theta*, (GGN + delta I)^-1) over the stochastic factors, where the
generalized Gauss-Newton of the training set's negative log-likelihood at theta* is
``sum_n J_n^T Lambda_n J_n`` (J_n: the Jacobian of example n's network output, Lambda_n: the
likelihood's Hessian in the output), approximated by its diagonal or, per factor, by a Kronecker
product (K-FAC), and the prior precision delta maximizes the Laplace approximation of the marginal
likelihood.  Both approximations are kept as eigenvalues in an eigenbasis (the identity for the
diagonal; U (x) V for a Kronecker factor G (x) A = U diag(g) U^T (x) V diag(a) V^T), where the
posterior precision is diagonal: eigenvalues + delta.  Its predictive is either the linearized model's
(the network's output is Gaussian, N(f*, J Sigma J^T), read through the probit approximation) or
the network's under draws of theta.

Per-example gradients of a LoRA factor are outer products of the factor's input and its output's
gradient (as BackPACK and ASDL compute them), taken here from one forward pass with hooks on the
factors' linear maps; ``laplace-torch`` does this on whole models, but needs torchvision, and the
posterior here must stay the engine's (its sites, groups and guides).  The task head stays a point
estimate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .prediction import move_to

__all__ = ["HOLDOUT_GRID", "LINEARIZATION_STEP", "FactorGradients", "diagonal_ggn", "finite_difference_draws",
           "holdout_prior_precision", "kronecker_ggn", "linear_output_covariance", "linearized_values",
           "log_evidence", "optimal_prior_precision", "probit_scale", "rotate_rows"]

LINEARIZATION_STEP = 1e-2  # finite_difference_draws' largest step, relative to the factors' norm
HOLDOUT_GRID = tuple(10.0 ** (k / 4) for k in range(-24, 25))  # holdout_prior_precision's deltas: 1e-6 to 1e6


class FactorGradients:
    """Per-example gradients of scalar outputs with respect to the stochastic factors, for one forward pass.

    Inside the ``with`` block, the forward pass records every factor's input and output; :meth:`per_example`
    then gives, for one output column (a scalar per example), its gradient with respect to each factor, stacked like the
    engine's site groups: {group key: (examples, layers, *factor shape)}.  Examples must not interact
    (no batch norm): the gradient of a sum over examples is then each example's own.
    """

    def __init__(self, module) -> None:
        self.module = module
        self.records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._handles: list = []

    def __enter__(self) -> FactorGradients:
        for site in self.module.sites:
            layer = self.module._layers[site.parameter]

            def record(_layer, inputs, output, parameter=site.parameter):
                self.records.setdefault(parameter, []).append((inputs[0].detach(), output))

            self._handles.append(layer.register_forward_hook(record))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def output_gradients(self, outputs: torch.Tensor, column: int) -> dict[str, list[torch.Tensor]]:
        """{PEFT parameter name: d outputs[:, column].sum() / d the factor's output, one per recorded call}."""
        parameters = [s.parameter for s in self.module.sites]
        with torch.enable_grad():  # the column's sum is a node of the recorded graph, whatever the caller's mode
            total = outputs[:, column].sum()
        recorded = [output for p in parameters for _, output in self.records[p]]
        grads = iter(torch.autograd.grad(total, recorded, retain_graph=True))
        return {p: [next(grads) for _ in self.records[p]] for p in parameters}

    def per_example(self, outputs: torch.Tensor, column: int) -> dict[str, torch.Tensor]:
        """{group key: d outputs[n, column] / d factor, (examples x layers x *shape)} for the recorded pass's
        outputs (examples x K)."""
        per_site = {}
        for parameter, grads in self.output_gradients(outputs, column).items():
            total = None
            for (inputs, _), grad in zip(self.records[parameter], grads, strict=True):
                n = grad.shape[0]
                term = torch.einsum("nto,nti->noi", grad.reshape(n, -1, grad.shape[-1]).float(),
                                    inputs.reshape(n, -1, inputs.shape[-1]).float())
                total = term if total is None else total + term
            per_site[parameter] = total
        return {g.key: torch.stack([per_site[s.parameter] for s in g.sites], dim=1) for g in self.module.groups}

    def mean_inputs(self, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{PEFT parameter name: each example's factor input averaged over its tokens (examples x in)}, over
        the tokens ``attention_mask`` (examples x tokens) keeps where it fits the recorded inputs' shape."""
        means = {}
        for parameter, records in self.records.items():
            total, count = 0.0, 0.0
            for inputs, _ in records:
                n = inputs.shape[0]
                tokens = inputs.reshape(n, -1, inputs.shape[-1]).float()
                if attention_mask is not None and attention_mask.shape == tokens.shape[:2]:
                    weights = attention_mask.to(tokens.dtype)[:, :, None]
                else:
                    weights = tokens.new_ones(*tokens.shape[:2], 1)
                total, count = total + (weights * tokens).sum(1), count + weights.sum(1)
            means[parameter] = total / count
        return means


def _outputs_with_gradients(module, batch: Mapping[str, torch.Tensor], read: Callable[[torch.Tensor], torch.Tensor]
                            ) -> tuple[torch.Tensor, FactorGradients]:
    """``read`` of the network output (posterior mean) on ``batch`` (examples x K), with the factors' records
    for :meth:`FactorGradients.per_example` of its columns."""
    recorder = FactorGradients(module)
    with torch.enable_grad(), recorder:
        outputs = read(module.network_output(batch, {}))
    return outputs, recorder


def diagonal_ggn(module, loader: Iterable, device: torch.device) -> dict[str, torch.Tensor]:
    """The diagonal of the generalized Gauss-Newton of the negative log-likelihood over ``loader``'s rows, at the
    posterior mean: {group key: (layers x *factor shape)}.  The likelihood gives Lambda's square root as K
    scalar outputs per example (``ggn_outputs``: Lambda_n = sum_k g_nk g_nk^T in the output's gradients), so
    it costs one forward and K backward passes a batch (K = 1 for binary classification, regression and a causal
    LM's Monte Carlo Fisher)."""
    module.eval()
    total = {g.key: torch.zeros(len(g.sites), *g.shape, device=device) for g in module.groups}
    for batch in loader:
        batch = move_to(batch, device)
        read = functools.partial(module.likelihood.ggn_outputs, batch=batch)
        directions, recorder = _outputs_with_gradients(module, batch, read)
        for k in range(directions.shape[1]):
            for key, grad in recorder.per_example(directions, k).items():
                total[key] += grad.square().sum(0)
    return total


def kronecker_ggn(module, loader: Iterable, device: torch.device
                  ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The Kronecker-factored GGN (K-FAC) of the negative log-likelihood over ``loader``'s rows at the posterior
    mean, per factor W (out x in): G (x) A with A = mean_n abar_n abar_n^T and G = sum_n,k g_nk g_nk^T,
    abar_n the factor's input averaged over example n's tokens and g_nk the gradient of its k-th GGN output
    (:meth:`~monteclora_pyro.likelihoods.CategoricalLikelihood.ggn_outputs`) with respect to the factor's
    output summed over them: K-FAC-reduce (Eschenhagen et al. 2023), for a loss read once per sequence, as a
    classification head's is.  It is exact for one token per example and outputs of one dimension whose
    Lambda_n is the same for every row (a linear-Gaussian model).

    Returns the eigenvalues g_a a_b of G (x) A ({group key: layers x out x in}) and the eigenbases
    ({group key: (U: layers x out x out, V: layers x in x in)}, eigenvectors in columns)."""
    module.eval()
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    count = 0
    for batch in loader:
        batch = move_to(batch, device)
        read = functools.partial(module.likelihood.ggn_outputs, batch=batch)
        directions, recorder = _outputs_with_gradients(module, batch, read)
        for parameter, mean in recorder.mean_inputs(batch.get("attention_mask")).items():
            inputs[parameter] = inputs.get(parameter, 0.0) + mean.T @ mean
        for k in range(directions.shape[1]):
            for parameter, grads in recorder.output_gradients(directions, k).items():
                g = sum(grad.reshape(grad.shape[0], -1, grad.shape[-1]).float().sum(1) for grad in grads)
                outputs[parameter] = outputs.get(parameter, 0.0) + g.T @ g
        count += len(directions)
    eigenvalues, bases = {}, {}
    for group in module.groups:
        values, vectors = [], []
        for site in group.sites:
            a_values, a_vectors = torch.linalg.eigh(inputs[site.parameter].double() / count)
            g_values, g_vectors = torch.linalg.eigh(outputs[site.parameter].double())
            values.append(g_values.clamp(min=0)[:, None] * a_values.clamp(min=0)[None, :])
            vectors.append((g_vectors, a_vectors))
        eigenvalues[group.key] = torch.stack(values).float()
        bases[group.key] = (torch.stack([u for u, _ in vectors]).float(), torch.stack([v for _, v in vectors]).float())
    return eigenvalues, bases


def rotate_rows(rows: torch.Tensor, basis: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Jacobian rows of one group's factors (... x layers*out*in, row-major) in its Kronecker eigenbasis
    (U^T J V per layer); ``basis`` None (a diagonal posterior): the rows as they are."""
    if basis is None:
        return rows
    u, v = basis
    matrices = rows.reshape(*rows.shape[:-1], *u.shape[:2], v.shape[-1])
    return (u.transpose(-1, -2) @ matrices @ v).flatten(-3)


def _jacobian_rows(module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The likelihood's linearized outputs at the posterior mean (examples x K) and their Jacobians with
    respect to each group's factors, {group key: examples x K x parameters}."""
    outputs, recorder = _outputs_with_gradients(module, batch, module.likelihood.linear_outputs)
    jacobians = [recorder.per_example(outputs, k) for k in range(outputs.shape[1])]
    return outputs.detach(), {key: torch.stack([j[key].flatten(1) for j in jacobians], dim=1).detach()
                              for key in jacobians[0]}


def linear_output_covariance(module, batch: Mapping[str, torch.Tensor], variances: Mapping[str, torch.Tensor],
                             bases: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, C): the likelihood's linearized outputs at the posterior mean (examples x K) and their covariance
    under a Gaussian posterior diagonal in each group's eigenbasis (``bases``, :func:`rotate_rows`; none: the
    factors' own) with the given ``variances`` there ({group key: layers x *shape}),
    C_n = J_n Sigma J_n^T (examples x K x K)."""
    outputs, rows = _jacobian_rows(module, batch)
    covariance = outputs.new_zeros(outputs.shape[0], outputs.shape[1], outputs.shape[1])
    for key, variance in variances.items():
        rotated = rotate_rows(rows[key], (bases or {}).get(key))
        covariance += torch.einsum("nkp,nmp->nkm", rotated * variance.flatten(), rotated)
    return outputs, covariance


def holdout_prior_precision(module, loader: Iterable, device: torch.device, ggn: Mapping[str, torch.Tensor],
                            grid: Iterable[float] = HOLDOUT_GRID,
                            bases: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                            ) -> tuple[float, dict[str, float]]:
    """The prior precision delta of ``grid`` whose linearized predictive, with the posterior variances
    1 / (``ggn`` + delta) (the GGN's eigenvalues, in ``bases`` where it is Kronecker-factored), has the lowest
    mean NLL on ``loader``'s rows (held out from training), and that NLL at every delta ({delta: NLL}).  The
    Jacobians are taken once; each delta then costs a few products."""
    module.eval()
    batches = []
    for batch in loader:
        batch = move_to(batch, device)
        outputs, rows = _jacobian_rows(module, batch)
        rotated = {key: rotate_rows(value, (bases or {}).get(key)) for key, value in rows.items()}
        batches.append((outputs, rotated, batch["labels"]))
    scores = {}
    for delta in grid:
        total, count = 0.0, 0
        for outputs, rows, labels in batches:
            covariance = outputs.new_zeros(outputs.shape[0], outputs.shape[1], outputs.shape[1])
            for key, h in ggn.items():
                covariance += torch.einsum("nkp,nmp->nkm", rows[key] / (h.flatten() + delta), rows[key])
            total -= float(module.likelihood.linearized_log_density(outputs, covariance, labels).sum())
            count += len(labels)
        scores[f"{delta:.3g}"] = total / count
    best = min(scores, key=scores.get)
    return float(best), scores


def finite_difference_draws(module, num_samples: int, step: float = LINEARIZATION_STEP
                            ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """For ``num_samples`` posterior draws theta_s, the factors theta* + h_s delta_s and theta* - h_s delta_s
    (delta_s = theta_s - theta*; {PEFT parameter name: value}, 2 per draw, in that order) and the steps h_s:
    the network there gives the linearized network's draw f* + J delta_s by :func:`linearized_values`, from
    forward passes alone.  h_s = ``step`` / max(1, ||delta_s|| / ||theta*||), so the points stay within
    ``step`` of theta* relative to its norm however wide the posterior.

    For a network whose Jacobian-vector products cost more than two forward passes (a causal LM scoring
    answer options through a shared key/value cache: forward-mode AD costs 3.5 forward passes, exact
    Jacobians K backward passes per option), this is the linearized predictive by Monte Carlo (the GLM
    predictive of Immer et al. 2021).  Central differences err by h^2/6 times the third derivative along
    delta; checked against forward-mode AD in ``tests/test_shift.py``."""
    draws, steps = [], []
    for _ in range(num_samples):
        draw = module.posterior_draw()
        means = {name: module.network.get_parameter(name).detach() for name in draw}
        ratio = (sum(float((draw[n] - means[n]).square().sum()) for n in draw)
                 / max(sum(float(m.square().sum()) for m in means.values()), 1e-30)) ** 0.5
        steps.append(step / max(1.0, ratio))
        for sign in (1.0, -1.0):
            draws.append({n: means[n] + sign * steps[-1] * (value - means[n]) for n, value in draw.items()})
    return draws, torch.tensor(steps)


def linearized_values(base: torch.Tensor, shifted: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """f* + (f(theta* + h_s delta_s) - f(theta* - h_s delta_s)) / 2 h_s, the linearized network's outputs under
    each draw, from the outputs at :func:`finite_difference_draws`'s factors (``shifted``: examples x 2 draws x
    K, pairs in order) and at theta* (``base``: examples x 1 x K); an output that is -inf at theta* (a padded
    answer option) stays -inf."""
    plus, minus = shifted[:, 0::2], shifted[:, 1::2]
    finite = torch.isfinite(base)
    difference = torch.where(finite & torch.isfinite(plus) & torch.isfinite(minus), plus - minus, 0.0)
    return torch.where(finite, base + difference / (2 * steps.to(base.dtype)[None, :, None]), base)


def probit_scale(variance: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(1 + pi/8 v): E[sigmoid(f)] for f ~ N(m, v) is about sigmoid(m * this) (MacKay 1992)."""
    return (1 + math.pi / 8 * variance).rsqrt()


def log_evidence(prior_precision: float, ggn: np.ndarray, squared_norm: float) -> float:
    """The Laplace log marginal likelihood as a function of the prior precision delta, up to terms free of it:
    -delta/2 ||theta*||^2 + P/2 log delta - 1/2 sum_p log(h_p + delta)."""
    return (-0.5 * prior_precision * squared_norm + 0.5 * ggn.size * math.log(prior_precision)
            - 0.5 * float(np.log(ggn + prior_precision).sum()))


def optimal_prior_precision(ggn: torch.Tensor, theta: torch.Tensor, bounds: tuple[float, float] = (1e-6, 1e6)
                            ) -> float:
    """The prior precision delta in ``bounds`` that maximizes :func:`log_evidence` (a bounded search on log delta)."""
    h = ggn.detach().double().flatten().cpu().numpy()
    squared_norm = float(theta.detach().double().square().sum())
    result = minimize_scalar(lambda log_delta: -log_evidence(math.exp(log_delta), h, squared_norm),
                             bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-6})
    return math.exp(result.x)
