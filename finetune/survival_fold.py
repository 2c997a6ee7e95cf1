"""One fold of the survival task (``finetune.task: survival``): the Cox probe and the Cox baseline.

The fold embeds its subjects as the binary probe does (``finetune.fold.probe_inputs``), fits the
survival probe on the whole training fold (``finetune.survival_probe``: α and the L2 penalty by
the inner cross-validated partial likelihood), folds it into the classifier's final ``Linear`` (the
model's output is then a log relative hazard) and scores the held-out part: its risk, its
probability of recurrence by the horizon (Breslow's baseline survival of the training fold) and the
fold's metrics. The Cox baseline on the table (and on synthetic cohorts the Cox oracle, the table
plus the generator's true image quantities) is fitted on the same training part.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from finetune.fold import FoldContext, probe_inputs
from finetune.inference import EmbeddingDataset, predict_logits
from finetune.lpft import load_probe_head
from finetune.model import FusionClassifier, init_missing_embeddings, parameter_groups
from finetune.oracle import true_image_quantities, with_truth
from finetune.probe import probe_groups
from finetune.survival_probe import fit_cox_probe, fit_predict_cox_baseline
from multimodal.cohort import stratified_split
from multimodal.cox import (
    baseline_survival_at,
    event_probability,
    partial_log_likelihood,
    partial_log_likelihood_tensor,
)
from multimodal.data import seed_everything
from multimodal.errors import CohortError
from multimodal.finite import NON_FINITE_ADVICE, require_finite
from multimodal.survival_metrics import survival_metrics
from multimodal.tabular import TabularPreprocessor

COX_BASELINE = "cox"
COX_ORACLE = "cox_oracle"


def run_survival_fold(ctx: FoldContext, train_ids: list[str], test_ids: list[str],
                      seed: int) -> tuple[dict[str, Any], FusionClassifier]:
    """Fit and score one fold; returns the fold record (``folds/rRfF.json``) and the fold model."""
    cohort, settings = ctx.cohort, ctx.settings
    horizon = settings.survival_horizon.in_unit(cohort.config.time_unit)
    position = {s: i for i, s in enumerate(cohort.ids)}

    def outcome(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [position[s] for s in ids]
        return cohort.event[rows].astype(bool), cohort.time[rows].astype(float)

    labels = lambda ids: outcome(ids)[0].astype(float)  # noqa: E731 - the event, where datasets want a label
    preprocessor = ctx.preprocessor or TabularPreprocessor(cohort.continuous, cohort.categorical).fit(
        cohort.features.loc[train_ids])
    seed_everything(seed)
    model = ctx.model(preprocessor)
    (event, time), (test_event, test_time) = outcome(train_ids), outcome(test_ids)
    if event.sum() < 2:  # a Cox model orders events: one or none leaves nothing to learn
        raise CohortError(f"a training fold holds {int(event.sum())} recurrence event(s); the Cox model needs at "
                          f"least 2 per fold: lower finetune.folds (the cohort has {int(np.nansum(cohort.event))} "
                          "events with follow-up)")
    if settings.head == "probe":
        features, test = probe_inputs(ctx, model, preprocessor, train_ids, test_ids, labels)
        fit = fit_cox_probe(features, event, time, horizon, seed, probe_groups(model), settings.probe_pcs,
                            ctx.probe_basis(model))
        load_probe_head(model.head, fit)
        history = [{"penalty": fit["penalty"], "group_weights": fit["group_weights"],
                    "features": int(fit["weight"].shape[0])}]
    else:
        fit, history, test = _train_cox_head(ctx, model, preprocessor, train_ids, test_ids, outcome, seed, horizon)
    risk = predict_logits(model, test, settings.batch_size, ctx.device).astype(float)
    require_finite(risk, test_ids, "the out-of-fold risk", NON_FINITE_ADVICE)
    probabilities = event_probability(risk, fit["baseline_survival"])
    frames = {split: ctx.baseline_frame(ids) for split, ids in (("train", train_ids), ("test", test_ids))}
    baselines = {COX_BASELINE: _listed(fit_predict_cox_baseline(frames["train"], event, time, frames["test"],
                                                                horizon, seed))}
    quantities = true_image_quantities(cohort)  # synthetic cohorts only: the generator's truth
    if quantities is not None:
        baselines[COX_ORACLE] = _listed(fit_predict_cox_baseline(
            with_truth(frames["train"], quantities), event, time, with_truth(frames["test"], quantities), horizon, seed))
    result = {
        "preprocessor": preprocessor.to_dict(), "test_ids": test_ids, "risk": risk.tolist(),
        "probabilities": probabilities.tolist(), "baseline_survival": fit["baseline_survival"],
        "risk_cut": fit["risk_cut"], "threshold": float(event_probability(np.array([fit["risk_cut"]]),
                                                                          fit["baseline_survival"])[0]),
        "metrics": survival_metrics(risk, 1 - probabilities, test_event, test_time, horizon),
        "history": history, "baselines": baselines,
    }
    return result, model


def _train_cox_head(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor,
                    train_ids: list[str], test_ids: list[str], outcome: Any, seed: int,
                    horizon: float) -> tuple[dict[str, Any], list[dict[str, Any]], EmbeddingDataset]:
    """``head: mlp``: the fusion head trained on the frozen embeddings by the Cox partial likelihood over
    the whole inner-train split at once (the likelihood compares each event with its whole risk set,
    so mini-batches of a few events would see a handful of comparisons), AdamW at ``finetune.lr``, the
    epoch chosen by the inner-validation partial likelihood (patience ``finetune.patience``). Returns
    the Breslow baseline and risk cut of the inner-train split, the history and the test embeddings."""
    settings = ctx.settings
    events = outcome(train_ids)[0].astype(int)
    inner_train, inner_val = stratified_split(train_ids, events, settings.inner_val_fraction, seed)
    data = {name: ctx.embed(model, ids, preprocessor, outcome(ids)[0].astype(float))
            for name, ids in (("train", inner_train), ("val", inner_val), ("test", test_ids))}
    init_missing_embeddings(model, data["train"].embeddings, data["train"].present)
    optimizer = torch.optim.AdamW(parameter_groups(model, "frozen", settings.lr, weight_decay=settings.weight_decay))
    split_outcome = {name: outcome(ids) for name, ids in (("train", inner_train), ("val", inner_val))}
    inputs = {name: (data[name].embeddings, data[name].present) for name in ("train", "val")}
    best, best_state, best_entry, waited, history = -np.inf, None, 0, 0, []
    for epoch in range(settings.epochs):
        model.train()
        logits = model.forward_from_embeddings(*inputs["train"])
        event, time = split_outcome["train"]
        loss = -partial_log_likelihood_tensor(logits, event, time) / max(int(event.sum()), 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            val_risk = model.forward_from_embeddings(*inputs["val"])
        score = partial_log_likelihood(val_risk, *split_outcome["val"]) / max(int(split_outcome["val"][0].sum()), 1)
        history.append({"epoch": epoch + 1, "train_loss": float(loss.detach()), "val_loss": -score})
        if score > best or best_state is None:
            best, best_state, best_entry, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    model.load_state_dict(best_state)
    history[best_entry]["selected"] = True
    model.eval()
    with torch.no_grad():
        train_risk = model.forward_from_embeddings(*inputs["train"]).double().numpy()
    event, time = split_outcome["train"]
    return ({"baseline_survival": baseline_survival_at(train_risk, event, time, horizon),
             "risk_cut": float(np.median(train_risk))}, history, data["test"])


def _listed(fitted: dict[str, Any]) -> dict[str, Any]:
    """A baseline's fold outcome with arrays as lists (the fold record is JSON)."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fitted.items()}
