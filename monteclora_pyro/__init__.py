"""monteclora-pyro: robust Bayesian LoRA fine-tuning (MonteCLoRA) as a Pyro probabilistic program.

The public names load their modules on first use (PEP 562), so a command line can parse and
validate its arguments before torch, pyro, peft or transformers are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bayesian_lora": ("BayesianLoRA", "bayesian_lora_from_model", "paper_kl_weight"),
    "calibration": ("brier_score", "expected_calibration_error", "maximum_calibration_error"),
    "declarations": ("DEFAULT_GUIDES", "PriorSpec", "available_priors", "load_prior"),
    "diagnostics": ("posterior_inference_data", "save_posterior"),
    "distributions": ("LaplaceBridgeDirichlet", "WishartCholesky"),
    "likelihoods": ("CategoricalLikelihood", "GaussianLikelihood", "build_likelihood"),
    "lora_sites": ("FactorSite", "factor_sites", "inject_lora"),
    "prediction": ("mc_dropout", "predict"),
    "svi": ("TrainHistory", "train"),
    "train_config": ("TrainConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
