"""One fold of cross-validation: what every fold shares (``FoldContext``) and ``run_fold``.

A fold splits its training part into inner-train and inner-validation, builds the classifier
(pretrained encoders with ``--init``, or random for ``scratch``), fits its head (an MLP by SGD,
a linear probe, or LP-FT: the probe, then fine-tuning from it), recalibrates and chooses the
decision threshold on inner validation, predicts the held-out part and fits the classical
baselines on the same training part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from finetune.baselines import baseline_frame, fit_predict_baseline
from finetune.config import FinetuneConfig
from finetune.inference import EmbeddingDataset, predict_probabilities
from finetune.init import (
    PretrainingRun,
    build_finetune_encoders,
    load_pretraining_run,
    reconcile_features,
    reconcile_sequences,
)
from finetune.loop import train_fold
from finetune.lpft import load_probe_head
from finetune.metrics import classification_metrics
from finetune.model import (
    FusionClassifier,
    build_classifier,
    fill_missing,
    init_missing_embeddings,
    precompute_embeddings,
    set_mode,
)
from finetune.oracle import ORACLE, fit_predict_oracle, true_image_quantities
from finetune.probe import fit_linear_probe, probe_groups
from finetune.probe_basis import pretraining_basis
from finetune.recalibration import apply_recalibration, fit_recalibration
from finetune.thresholds import choose_threshold
from multimodal.cohort import Cohort, stratified_split
from multimodal.config import RunConfig
from multimodal.data import (
    BUILT_IN_MODALITIES,
    MultimodalDataset,
    build_dataset,
    encoder_sizes,
    fit_encoders_to_data,
    modalities_with_data,
    resolve_sequences,
    seed_everything,
    volume_cache,
)
from multimodal.encoders import build_encoder
from multimodal.errors import ConfigError
from multimodal.finite import NON_FINITE_ADVICE, require_finite
from multimodal.tabular import TabularPreprocessor
from multimodal.text import run_documents


class FoldContext:
    """What every fold shares: cohort, settings, MRI cache, pretraining run (optional)."""

    def __init__(self, run_config: RunConfig, cohort: Cohort, settings: FinetuneConfig, init: Path | None,
                 device: torch.device) -> None:
        self.run_config, self.cohort, self.settings, self.device = run_config, cohort, settings, device
        self.pretrained = load_pretraining_run(init) if init is not None else None
        cohort_config = cohort.config
        if self.pretrained is not None:
            self.sequences = reconcile_sequences(self.pretrained.sequences, cohort.sequences, cohort_config.missing_images)
            self.preprocessor = reconcile_features(self.pretrained.preprocessor, list(cohort.features.columns))
        else:
            self.sequences = resolve_sequences(run_config, cohort)
            self.preprocessor = None
        # The probe reads the frozen table embedding only where pretraining trained that encoder.
        self.probe_table_embedding = settings.probe_table_embedding and (
            self.pretrained is not None and self.pretrained.table_weights is not None)
        self.modalities = modalities_in_use(run_config, self.pretrained, settings.branches)
        # The spec each modality is built with: the pretraining run's for what it trained, else ours.
        trained = self.pretrained.weights if self.pretrained is not None and settings.mode != "scratch" else {}
        self.specs = {m: (self.pretrained.config.model if m in trained else run_config.model).encoders[m]
                      for m in self.modalities}
        self.modalities = modalities_with_data(cohort, list(cohort.ids), self.modalities, self.others())
        # Frozen and taken from pretraining: every fold model holds the same weights of these encoders.
        self.shared_encoders = [m for m in self.modalities if settings.mode == "frozen" and m in trained]
        self.fresh_encoders = [m for m in self.modalities if m not in trained]  # built here, not loaded
        self.cache = None
        if "image" in self.modalities:
            self.cache = volume_cache(run_config, cohort_config, self.sequences)
        # Frozen, pretrained encoders and one shared preprocessor give every fold the same embedding
        # of a subject: compute them once for the whole cohort instead of once per fold.
        deterministic = [m in trained or (m == "table" and settings.head == "probe" and not self.probe_table_embedding)
                         for m in self.modalities]
        self.share_embeddings = settings.mode == "frozen" and self.preprocessor is not None and all(deterministic)
        self._embedded: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._basis: np.ndarray | None = None

    def probe_basis(self, model: FusionClassifier) -> np.ndarray | None:
        """``probe_components: pretraining``: the ``(M, F)`` probe inputs of every subject the
        pretraining run read (``finetune.probe_basis``), computed once, as the pretrained encoders are
        every fold's before it trains; ``fold``: None."""
        if self.settings.probe_components == "fold" or self.pretrained is None:
            return None
        if self._basis is None:
            self._basis = pretraining_basis(model, self.pretrained, self.run_config, self.preprocessor,
                                            self.sequences, self.others(), self.settings.batch_size, self.device)
        return self._basis

    def embed(self, model: FusionClassifier, ids: list[str], preprocessor: TabularPreprocessor,
              labels: np.ndarray) -> EmbeddingDataset:
        """Frozen embeddings of ``ids`` (no augmentation) with their labels and modality presence."""
        batch_size = self.settings.batch_size
        if not self.share_embeddings:
            part = self.dataset(ids, preprocessor, augment=False)
            return EmbeddingDataset(precompute_embeddings(model, DataLoader(part, batch_size=batch_size), self.device),
                                    labels, part.present)
        if self._embedded is None:
            everyone = self.dataset(self.cohort.ids, preprocessor, augment=False)
            embedded = precompute_embeddings(model, DataLoader(everyone, batch_size=batch_size), self.device)
            self._embedded = embedded, everyone.present
        position = {s: i for i, s in enumerate(self.cohort.ids)}
        rows = torch.tensor([position[s] for s in ids], dtype=torch.long)
        embedded, present = self._embedded
        return EmbeddingDataset({m: e[rows] for m, e in embedded.items()}, labels,
                                {m: p[rows] for m, p in present.items()})

    def dataset(self, ids: list[str], preprocessor: TabularPreprocessor, augment: bool) -> MultimodalDataset:
        """The labeled items of ``ids``, augmented when ``augment``; only the modalities the run uses."""
        return build_dataset(self.cohort, ids, cache=self.cache,
                             preprocessor=preprocessor if "table" in self.modalities else None,
                             others=self.others(), augment=self.run_config.imaging.augment if augment else None,
                             seed=self.run_config.seed, labels=True)

    def others(self) -> dict[str, dict[str, Any]]:
        """Each modality beyond image and table -> its encoder args (what its reader reads)."""
        return {m: self.specs[m].args for m in self.modalities if m not in BUILT_IN_MODALITIES}

    def baseline_frame(self, ids: list[str]) -> pd.DataFrame:
        """The baselines' frame of ``ids``: the table, and the report text when the model reads it."""
        cohort = self.cohort
        return baseline_frame(cohort.features.loc[ids], cohort.continuous, cohort.categorical,
                              run_documents(cohort, ids, self.others()))

    def model(self, preprocessor: TabularPreprocessor) -> FusionClassifier:
        settings, config = self.settings, self.run_config
        sizes = encoder_sizes(self.modalities, self.sequences, preprocessor)
        if self.pretrained is not None and settings.mode != "scratch":
            encoders = build_finetune_encoders(self.pretrained, config.model, sizes)
        else:
            encoders = {m: build_encoder(config.model, m, **sizes[m]) for m in self.modalities}
        model = build_classifier(encoders, settings, len(preprocessor.continuous), preprocessor.category_sizes,
                                 table_embedding=self.probe_table_embedding)
        return set_mode(model, settings.mode).to(self.device)


def modalities_in_use(run_config: RunConfig, pretrained: PretrainingRun | None, branches: str) -> list[str]:
    """The modalities a fine-tuning run reads: ``model.encoders`` (plus any other modality the
    pretraining run trained), or those ``finetune.branches`` names (one, or several joined by +)."""
    configured = list(run_config.model.encoders)
    if pretrained is not None:
        configured += [m for m in pretrained.weights if m not in configured]
    if branches == "both":
        return configured
    wanted = branches.split("+")
    absent = [m for m in wanted if m not in configured]
    if absent:
        raise ConfigError(f"finetune.branches: {branches} needs model.encoders.{absent[0]} (the run reads {configured})")
    return [m for m in configured if m in wanted]


def run_fold(ctx: FoldContext, train_ids: list[str], test_ids: list[str], seed: int) -> tuple[dict[str, Any], FusionClassifier]:
    cohort, settings = ctx.cohort, ctx.settings
    label_of = dict(zip(cohort.ids, cohort.labels, strict=True))
    labels = lambda ids: np.array([label_of[s] for s in ids])  # noqa: E731 - local shorthand
    preprocessor = ctx.preprocessor or TabularPreprocessor(cohort.continuous, cohort.categorical).fit(
        cohort.features.loc[train_ids])  # scratch: one preprocessor per training fold (labels unused)
    seed_everything(seed)
    model = ctx.model(preprocessor)
    fresh = {m: model.encoder(m) for m in ctx.fresh_encoders if m in ctx.others()}
    if fresh:  # data-fitted state (the report encoder's IDF) from this training fold only
        fit_encoders_to_data(fresh, build_dataset(cohort, train_ids, others=ctx.others()))
    if settings.head == "probe":
        history, val_ids, raw_val_prob, test_prob = _fit_probe_fold(ctx, model, preprocessor, train_ids, test_ids,
                                                                    labels, seed)
        if settings.mode == "trainable":  # LP-FT: fine-tune encoders and probe from the fitted probe
            history, val_ids, raw_val_prob, test_prob = _finetune_probe(
                ctx, model, preprocessor, train_ids, test_ids, labels, seed,
                (history, val_ids, raw_val_prob, test_prob))
    else:
        history, val_ids, raw_val_prob, test_prob = _train_fold(ctx, model, preprocessor, train_ids, test_ids,
                                                                labels, seed)
    recalibration = fit_recalibration(settings.recalibration, labels(val_ids), raw_val_prob)
    val_prob = apply_recalibration(raw_val_prob, recalibration)
    threshold = choose_threshold(labels(val_ids), val_prob, settings.threshold, settings.target_sensitivity)
    test_prob = apply_recalibration(test_prob, recalibration)
    require_finite(test_prob, test_ids, "the out-of-fold probability", NON_FINITE_ADVICE)
    frames = {split: ctx.baseline_frame(ids) for split, ids in (("train", train_ids), ("test", test_ids))}
    baselines = {name: fit_predict_baseline(name, frames["train"], labels(train_ids), frames["test"], seed).tolist()
                 for name in settings.baselines}
    result = {
        "preprocessor": preprocessor.to_dict(),  # predict rebuilds each fold model with its own state
        "test_ids": test_ids, "probabilities": test_prob.tolist(), "threshold": threshold,
        "recalibration": recalibration, "validation": {"ids": val_ids, "raw_probabilities": raw_val_prob.tolist()},
        "metrics": classification_metrics(labels(test_ids), test_prob, threshold), "history": history,
        "baselines": baselines,
    }
    quantities = true_image_quantities(cohort)  # synthetic cohorts only: the generator's truth
    if quantities is not None and "logistic_regression" in settings.baselines:
        result[ORACLE] = fit_predict_oracle(frames["train"], labels(train_ids), frames["test"], quantities,
                                            quantities, seed).tolist()
    return result, model


def _train_fold(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor, train_ids: list[str],
                test_ids: list[str], labels: Any, seed: int) -> tuple[list[dict[str, float]], list[str], np.ndarray,
                                                                      np.ndarray]:
    """MLP head (and encoders unless frozen) by SGD on inner-train, early-stopped on inner validation.
    Returns the history, the inner-validation ids and their raw probabilities, and the test probabilities."""
    settings = ctx.settings
    inner_train, inner_val = stratified_split(train_ids, labels(train_ids), settings.inner_val_fraction, seed)
    frozen = settings.mode == "frozen"
    splits = (("train", inner_train), ("val", inner_val), ("test", test_ids))
    if frozen:  # encoders fixed: embed once, without augmentation, and train the head on the cache
        data = {name: ctx.embed(model, ids, preprocessor, labels(ids)) for name, ids in splits}
        init_missing_embeddings(model, data["train"].embeddings, data["train"].present)
    else:
        data = {name: ctx.dataset(ids, preprocessor, augment=name == "train") for name, ids in splits}
    history = train_fold(model, settings, data["train"], data["val"], labels(inner_train), ctx.device, seed)
    return (history, inner_val, predict_probabilities(model, data["val"], settings.batch_size, ctx.device),
            predict_probabilities(model, data["test"], settings.batch_size, ctx.device))


def _fit_probe_fold(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor,
                    train_ids: list[str], test_ids: list[str], labels: Any,
                    seed: int) -> tuple[list[dict[str, float]], list[str], np.ndarray, np.ndarray]:
    """Linear probe on the whole training fold (its inner CV picks C, so no subject is held back);
    the threshold and recalibration use the probe's out-of-fold probabilities within the fold."""
    features, test = probe_inputs(ctx, model, preprocessor, train_ids, test_ids, labels)
    basis = ctx.probe_basis(model)
    fit = fit_linear_probe(features, labels(train_ids), seed, probe_groups(model), ctx.settings.probe_pcs, basis)
    load_probe_head(model.head, fit)
    history = [{"C": fit["C"], "group_weights": fit["group_weights"], "features": int(fit["weight"].shape[0]),
                "components_from": ctx.settings.probe_components if basis is not None else "fold",
                "component_subjects": len(basis) if basis is not None else len(train_ids)}]
    return (history, train_ids, np.asarray(fit["oof_probabilities"]),
            predict_probabilities(model, test, ctx.settings.batch_size, ctx.device))


def probe_inputs(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor, train_ids: list[str],
                 test_ids: list[str], labels: Any) -> tuple[np.ndarray, EmbeddingDataset]:
    """The probe's ``(N_train, F)`` inputs of the training fold (frozen embeddings, the table design) and
    the test fold's embeddings; a subject lacking a modality enters with the training mean of that
    embedding (mean imputation, set in the model)."""
    embedded = {name: ctx.embed(model, ids, preprocessor, labels(ids))
                for name, ids in (("train", train_ids), ("test", test_ids))}
    init_missing_embeddings(model, embedded["train"].embeddings, embedded["train"].present)
    filled = fill_missing(model, embedded["train"].embeddings, embedded["train"].present)
    features = torch.cat([filled[m] for m in model.modalities], dim=1).numpy()  # (N, sum D_m), modality order
    require_finite(features, train_ids, "the embedding", NON_FINITE_ADVICE)
    return features, embedded["test"]


def _finetune_probe(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor,
                    train_ids: list[str], test_ids: list[str], labels: Any, seed: int,
                    probe: tuple[list[dict[str, Any]], list[str], np.ndarray, np.ndarray],
                    ) -> tuple[list[dict[str, Any]], list[str], np.ndarray, np.ndarray]:
    """LP-FT: fine-tune encoders and probe layers from a linear probe, on inner-train; the
    inner-validation loss picks the epoch, the starting probe itself (epoch 0) included. That probe is
    fitted on inner-train only, so epoch 0 competes on subjects it has not seen (the fold's own probe,
    fitted on every training subject, would score partly in-sample there and always stay best). Kept,
    the fold is the frozen probe's (``probe``, ``_fit_probe_fold``'s outcome on the whole fold, refitted
    into the head), threshold and recalibration from its out-of-fold probabilities; else the fine-tuned
    model's, from its inner-validation probabilities. (Selection rather than an average of weights: only
    selection bounds the result by the probe's loss, and it is the early stopping the MLP head uses.)"""
    settings = ctx.settings
    inner_train, inner_val = stratified_split(train_ids, labels(train_ids), settings.inner_val_fraction, seed)
    _fit_probe_fold(ctx, model, preprocessor, inner_train, inner_val, labels, seed)  # the starting point
    data = {name: ctx.dataset(ids, preprocessor, augment=name == "train")
            for name, ids in (("train", inner_train), ("val", inner_val))}
    epochs = train_fold(model, settings, data["train"], data["val"], labels(inner_train), ctx.device, seed,
                        from_start=True)  # restores the best epoch's weights: the pretrained encoders at epoch 0
    history = [*probe[0], *epochs]
    if next(e for e in epochs if e.get("selected"))["epoch"] == 0:  # the probe stayed best
        _fit_probe_fold(ctx, model, preprocessor, train_ids, test_ids, labels, seed)  # the fold's probe again
        return history, *probe[1:]
    test = ctx.dataset(test_ids, preprocessor, augment=False)
    return (history, inner_val, predict_probabilities(model, data["val"], settings.batch_size, ctx.device),
            predict_probabilities(model, test, settings.batch_size, ctx.device))
