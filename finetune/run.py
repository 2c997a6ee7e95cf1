"""``strokessl finetune``: cross-validated fine-tuning for 12-month recurrence → a run folder.

For every repeat and fold (stratified, patient-level): split the training fold into inner-train
and inner-validation, build the classifier (pretrained encoders with ``--init``, or random for
``scratch``), train with an imbalance-aware loss and early stopping on inner-validation AUROC,
choose the decision threshold on inner validation, predict the held-out fold, and fit the
classical baselines on the same training fold. Each finished fold is written at once, so
``--resume`` skips it. Then pooled out-of-fold metrics with stratified bootstrap confidence
intervals, paired ΔAUROC against each baseline, risk groups and plots.

Run folder: ``run.json`` (the run record: kind, finished, fold weight digests; ``multimodal.run_folder``),
``config.yaml``, ``model.json`` (encoder architecture, sequences), ``folds.json``
(the splits), ``folds/rRfF.json`` (predictions, threshold, preprocessor) + ``.safetensors`` (per
fold), ``predictions.csv``, ``metrics.json`` (written last), ``report/*.png``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.baselines import baseline_frame, fit_predict_baseline
from finetune.config import FinetuneConfig, finetune_config, resolved_repeats
from finetune.inference import EmbeddingDataset, classifier_logits, predict_probabilities
from finetune.init import (
    PretrainingRun,
    build_finetune_encoders,
    load_pretraining_run,
    reconcile_features,
    reconcile_sequences,
)
from finetune.losses import balanced_sampler, create_loss, loss_arguments
from finetune.lpft import load_probe_head
from finetune.metrics import (
    classification_metrics,
)
from finetune.model import (
    FusionClassifier,
    build_classifier,
    fill_missing,
    init_missing_embeddings,
    parameter_groups,
    precompute_embeddings,
    set_mode,
)
from finetune.oracle import ORACLE, fit_predict_oracle, true_image_quantities
from finetune.probe import fit_linear_probe, probe_groups
from finetune.probe_basis import pretraining_basis
from finetune.recalibration import apply_recalibration, fit_recalibration
from finetune.summary import summarise_run
from finetune.test_cohort import check_test_cohort, load_test_cohort
from finetune.thresholds import choose_threshold
from multimodal.checkpoint import atomic_write_text, make_folder, save_weights
from multimodal.cohort import Cohort, load_cohort, stratified_folds, stratified_split
from multimodal.config import (
    CohortConfig,
    ModelConfig,
    RunConfig,
    changed_keys,
    cohort_roles,
    load_cohort_config,
    load_run_config,
    save_config,
    to_dict,
)
from multimodal.data import (
    BUILT_IN_MODALITIES,
    MultimodalDataset,
    build_dataset,
    encoder_sizes,
    resolve_sequences,
    seed_everything,
    to_device,
    volume_cache,
)
from multimodal.encoders import build_encoder
from multimodal.errors import CohortError, ConfigError, StrokeSSLError
from multimodal.finite import NON_FINITE_ADVICE, require_finite
from multimodal.run_folder import (
    FINETUNING,
    PRETRAINING,
    begin_record,
    check_writable,
    finish_record,
    record_weights,
    require_run,
    run_lock,
)
from multimodal.tabular import TabularPreprocessor

logger = logging.getLogger(__name__)


def _auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else float("nan")


def train_fold(model: FusionClassifier, settings: FinetuneConfig, train: MultimodalDataset | EmbeddingDataset,
               val: MultimodalDataset | EmbeddingDataset,
               train_labels: np.ndarray, device: torch.device, seed: int,
               from_start: bool = False) -> list[dict[str, Any]]:
    """Train in place with early stopping on the inner-validation loss (or AUROC, ``select_on``);
    the best epoch's weights are kept and its history entry marked ``"selected": True``. With
    ``from_start`` the model as given competes as epoch 0 (LP-FT: a fold never ends above its
    probe's inner-validation loss). Returns the per-epoch history."""
    loss_fn = create_loss(settings.loss, **{**loss_arguments(settings.loss, train_labels), **settings.loss_args}).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.mode, settings.lr, settings.encoder_lr_ratio,
                                                   settings.weight_decay, settings.layer_decay))
    generator = torch.Generator().manual_seed(seed)
    sampler = balanced_sampler(train_labels, generator) if settings.balanced_sampler else None
    loader = DataLoader(train, batch_size=settings.batch_size, sampler=sampler, shuffle=sampler is None,
                        generator=generator, drop_last=len(train) > settings.batch_size)
    best, best_state, best_entry, waited, history = -math.inf, None, 0, 0, []
    val_labels = val.labels.numpy()
    for epoch in range(-1 if from_start else 0, settings.epochs):  # epoch -1: the model as given
        entry: dict[str, Any] = {"epoch": epoch + 1}
        if epoch >= 0:
            if isinstance(train, MultimodalDataset):
                train.set_epoch(epoch)
            model.train()
            total = 0.0
            for batch in loader:
                batch = to_device(batch, device)
                loss = loss_fn(classifier_logits(model, batch), batch["label"])
                if not torch.isfinite(loss):
                    raise StrokeSSLError(f"fine-tuning loss became {loss.item()} in epoch {epoch + 1}; lower finetune.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            entry["train_loss"] = total / max(len(loader), 1)
        val_prob = predict_probabilities(model, val, settings.batch_size, device)
        val_logit = torch.logit(torch.as_tensor(val_prob, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)).float()
        # The training loss (class weights of the training fold) on inner validation.
        entry["val_loss"] = float(loss_fn(val_logit.to(device), val.labels.to(device)))
        entry["val_auroc"] = _auroc(val_labels, val_prob)
        history.append(entry)
        score = -entry["val_loss"] if settings.select_on == "loss" else entry["val_auroc"]
        if score > best or best_state is None:
            best, best_state, best_entry, waited = score, copy.deepcopy(model.state_dict()), len(history) - 1, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    history[best_entry]["selected"] = True
    model.load_state_dict(best_state)
    return history


# --------------------------------------------------------------------------- one fold
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
            others = {m: self.specs[m].args for m in self.modalities if m not in BUILT_IN_MODALITIES}
            self._basis = pretraining_basis(model, self.pretrained, self.run_config, self.preprocessor,
                                            self.sequences, others, self.settings.batch_size, self.device)
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
                             others={m: self.specs[m].args for m in self.modalities if m not in BUILT_IN_MODALITIES},
                             augment=self.run_config.imaging.augment if augment else None,
                             seed=self.run_config.seed, labels=True)

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
    pretraining run trained), or the one ``finetune.branches`` names."""
    configured = list(run_config.model.encoders)
    if pretrained is not None:
        configured += [m for m in pretrained.weights if m not in configured]
    if branches == "both":
        return configured
    if branches not in configured:
        raise ConfigError(f"finetune.branches: {branches} needs model.encoders.{branches}")
    return [branches]


def run_fold(ctx: FoldContext, train_ids: list[str], test_ids: list[str], seed: int) -> tuple[dict[str, Any], FusionClassifier]:
    cohort, settings = ctx.cohort, ctx.settings
    label_of = dict(zip(cohort.ids, cohort.labels, strict=True))
    labels = lambda ids: np.array([label_of[s] for s in ids])  # noqa: E731 - local shorthand
    preprocessor = ctx.preprocessor or TabularPreprocessor(cohort.continuous, cohort.categorical).fit(
        cohort.features.loc[train_ids])  # scratch: one preprocessor per training fold (labels unused)
    seed_everything(seed)
    model = ctx.model(preprocessor)
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
    frames = {split: baseline_frame(cohort.features.loc[ids], cohort.continuous, cohort.categorical)
              for split, ids in (("train", train_ids), ("test", test_ids))}
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
    batch_size = ctx.settings.batch_size
    embedded = {name: ctx.embed(model, ids, preprocessor, labels(ids))
                for name, ids in (("train", train_ids), ("test", test_ids))}
    # A subject lacking a modality enters with the training mean of that embedding (mean imputation).
    init_missing_embeddings(model, embedded["train"].embeddings, embedded["train"].present)
    filled = fill_missing(model, embedded["train"].embeddings, embedded["train"].present)
    features = torch.cat([filled[m] for m in model.modalities], dim=1).numpy()  # (N, sum D_m), modality order
    require_finite(features, train_ids, "the embedding", NON_FINITE_ADVICE)
    basis = ctx.probe_basis(model)
    fit = fit_linear_probe(features, labels(train_ids), seed, probe_groups(model), basis=basis)
    load_probe_head(model.head, fit)
    history = [{"C": fit["C"], "group_weights": fit["group_weights"], "features": int(fit["weight"].shape[0]),
                "components_from": ctx.settings.probe_components if basis is not None else "fold",
                "component_subjects": len(basis) if basis is not None else len(train_ids)}]
    return (history, train_ids, np.asarray(fit["oof_probabilities"]),
            predict_probabilities(model, embedded["test"], batch_size, ctx.device))


def _finetune_probe(ctx: FoldContext, model: FusionClassifier, preprocessor: TabularPreprocessor,
                    train_ids: list[str], test_ids: list[str], labels: Any, seed: int,
                    probe: tuple[list[dict[str, Any]], list[str], np.ndarray, np.ndarray],
                    ) -> tuple[list[dict[str, Any]], list[str], np.ndarray, np.ndarray]:
    """LP-FT: from the fitted probe (``_fit_probe_fold``'s outcome), train encoders and probe layers on
    inner-train; the inner-validation loss picks the epoch, the probe itself (epoch 0) included. Its loss
    there is partly in-sample (the probe saw the whole training fold), which errs towards keeping the
    probe. Kept, the fold is the frozen probe's, threshold and recalibration from its out-of-fold
    probabilities; else from the fine-tuned model's inner-validation probabilities. (Selection rather than an
    average of weights: only selection bounds the result by the probe's loss, and it is the early
    stopping the MLP head already uses.)"""
    settings = ctx.settings
    inner_train, inner_val = stratified_split(train_ids, labels(train_ids), settings.inner_val_fraction, seed)
    data = {name: ctx.dataset(ids, preprocessor, augment=name == "train")
            for name, ids in (("train", inner_train), ("val", inner_val))}
    epochs = train_fold(model, settings, data["train"], data["val"], labels(inner_train), ctx.device, seed,
                        from_start=True)
    history = [*probe[0], *epochs]
    if next(e for e in epochs if e.get("selected"))["epoch"] == 0:  # the probe stayed best
        return history, *probe[1:]
    test = ctx.dataset(test_ids, preprocessor, augment=False)
    return (history, inner_val, predict_probabilities(model, data["val"], settings.batch_size, ctx.device),
            predict_probabilities(model, test, settings.batch_size, ctx.device))


# --------------------------------------------------------------------------- the run
def _default_run_dir(run_config: RunConfig, settings: FinetuneConfig) -> Path:
    """``runs/<config>-finetune-<mode>[-<branches>]`` unless run.dir was set: one config serves both stages."""
    default = Path.cwd() / "runs" / Path(run_config.source).stem
    if Path(run_config.run.dir) != default:
        return Path(run_config.run.dir)
    suffix = "" if settings.branches == "both" else f"-{settings.branches}"
    return default.with_name(f"{default.name}-finetune-{settings.mode}{suffix}")


# Keys a resumed fine-tuning run may change: they only add folds or change the evaluation
# (run.dir is the folder itself, pretrain the other stage's section).
_RESUMABLE_CHANGES = ("finetune.repeats", "finetune.bootstrap", "finetune.test_cohort", "data.workers", "data.cache_dir")
_IGNORED_ON_RESUME = (*_RESUMABLE_CHANGES, "run", "pretrain")


def _check_resumable(run_dir: Path, run_config: RunConfig, init: str | Path | None) -> None:
    """Refuse ``--resume`` with settings that would mix differently trained folds in one report."""
    previous = load_run_config(run_dir / "config.yaml")
    changed = changed_keys(to_dict(previous), to_dict(run_config), _IGNORED_ON_RESUME)
    model = run_dir / "model.json"
    if model.is_file():
        before = json.loads(model.read_text()).get("init")
        if (str(init) if init is not None else None) != before:
            changed.append(f"--init ({before} before)")
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: it was started with other settings for {changed}; only "
                          f"{list(_RESUMABLE_CHANGES)} may change (start a new run with --set run.dir=...)")


def run_finetune(config_path: str | Path, overrides: list[str] | None = None, init: str | Path | None = None,
                 resume: bool = False) -> Path:
    """Cross-validate as the config says; returns the run folder (``metrics.json`` written last)."""
    run_config = load_run_config(config_path, overrides)
    settings = finetune_config(run_config)
    if settings.mode != "scratch" and init is None:
        raise StrokeSSLError(f"finetune.mode {settings.mode} needs --init RUN (a pretraining run folder); "
                             "use --set finetune.mode=scratch for a supervised baseline from random weights")
    if init is not None:  # refused before anything is written
        require_run(Path(init), (PRETRAINING,), "--init")
    run_dir = _default_run_dir(run_config, settings)
    cohort_config = load_cohort_config(run_config.cohort)
    check_writable(run_dir, FINETUNING, [cohort_config.csv, cohort_config.source])
    with run_lock(run_dir, "finetune"):  # a second process writing the same folder is refused
        _cross_validate(run_config, cohort_config, settings, run_dir, init, resume)
        finish_record(run_dir)
    return run_dir


def _cross_validate(run_config: RunConfig, cohort_config: CohortConfig, settings: FinetuneConfig, run_dir: Path,
                    init: str | Path | None, resume: bool) -> None:
    """Every fold into ``run_dir`` (finished ones kept on ``resume``), then the summary."""
    started = any((run_dir / "folds").glob("*.json")) or (run_dir / "metrics.json").exists()
    if started and not resume:
        if (run_dir / "metrics.json").exists():
            what = "finished fine-tuning run; choose another folder with --set run.dir=... (--resume there only " \
                   "recomputes its summary)"
        else:
            what = "started fine-tuning run; add --resume to finish it or choose another folder with --set run.dir=..."
        raise StrokeSSLError(f"run folder {run_dir} already holds a {what}")
    run_config.run.dir = run_dir
    # A folder whose run stopped before its first fold (a refused config, say) holds nothing to keep.
    if resume and started and (run_dir / "config.yaml").is_file():
        _check_resumable(run_dir, run_config, init)
    make_folder(run_dir / "folds")
    begin_record(run_dir, FINETUNING)
    save_config(run_config, run_dir / "config.yaml")
    cohort = load_cohort(cohort_config)
    labeled = [s for s, has in zip(cohort.ids, cohort.labeled, strict=True) if has]
    if not labeled:
        raise CohortError(f"cohort {cohort.config.source} has no labeled subject to fine-tune on")
    cohort = cohort.subset(labeled)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = FoldContext(run_config, cohort, settings, Path(init) if init is not None else None, device)
    test = load_test_cohort(settings.test_cohort) if settings.test_cohort is not None else None
    if test is not None:  # a broken test cohort fails now, not after hours of training
        check_test_cohort(test, cohort, ctx.sequences if "image" in ctx.modalities else [])
    # The architecture each modality was built with, so predict can rebuild the fold models alone.
    architecture = ModelConfig(encoders=dict(ctx.specs)).without_weight_files()
    atomic_write_text(run_dir / "model.json", json.dumps({
        "encoders": to_dict(architecture.encoders), "sequences": ctx.sequences, "init": str(init) if init is not None else None,
        "probe_table_embedding": ctx.probe_table_embedding, "cohort_roles": cohort_roles(cohort.config),
        "head": settings.head,
    }, indent=2))
    if ctx.cache is not None:
        ctx.cache.warm(cohort.records(), workers=run_config.data.workers)
    repeats = resolved_repeats(settings, int(np.sum(cohort.labels)))
    if settings.repeats is None and repeats > 1:
        logger.info("%d positives: %d-times repeated %d-fold CV (finetune.repeats: auto)", int(np.sum(cohort.labels)),
                    repeats, settings.folds)
    splits = {f"r{r}f{f}": {"train": train, "test": test}
              for r in range(repeats)
              for f, (train, test) in enumerate(stratified_folds(cohort.ids, cohort.labels, settings.folds,
                                                                 run_config.seed + r))}
    atomic_write_text(run_dir / "folds.json", json.dumps(splits))
    results = {}
    for name, split in tqdm(splits.items(), desc="folds", unit="fold"):
        path = run_dir / "folds" / f"{name}.json"
        if path.is_file():  # finished before a stop: --resume skips it
            results[name] = json.loads(path.read_text())
            continue
        result, model = run_fold(ctx, split["train"], split["test"], run_config.seed + len(results))
        weights = run_dir / "folds" / f"{name}.safetensors"
        save_weights(model.state_dict(), weights)
        record_weights(run_dir, [weights])  # before the fold file that marks the fold done
        atomic_write_text(path, json.dumps(result))
        results[name] = result
        logger.info("fold %s: AUROC %.3f (threshold %.3f)", name, result["metrics"]["auroc"], result["threshold"])
    summarise_run(run_dir, run_config, cohort, test, settings, results, run_config.seed)
