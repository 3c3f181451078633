"""monteclora-pyro: robust Bayesian LoRA fine-tuning (MonteCLoRA) as a Pyro probabilistic program."""

from .bayesian_lora import DEFAULT_GUIDES, BayesianLoRA, bayesian_lora_from_model, paper_kl_weight
from .declarations import PriorSpec, available_priors, load_prior
from .distributions import LaplaceBridgeDirichlet, WishartCholesky
from .likelihoods import CategoricalLikelihood, GaussianLikelihood, build_likelihood
from .lora_sites import FactorSite, factor_sites, inject_lora
from .prediction import predict, predict_network
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
    "build_likelihood",
    "factor_sites",
    "inject_lora",
    "load_prior",
    "paper_kl_weight",
    "predict",
    "predict_network",
    "train",
]
__version__ = "0.1.0"
