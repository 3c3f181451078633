"""monteclora-pyro: robust Bayesian LoRA fine-tuning (MonteCLoRA) as a Pyro probabilistic program."""

from .bayesian_lora import DEFAULT_GUIDES, BayesianLoRA, bayesian_lora_from_model, paper_kl_weight
from .calibration import brier_score, expected_calibration_error, maximum_calibration_error
from .declarations import PriorSpec, available_priors, load_prior
from .diagnostics import posterior_inference_data, save_posterior
from .distributions import LaplaceBridgeDirichlet, WishartCholesky
from .likelihoods import CategoricalLikelihood, GaussianLikelihood, build_likelihood
from .lora_sites import FactorSite, factor_sites, inject_lora
from .prediction import mc_dropout, predict, predict_network
from .svi import TrainConfig, TrainHistory, train

__all__ = [
    "BayesianLoRA",
    "CategoricalLikelihood",
    "DEFAULT_GUIDES",
    "FactorSite",
    "GaussianLikelihood",
    "LaplaceBridgeDirichlet",
    "PriorSpec",
    "TrainConfig",
    "TrainHistory",
    "WishartCholesky",
    "available_priors",
    "bayesian_lora_from_model",
    "brier_score",
    "build_likelihood",
    "expected_calibration_error",
    "factor_sites",
    "inject_lora",
    "load_prior",
    "maximum_calibration_error",
    "mc_dropout",
    "paper_kl_weight",
    "posterior_inference_data",
    "predict",
    "predict_network",
    "save_posterior",
    "train",
]
__version__ = "0.1.0"
