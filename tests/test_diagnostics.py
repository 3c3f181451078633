"""The variational posterior as ArviZ InferenceData: layout, Monte Carlo moments, netCDF, ArviZ tools."""

from __future__ import annotations

import arviz as az
import matplotlib
import numpy as np
import pyro
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from monteclora_pyro import bayesian_lora_from_model, load_prior
from monteclora_pyro.diagnostics import posterior_inference_data, save_posterior

matplotlib.use("Agg")

NUM_DRAWS = 200
NUM_EXAMPLES = 5


def tiny_module(family: str):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=2,
    )
    return bayesian_lora_from_model(
        BertForSequenceClassification(config), load_prior(family, rank=4), num_data=100, num_labels=2
    )


def guide_parameter(module, name: str) -> np.ndarray:
    """A guide parameter of every factor site, stacked along the layer axis (one group: the sites' order)."""
    (group,) = module.groups
    assert group.sites == tuple(module.sites)
    return getattr(module.group_guides[group.key], name).detach().numpy()


@pytest.fixture(scope="module")
def module():
    module = tiny_module("monteclora")
    with torch.no_grad():  # move the guide away from its initial (uniform) values
        for guide in module.group_guides.values():
            guide.log_scale.add_(0.5 * torch.randn_like(guide.log_scale))
            guide.log_concentration.add_(torch.randn_like(guide.log_concentration))
    return module


@pytest.fixture(scope="module")
def idata(module):
    pyro.set_rng_seed(0)
    observed = torch.tensor([0, 1, 1, 0, 1])
    log_likelihood = -torch.rand(8, NUM_EXAMPLES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the latents are tiny: threads only add overhead on a busy machine
    try:
        return posterior_inference_data(module, NUM_DRAWS, observed=observed, log_likelihood=log_likelihood)
    finally:
        torch.set_num_threads(threads)


def test_layout_dims_and_coords(module, idata):
    posterior = idata.posterior
    names = [site.name for site in module.sites]
    assert names[0] == "bert.encoder.layer.0.attention.self.query.lora_A"
    assert posterior["layer"].values.tolist() == names
    assert posterior["sigma_diag"].dims == ("chain", "draw", "layer", "rank")
    assert posterior["mixture_weights"].dims == ("chain", "draw", "layer", "component")
    assert posterior["perturbation_std"].dims == ("chain", "draw", "layer")
    assert dict(posterior.sizes) == {"chain": 1, "draw": NUM_DRAWS, "layer": 4, "rank": 4, "component": 8}
    assert idata.observed_data["y"].dims == ("example",)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "example")
    assert idata.log_likelihood["y"].shape == (1, 8, NUM_EXAMPLES)
    assert posterior.attrs["guide"] == "monteclora" and posterior.attrs["prior"] == "monteclora"


def test_sigma_diag_matches_the_guide_mean(module, idata):
    sigma = idata.posterior["sigma_diag"].values[0]  # draws x layer x rank
    df = module.spec.df
    scale = np.exp(2 * guide_parameter(module, "log_scale"))  # V = diag(exp(2 log_scale)), layer x rank
    expected = df * scale  # E[Sigma_kk] = df V_kk; Sigma_kk ~ V_kk chi2(df) has sd V_kk sqrt(2 df)
    standard_error = scale * np.sqrt(2 * df / NUM_DRAWS)
    assert np.all(np.abs(sigma.mean(0) - expected) / standard_error < 5)


def test_mixture_weights_are_on_the_simplex(module, idata):
    weights = idata.posterior["mixture_weights"].values[0]
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    alpha = np.exp(guide_parameter(module, "log_concentration"))
    np.testing.assert_allclose(weights.mean(0), alpha / alpha.sum(-1, keepdims=True), atol=0.05)


def test_perturbation_std_has_the_expected_scale(module, idata):
    # Entry (i, k) of eps ||pi|| Z L^T has variance eps^2 ||pi||^2 Sigma_kk; pi and L are independent.
    posterior = idata.posterior
    weights, sigma = posterior["mixture_weights"].values[0], posterior["sigma_diag"].values[0]
    expected = module.spec.perturbation_scale**2 * (weights**2).sum(-1).mean(0) * sigma.mean((0, 2))
    observed = (posterior["perturbation_std"].values[0] ** 2).mean(0)
    np.testing.assert_allclose(observed, expected, rtol=0.1)


def test_factor_families():
    pyro.set_rng_seed(0)
    gaussian = tiny_module("gaussian")
    posterior = posterior_inference_data(gaussian, 50).posterior
    assert set(posterior.data_vars) == {"factor_norm", "factor_std"}
    assert posterior["factor_std"].dims == ("chain", "draw", "layer")
    np.testing.assert_allclose(posterior["factor_std"].values, gaussian.spec.init_posterior_scale, rtol=0.3)

    point = tiny_module("map")
    posterior = posterior_inference_data(point, 3).posterior
    assert set(posterior.data_vars) == {"factor_norm"}
    norms = [point.network.get_parameter(s.parameter).norm().item() for s in point.sites]
    np.testing.assert_allclose(posterior["factor_norm"].values[0], np.tile(norms, (3, 1)), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_draws": 0}, "num_draws"),
        ({"observed": torch.zeros(2, 3)}, "observed must be 1-D"),
        ({"log_likelihood": torch.zeros(3)}, "log_likelihood must be 2-D"),
        ({"observed": torch.zeros(4), "log_likelihood": torch.zeros(2, 3)}, "3 examples but observed has 4"),
    ],
)
def test_invalid_arguments(module, kwargs, message):
    with pytest.raises(ValueError, match=message):
        posterior_inference_data(module, **{"num_draws": 2, **kwargs})


def test_save_round_trips_through_netcdf(idata, tmp_path):
    path = save_posterior(idata, tmp_path / "run" / "posterior.nc")
    assert path == tmp_path / "run" / "posterior.nc"
    assert [p.name for p in path.parent.iterdir()] == ["posterior.nc"]  # no temporary file left behind
    loaded = az.from_netcdf(path)
    assert set(loaded.groups()) == {"posterior", "prior", "observed_data", "log_likelihood"}
    assert loaded.posterior["layer"].values.tolist() == idata.posterior["layer"].values.tolist()
    for name in idata.posterior.data_vars:
        np.testing.assert_array_equal(loaded.posterior[name].values, idata.posterior[name].values)
    np.testing.assert_array_equal(loaded.log_likelihood["y"].values, idata.log_likelihood["y"].values)
    assert loaded.posterior.attrs["guide"] == "monteclora"


def test_failed_save_keeps_the_old_file(idata, tmp_path, monkeypatch):
    path = save_posterior(idata, tmp_path / "posterior.nc")
    before = path.read_bytes()

    def broken(self, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(az.InferenceData, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        save_posterior(idata, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]


def test_arviz_summary_and_plots_run(idata):
    import matplotlib.pyplot as plt

    summary = az.summary(idata, var_names=["sigma_diag", "perturbation_std"], kind="stats")
    assert len(summary) == 4 * 4 + 4
    assert summary.index[0] == "sigma_diag[bert.encoder.layer.0.attention.self.query.lora_A, 0]"
    az.plot_forest(idata, var_names=["perturbation_std"], combined=True)
    az.plot_posterior(idata, var_names=["perturbation_std"])
    plt.close("all")


def test_the_prior_group_holds_the_models_own_draws(module, idata):
    """E[diag Sigma] = wishart_scale under the Wishart prior (Monte Carlo over draws, layers and rank), the
    moved guide's is not, and az.plot_dist_comparison sets the two side by side."""
    import matplotlib.pyplot as plt

    assert "prior" in idata.groups() and set(idata.prior.data_vars) == set(idata.posterior.data_vars)
    prior_mean = float(idata.prior["sigma_diag"].mean())
    assert prior_mean == pytest.approx(module.spec.wishart_scale, rel=0.05)
    assert float(idata.posterior["sigma_diag"].mean()) != pytest.approx(prior_mean, rel=0.05)
    az.plot_dist_comparison(idata, var_names=["perturbation_std"], coords={"layer": [module.sites[0].name]})
    plt.close("all")
    assert "prior" not in posterior_inference_data(tiny_module("map"), 2).groups()  # a flat prior has no draws
