"""A new prior family and a new task family, each added in this file alone, run through the pipeline.

The prior family (a Laplace prior on the factor with its own mean-field guide) is declared in a TOML of
the test's folder; the task family (synthetic token sequences whose label is the parity of their
first token) brings its own settings class.  Nothing in the package names either.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import tiny_bert
from torch import nn

from monteclora_pyro.adapters import load_adapter
from monteclora_pyro.declarations import PriorSpec, load_prior
from monteclora_pyro.guides import GUIDES, register_guide
from monteclora_pyro.kinds import positive_int
from monteclora_pyro.likelihoods import CategoricalLikelihood
from monteclora_pyro.metrics import classification_metrics
from monteclora_pyro.prediction import predict
from monteclora_pyro.priors import PRIOR_FAMILIES, Panel, PriorFamily, register_prior
from monteclora_pyro.runner.options import option
from monteclora_pyro.runner.pipeline import Evaluation, TaskFamily, make_loader, run
from monteclora_pyro.runner.settings import RunConfig
from monteclora_pyro.tasks.glue.family import run_glue
from monteclora_pyro.tasks.glue.settings import GlueRunConfig


@dataclass(frozen=True)
class LaplaceSpec(PriorSpec):
    """The toy family's one field: the Laplace prior's scale b."""

    laplace_scale: float = 0.1

    def _validate(self) -> None:
        super()._validate()
        if not self.laplace_scale > 0:
            self._fail(f"laplace_scale = {self.laplace_scale!r} must be > 0")


class LaplacePrior(PriorFamily):
    """F ~ Laplace(0, b) elementwise."""

    declaration = LaplaceSpec
    default_guide = "toy_normal"
    panels = (Panel("factor_abs_mean", "mean |factor|"),)

    def forward(self, group, means):
        law = dist.Laplace(means.new_zeros(()), self.spec.laplace_scale).expand(means.shape).to_event(2)
        with group.plate():
            return pyro.sample(group.name, law)

    def summaries(self, group, guide_sites, means):
        return {"factor_abs_mean": guide_sites[group.name]["value"].abs().flatten(1).mean(-1)}


class NormalGuide(nn.Module):
    """q(F) = Normal(mean, exp(log_std)) elementwise."""

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group
        self.log_std = nn.Parameter(torch.full((len(group.sites), *group.shape), math.log(0.01)))

    def forward(self, means):
        with self.group.plate():
            pyro.sample(self.group.name, dist.Normal(means, self.log_std.exp()).to_event(2))


@pytest.fixture
def laplace_family():
    """The toy prior family and its guide, registered for the test only (other tests see the registries as shipped)."""
    register_prior("toy_laplace")(LaplacePrior)
    register_guide("toy_normal", families=("toy_laplace",))(NormalGuide)
    yield
    del PRIOR_FAMILIES["toy_laplace"], GUIDES["toy_normal"]


def test_a_prior_family_added_in_one_file_runs_through_the_pipeline(laplace_family, tmp_path, glue_dir):
    declaration = tmp_path / "laplace.toml"
    declaration.write_text('family = "toy_laplace"\nrank = 4\nlaplace_scale = 0.05\n')
    spec = load_prior(declaration)
    assert isinstance(spec, LaplaceSpec) and spec.default_guide == "toy_normal"
    with pytest.raises(ValueError, match=r"laplace_scale = -1.0 must be > 0"):
        load_prior(declaration, laplace_scale=-1.0)

    out = tmp_path / "run"
    metrics = run_glue(GlueRunConfig(task="rte", data_dir=str(glue_dir), prior=str(declaration), output_dir=str(out),
                                     max_train_samples=16, max_eval_samples=8, batch_size=4, max_steps=2,
                                     num_samples=2, max_length=32, progress=False))
    assert metrics["guide"] == "toy_normal" and metrics["prior"] == "laplace" and metrics["steps"] == 2
    assert metrics["elbo_history"]["kl_per_example"][0] > 0  # the one-sample KL of q against the Laplace prior
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["factor_abs_mean"].dims == ("chain", "draw", "layer")
    assert idata.posterior.attrs["family"] == "toy_laplace"
    assert (out / "plots" / "posterior.png").stat().st_size > 5_000
    assert json.loads((out / "config.json").read_text())["prior_spec"]["laplace_scale"] == 0.05
    module, _ = load_adapter(out / "adapter")  # rebuilt from the saved declaration
    assert module.spec == spec and type(module.prior) is LaplacePrior


@dataclass
class ParityRunConfig(RunConfig):
    """The toy task family's settings: how many synthetic rows to train on."""

    rows: int = option(64, "synthetic training rows", positive_int)

    def default_model(self) -> str:
        raise ValueError("the parity family needs --model (a saved tiny BERT)")

    def headline(self) -> tuple[str, str]:
        return "parity", "accuracy"


def parity_rows(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 100, (count, 6), generator=generator)
    return [{"input_ids": t, "attention_mask": torch.ones(6, dtype=torch.long), "labels": t[0] % 2,
             "idx": torch.tensor(i)} for i, t in enumerate(tokens)]


class ParityFamily(TaskFamily):
    """Is the first token's id odd?"""

    settings = ParityRunConfig

    @property
    def num_labels(self) -> int:
        return 2

    def describe(self):
        return {"task": "parity"}

    def load_backbone(self, dtype=torch.float32):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(self.config.model, dtype=dtype), None

    def load_data(self, tokenizer):
        self.dev = make_loader(parity_rows(32, seed=99), torch.utils.data.default_collate, 16, shuffle=False)
        return parity_rows(self.config.rows, self.config.seed), torch.utils.data.default_collate

    def likelihood(self, peer: bool) -> nn.Module:
        return CategoricalLikelihood()

    def epoch_scores(self, module, device):
        predictions = predict(module, self.dev, self.config.num_samples, device, with_mean=False)
        return classification_metrics(predictions["predictive"], predictions["labels"])

    def evaluate(self, module, device, output_dir):
        scores = self.epoch_scores(module, device)
        return Evaluation(scores, epoch_scores=scores)


@pytest.mark.parametrize("method", ["monteclora", "peft-lora"])
def test_a_task_family_added_in_one_file_runs_through_the_pipeline(tmp_path, method):
    model = tmp_path / "tiny-bert"
    tiny_bert().save_pretrained(model)
    method_settings = {"peer": method} if method.startswith("peft") else {"prior": method}
    config = ParityRunConfig(model=str(model), output_dir=str(tmp_path / "run"), rows=32, batch_size=8, epochs=2,
                             num_samples=2, eval_each_epoch=True, progress=False, **method_settings)
    metrics = run(ParityFamily(config))
    assert metrics["task"] == "parity" and metrics["steps"] == 8 and metrics["num_train"] == 32
    assert 0 <= metrics["accuracy"] <= 1 and len(metrics["epochs"]) == 2
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["rows"] == 32 and written["prior_spec"]["family"] == "monteclora"
    assert (tmp_path / "run" / "posterior.nc").exists() == (method == "monteclora")
    with pytest.raises(ValueError, match=r"rows = 0 must be an integer >= 1"):
        ParityRunConfig(rows=0)


def test_a_sweep_of_a_new_family_reports_a_diverged_cell_and_goes_on(tmp_path):
    from monteclora_pyro.runner.sweep import run_sweep

    model = tmp_path / "tiny-bert"
    tiny_bert().save_pretrained(model)
    base = ParityRunConfig(model=str(model), output_dir="unused", rows=32, batch_size=8, max_steps=12, num_samples=2,
                           progress=False)
    summary = run_sweep(ParityFamily, base, ["map"], [1e3, 1e-3], [8], [0], tmp_path / "sweep")
    assert list(summary["failed_cells"]) == ["map_lr1000_bs8_seed0"]
    assert "the loss diverged" in summary["failed_cells"]["map_lr1000_bs8_seed0"]
    assert summary["finished_cells"] == 1 and summary["robustness"]["map"]["cells"] == 1
