"""The variational posterior as an ArviZ ``InferenceData``: per-layer hyper-latents, ready to summarize.

:func:`posterior_inference_data` draws the latent sites from the guide (no network run) and lets the
prior family reduce each draw to a few interpretable numbers per factor site
(:meth:`~monteclora_pyro.priors.PriorFamily.summaries`: e.g. MonteCLoRA's ``sigma_diag``,
``mixture_weights`` and ``perturbation_std``), stacked along a ``layer`` dim whose coordinates are the
site names.  One chain.  For a family whose summaries of prior draws mean the same (MonteCLoRA's), the
model's own draws fill a ``prior`` group too, so ``az.plot_dist_comparison`` shows what the data moved.
"""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import torch
from pyro import poutine

from .artifacts import atomic_output
from .bayesian_lora import BayesianLoRA
from .kinds import positive_int

__all__ = ["posterior_inference_data", "save_posterior"]


def _site_summaries(module: BayesianLoRA, means: dict[str, torch.Tensor], prior: bool = False
                    ) -> dict[str, list[torch.Tensor]]:
    """One posterior draw (or, with ``prior``, one prior draw) reduced to {variable: [value per factor site, in
    ``module.sites`` order]}."""
    with poutine.block():  # the guide alone (or the model's prior statements alone)
        nodes = poutine.trace(module.sample_factors if prior else module.sample_guide).get_trace(means).nodes
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for group in module.groups:  # every latent has a leading layer dim (the group's plate)
        summaries = module.prior.summaries(group, nodes, means[group.key])
        for i, site in enumerate(group.sites):
            by_site[site.name] = {name: value[i].detach().float().cpu() for name, value in summaries.items()}
    return {name: [by_site[site.name][name] for site in module.sites] for name in by_site[module.sites[0].name]}


def posterior_inference_data(
    module: BayesianLoRA,
    num_draws: int = 200,
    observed: torch.Tensor | np.ndarray | None = None,
    log_likelihood: torch.Tensor | np.ndarray | None = None,
) -> az.InferenceData:
    """``num_draws`` guide draws of every factor site's latents, summarized per layer (see module doc).

    observed: optional 1-D labels, stored as ``observed_data.y[example]``.
    log_likelihood: optional (draws x examples) array of per-example log-likelihoods (e.g. on the
    dev set), stored as ``log_likelihood.y[chain, draw, example]`` for ``az.loo`` / ``az.waic``.  Its
    draws need not be the posterior group's draws (their number may differ).
    """
    positive_int.check("num_draws", num_draws)
    y = None if observed is None else torch.as_tensor(observed).cpu().numpy()
    if y is not None and y.ndim != 1:
        raise ValueError(f"observed must be 1-D (one label per example); got shape {y.shape}")
    ll = None if log_likelihood is None else torch.as_tensor(log_likelihood).detach().double().cpu().numpy()
    if ll is not None and ll.ndim != 2:
        raise ValueError(f"log_likelihood must be 2-D (draws x examples); got shape {ll.shape}")
    if y is not None and ll is not None and ll.shape[1] != y.shape[0]:
        raise ValueError(f"log_likelihood has {ll.shape[1]} examples but observed has {y.shape[0]}")

    def stacked(draws: list[dict[str, list[torch.Tensor]]]) -> dict[str, np.ndarray]:
        return {name: torch.stack([torch.stack(d[name]) for d in draws])[None].numpy() for name in draws[0]}

    def posterior_summaries() -> dict[str, list[torch.Tensor]]:
        module.set_draws(module.prior.draw() or {})  # an ensemble's draw puts a member's weights in place
        return _site_summaries(module, module.stacked_means())

    with torch.no_grad():
        posterior = stacked([posterior_summaries() for _ in range(num_draws)])
        module.set_draws({})
        means = module.stacked_means()
        prior = (stacked([_site_summaries(module, means, prior=True) for _ in range(num_draws)])
                 if module.prior.summarizes_prior else None)
    extra_dims = module.prior.summary_dims
    dims = {name: ["layer", *extra_dims.get(name, ())] for name in posterior} | {"y": ["example"]}
    return az.from_dict(
        posterior=posterior,
        prior=prior,
        observed_data=None if y is None else {"y": y},
        log_likelihood=None if ll is None else {"y": ll[None]},
        coords={"layer": [site.name for site in module.sites]},
        dims=dims,
        posterior_attrs={"inference_library": "pyro", "prior": module.spec.name or module.spec.family,
                         "family": module.spec.family, "guide": module.guide_name},
    )


def save_posterior(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to ``path`` as netCDF via a temporary sibling, so no reader sees a partial file."""
    with atomic_output(path) as tmp:
        idata.to_netcdf(str(tmp))
    return Path(path)
