"""Shared fixtures: Pyro validation on, seeded RNG, tiny random-initialized BERT, the shared GLUE data."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config)


def tiny_batch(batch_size: int = 8, length: int = 12, num_labels: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 100, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
        "idx": torch.arange(batch_size),
    }


@pytest.fixture
def glue_dir() -> Path:
    if not (GLUE_DIR / "RTE" / "train.tsv").exists():
        pytest.fail(f"the shared GLUE data is missing at {GLUE_DIR} (CI lays ../shared beside the checkout)")
    return GLUE_DIR
