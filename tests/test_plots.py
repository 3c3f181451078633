"""Figures: each plot writes a real PNG, atomically, and rejects inputs it cannot draw."""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from matplotlib.image import imread
from transformers import BertConfig, BertForSequenceClassification

from monteclora_pyro import bayesian_lora_from_model, load_prior
from monteclora_pyro.diagnostics import posterior_inference_data
from monteclora_pyro.runner.plots import (
    _short_names,
    plot_elbo,
    plot_posterior_spread,
    plot_quantile_calibration,
    plot_reliability,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > min_bytes
    height, width = imread(path).shape[:2]
    assert height > 300 and width > 300
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def posterior(family: str, num_draws: int = 20) -> az.InferenceData:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=2,
    )
    module = bayesian_lora_from_model(
        BertForSequenceClassification(config), load_prior(family, rank=4), num_data=100, num_labels=2
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the latents are tiny: threads only add overhead on a busy machine
    try:
        return posterior_inference_data(module, num_draws)
    finally:
        torch.set_num_threads(threads)


def test_reliability_diagram(tmp_path):
    generator = torch.Generator().manual_seed(0)
    probs = (3 * torch.randn(500, 3, generator=generator)).softmax(-1)
    labels = torch.randint(3, (500,), generator=generator)
    path = plot_reliability(probs, labels, tmp_path / "figures" / "reliability.png")
    assert path == tmp_path / "figures" / "reliability.png"
    assert_png(path)


def test_quantile_calibration_diagram(tmp_path):
    pit = torch.rand(500, generator=torch.Generator().manual_seed(0)) ** 2  # too many targets low: not calibrated
    assert_png(plot_quantile_calibration(pit, tmp_path / "figures" / "reliability.png"))


def test_reliability_diagram_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="one entry per row"):
        plot_reliability(torch.full((3, 2), 0.5), torch.tensor([0, 1]), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("family", ["monteclora", "gaussian", "map"])
def test_posterior_spread(tmp_path, family):
    path = plot_posterior_spread(posterior(family), tmp_path / f"spread_{family}.png")
    assert_png(path, min_bytes=5_000)


def test_posterior_spread_needs_diagnostics_variables(tmp_path):
    idata = az.from_dict(posterior={"mu": np.zeros((1, 10))})
    with pytest.raises(ValueError, match="no diagnostics variable"):
        plot_posterior_spread(idata, tmp_path / "spread.png")


def test_short_layer_names():
    names = [f"bert.encoder.layer.{i}.attention.self.{m}.lora_A" for i in (0, 1) for m in ("query", "value")]
    assert _short_names(names) == ["0.query", "0.value", "1.query", "1.value"]
    assert _short_names(names[:1]) == names[:1]
    assert _short_names(["a.b", "a.b.c"]) == ["a.b", "a.b.c"]


def elbo_history(steps: int = 20) -> dict[str, list[float]]:
    step = list(range(0, 10 * steps, 10))
    return {
        "step": step,
        "kl_per_example": [5.0 / (1 + s / 50) for s in step],
        "expected_log_likelihood_per_example": [-0.7 + 0.4 * (1 - np.exp(-s / 60)) for s in step],
        "kl_weight": [min(1.0, (s + 1) / 100) for s in step],
    }


def test_elbo_trace(tmp_path):
    history = elbo_history()
    elbo = np.asarray(history["expected_log_likelihood_per_example"]) - np.multiply(
        history["kl_weight"], history["kl_per_example"]
    )
    noise = 0.05 * np.random.default_rng(0).standard_normal(200)
    loss = -np.interp(np.arange(200), history["step"], elbo) + noise  # -loss tracks the ELBO
    assert_png(plot_elbo(history, tmp_path / "elbo.png", loss=loss))
    assert_png(plot_elbo(history, tmp_path / "elbo_no_loss.png"))


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ({k: v for k, v in elbo_history().items() if k != "kl_weight"}, "lacks"),
        (elbo_history() | {"kl_weight": [1.0]}, "equal length"),
        (elbo_history(0), "non-empty"),
    ],
)
def test_elbo_trace_rejects_bad_history(tmp_path, history, message):
    with pytest.raises(ValueError, match=message):
        plot_elbo(history, tmp_path / "elbo.png")
