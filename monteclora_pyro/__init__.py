"""monteclora-pyro: robust Bayesian LoRA fine-tuning (MonteCLoRA) as a Pyro probabilistic program.

The package is layered, each layer importing only those below it: the library (this folder's modules,
``priors/``, ``guides/``, ``models/``), the runner (``runner/``), the task families (``tasks/``), the
benchmarks (``benchmarks/``) and the command lines (``commands/``).  The public names here load their
modules on first use (PEP 562), so a command line can parse and validate its arguments before torch,
pyro, peft or transformers load.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bayesian_lora": ("BayesianLoRA", "bayesian_lora_from_model", "paper_kl_weight"),
    "calibration": ("brier_score", "expected_calibration_error", "maximum_calibration_error"),
    "declarations": ("PriorSpec", "available_priors", "load_prior"),
    "diagnostics": ("posterior_inference_data", "save_posterior"),
    "distributions": ("LaplaceBridgeDirichlet", "WishartCholesky"),
    "likelihoods": ("CategoricalLikelihood", "GaussianLikelihood", "build_likelihood"),
    "lora_method": ("LoRAMethod",),
    "lora_sites": ("FactorSite", "factor_sites", "inject_lora"),
    "methods": ("build_method",),
    "adapters": ("export_merged", "export_peft", "load_adapter", "save_adapter"),
    "prediction": ("mc_dropout", "predict", "uncertainty"),
    "priors": ("PRIOR_FAMILIES", "PriorFamily", "register_prior"),
    "runner.hf_trainer": ("BayesianTrainer",),
    "runner.settings": ("RunConfig", "TrainConfig"),
    "runner.training": ("TrainHistory", "train"),
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
