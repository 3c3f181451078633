"""The Hugging Face ``Trainer`` for a Bayesian LoRA model: train and evaluate it with the tools users already run.

:class:`BayesianTrainer` trains a :class:`~monteclora_pyro.bayesian_lora.BayesianLoRA` (or any
:class:`~monteclora_pyro.lora_method.LoRAMethod`) on its own objective, the per-example negative tempered
ELBO (the likelihood scaled to the training-set size the model was built with), with the KL weight
annealed over ``kl_anneal_steps``, the guides' parameters in their own AdamW group at
``variational_lr``, and a data order drawn from its own seeded generator (so the posterior's noise
stream is the model's alone, as in :func:`~monteclora_pyro.runner.training.train`, which it matches step
for step).  Evaluation and ``predict`` average the likelihood's prediction over ``num_samples``
posterior draws (taken once per call and shared by every batch); the loss reported is the
predictive's NLL.  Every other ``TrainingArguments`` setting (steps, schedule, clipping, logging,
``report_to``) is the Trainer's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from ..kinds import nonnegative_int, positive_int
from ..lora_method import LoRAMethod
from ..prediction import draw_outputs, posterior_draws
from .distributed import seeded_sampler
from .training import parameter_groups

__all__ = ["BayesianTrainer"]


class BayesianTrainer(Trainer):
    """``Trainer(model=bayesian_lora, args=TrainingArguments(...), train_dataset=..., data_collator=...)`` with
    the Bayesian objective and predictive.  A batch needs the network's inputs and ``labels``; its rows' indices
    in the training set (``idx``) are optional (the ELBO uses only how many there are)."""

    def __init__(self, model: LoRAMethod, *args: Any, variational_lr: float | None = 1e-2, kl_anneal_steps: int = 0,
                 num_samples: int = 8, **kwargs: Any) -> None:
        if not isinstance(model, LoRAMethod):
            raise ValueError(f"model is a {type(model).__name__}; give a Bayesian LoRA model "
                             "(monteclora_pyro.bayesian_lora_from_model)")
        if model.separately_optimized() or not model.kl_in_loss:
            raise ValueError(f"{type(model).__name__} takes its KL in a step of its own (BLoB); train it with "
                             "monteclora_pyro.train or the command lines, not the Trainer")
        if model.ensemble_size > 1:
            raise ValueError(f"an ensemble of {model.ensemble_size} members trains one member after the other; "
                             "train it with the command lines (or one Trainer per member, mixed by "
                             "monteclora_pyro.prediction.mixture), not one Trainer")
        nonnegative_int.check("kl_anneal_steps", kl_anneal_steps)
        positive_int.check("num_samples", num_samples)
        super().__init__(model, *args, **kwargs)
        self.variational_lr, self.kl_anneal_steps, self.num_samples = variational_lr, kl_anneal_steps, num_samples
        self._draws: list | None = None

    # ----------------------------------------------------------------- what the Trainer would otherwise guess
    def _remove_unused_columns(self, dataset, description=None):
        """Keep every column: the model's ``forward(batch)`` signature says nothing of what the network reads."""
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def get_train_dataloader(self) -> DataLoader:
        """Each epoch in the order :func:`~monteclora_pyro.runner.pipeline.make_loader` gives (a permutation drawn
        from ``args.seed`` and the epoch alone): the global random stream stays the posterior's."""
        if self.train_dataset is None:
            raise ValueError("the Trainer needs a train_dataset to train")
        loader = DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                            sampler=seeded_sampler(self.train_dataset, self.args.seed),
                            generator=torch.Generator().manual_seed(self.args.seed),
                            num_workers=self.args.dataloader_num_workers, drop_last=self.args.dataloader_drop_last)
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None):
        """Torch's AdamW: the network's parameters at ``learning_rate``, the variational ones at ``variational_lr``."""
        if self.optimizer is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(parameter_groups(self.model, params, self.variational_lr),
                                               lr=self.args.learning_rate, weight_decay=self.args.weight_decay,
                                               betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        return self.optimizer

    # ----------------------------------------------------------------- the objective
    def kl_weight(self) -> float:
        """The KL weight of the coming step: the model's beta, warmed up linearly over ``kl_anneal_steps``."""
        beta = self.model.kl_weight
        if not self.kl_anneal_steps:
            return beta
        return beta * min(1.0, (self.state.global_step + 1) / self.kl_anneal_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = dict(inputs)
        if "idx" not in batch:
            batch["idx"] = torch.arange(len(batch["labels"]), device=batch["labels"].device)
        loss = model(batch, kl_weight=self.kl_weight())
        return (loss, {"loss": loss}) if return_outputs else loss

    # ----------------------------------------------------------------- the posterior predictive
    def _with_draws(self, run, *args, **kwargs):
        self.model.eval()
        self._draws = posterior_draws(self.model, self.num_samples)
        try:
            return run(*args, **kwargs)
        finally:
            self._draws = None

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        return self._with_draws(super().evaluate, *args, **kwargs)

    def predict(self, *args, **kwargs):
        return self._with_draws(super().predict, *args, **kwargs)

    def prediction_step(self, model, inputs: Mapping[str, Any], prediction_loss_only: bool, ignore_keys=None):
        """(the predictive's NLL, its class probabilities (regression: its mean), the labels) of one batch."""
        batch = self._prepare_inputs(inputs)
        with torch.no_grad():
            if model.linearized:  # a fitted Laplace approximation's own predictive
                per_draw = model.linearized_outputs(batch, self.num_samples)["draws"]
            else:
                draws = self._draws if self._draws is not None else posterior_draws(model, self.num_samples)
                per_draw = draw_outputs(model, batch, draws)
            labels = batch.get("labels")
            loss = None
            if labels is not None:
                log_likelihood = model.likelihood.draw_log_likelihood(per_draw.cpu(), labels.cpu())  # draws x rows
                loss = -(log_likelihood.logsumexp(0) - torch.log(torch.tensor(float(per_draw.shape[1])))).mean()
        if prediction_loss_only:
            return loss, None, None
        return loss, per_draw.mean(1), labels

