"""Checkpoints: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch
from conftest import REPO, tiny_batch, tiny_bert
from torch.utils.data import DataLoader

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, load_prior, train
from monteclora_pyro.runner.checkpoints import Checkpointer

CONFIG = TrainConfig(lr=5e-3, epochs=3, progress=False, log_every=2)


def setup():
    """The same module and shuffling loader in any process (48 rows, batches of 8: 6 steps an epoch)."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    module = bayesian_lora_from_model(tiny_bert(), load_prior("monteclora_scaled", rank=4), num_data=48,
                                      num_labels=2)
    rows = tiny_batch(48)
    dataset = [{k: v[i] for k, v in rows.items()} for i in range(48)]
    loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    return module, loader


def slow_loss(module, batch, kl_weight):
    time.sleep(0.2)
    return module(batch, kl_weight=kl_weight)


CHILD = """
import sys
from test_checkpoints import CONFIG, setup, slow_loss
from monteclora_pyro import train
from monteclora_pyro.runner.checkpoints import Checkpointer
module, loader = setup()
train(module, loader, CONFIG, loss_fn=slow_loss, checkpoint=Checkpointer(sys.argv[1], every=2))
"""


def start_child(path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests"))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(path, at_least: int, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and torch.load(path, weights_only=False)["step"] >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint at step >= {at_least}: {process.communicate()[1][-2000:]}")


def learnable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    path = tmp_path / "checkpoint.pt"
    child = start_child(path)
    wait_for_step(path, 7, child)  # mid-epoch 2
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = torch.load(path, weights_only=False)["step"]
    assert 7 <= killed_at < 18

    module, loader = setup()
    history = train(module, loader, CONFIG, checkpoint=Checkpointer(path, every=2, resume=True))
    resumed = learnable(module)
    assert history.steps == 18 and torch.load(path, weights_only=False)["step"] == 18

    module, loader = setup()
    reference = train(module, loader, CONFIG)
    for name, value in learnable(module).items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    assert history.loss == reference.loss and history.kl == reference.kl


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_says_where(tmp_path, stop):
    path = tmp_path / "checkpoint.pt"
    child = start_child(path)
    wait_for_step(path, 2, child)
    child.send_signal(stop)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0 and f"checkpoint at {path}" in stderr
    step = torch.load(path, weights_only=False)["step"]
    assert 2 <= step < 18


def test_a_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    module, loader = setup()
    with pytest.raises(ValueError, match=f"checkpoint {path} cannot be read"):
        train(module, loader, CONFIG, checkpoint=Checkpointer(path, resume=True))


def test_a_record_from_before_a_new_setting_existed_still_matches_its_default():
    """Resume and finished sweep cells compare settings: one added later counts as its default then."""
    from monteclora_pyro.tasks.glue.settings import GlueRunConfig

    config = GlueRunConfig(task="rte", data_dir=None)
    written = config.record()
    del written["backbone_dtype"], written["prior_spec"]["cooperative_weight"]  # an older version's record
    written["prior_spec"]["prior_scale"] = None  # and one that listed every family's fields
    assert config.changes_from(written) == []
    assert GlueRunConfig(task="rte", backbone_dtype="bfloat16").changes_from(written) == [
        "backbone_dtype: 'float32' there, 'bfloat16' now"]
    changed = GlueRunConfig(task="rte", prior="gaussian").changes_from(written)
    assert any(c.startswith("prior_spec.family:") for c in changed) and any(c.startswith("prior:") for c in changed)
