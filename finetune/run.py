"""``strokessl finetune``: cross-validated fine-tuning for 12-month recurrence → a run folder.

For every repeat and fold (stratified, patient-level) ``finetune.fold.run_fold`` trains and
evaluates one fold; each finished fold is written at once, so ``--resume`` skips it. Then pooled
out-of-fold metrics with stratified bootstrap confidence intervals, paired ΔAUROC against each
baseline, risk groups and plots (``finetune.summary``).

Run folder: ``run.json`` (the run record: kind, finished, fold weight digests; ``multimodal.run_folder``),
``config.yaml``, ``model.json`` (encoder architecture, sequences), ``folds.json``
(the splits), ``folds/rRfF.json`` (predictions, threshold, preprocessor) + ``.safetensors`` (per
fold), ``predictions.csv``, ``metrics.json`` (written last), ``report/*.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from finetune.config import FinetuneConfig, finetune_config, resolved_repeats
from finetune.fold import FoldContext, run_fold
from finetune.summary import summarise_run
from finetune.survival_fold import run_survival_fold
from finetune.survival_summary import summarise_survival_run
from finetune.test_cohort import check_test_cohort, load_test_cohort
from multimodal.checkpoint import atomic_write_text, make_folder, save_weights
from multimodal.cohort import load_cohort, stratified_folds, with_event_labels
from multimodal.config import (
    CohortConfig,
    ModelConfig,
    RunConfig,
    changed_keys,
    cohort_roles,
    load_cohort_config,
    load_run_config,
    save_config,
)
from multimodal.config_mapping import to_dict
from multimodal.data import BUILT_IN_MODALITIES
from multimodal.errors import CohortError, ConfigError, StrokeSSLError
from multimodal.plugins import plugin_modules
from multimodal.run_folder import (
    FINETUNING,
    PRETRAINING,
    RunFacts,
    begin_record,
    check_writable,
    finish_record,
    has_started,
    is_finished,
    record_facts,
    record_weights,
    require_run,
    run_paths,
)
from multimodal.run_lock import run_lock

logger = logging.getLogger(__name__)


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
    paths = run_paths(run_dir)
    previous = load_run_config(paths.config)
    changed = changed_keys(to_dict(previous), to_dict(run_config), _IGNORED_ON_RESUME)
    model = paths.model
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
    paths = run_paths(run_dir)
    started = has_started(run_dir)
    if started and not resume:
        if is_finished(run_dir):
            what = "finished fine-tuning run; choose another folder with --set run.dir=... (--resume there only " \
                   "recomputes its summary)"
        else:
            what = "started fine-tuning run; add --resume to finish it or choose another folder with --set run.dir=..."
        raise StrokeSSLError(f"run folder {run_dir} already holds a {what}")
    run_config.run.dir = run_dir
    # A folder whose run stopped before its first fold (a refused config, say) holds nothing to keep.
    if resume and started and paths.config.is_file():
        _check_resumable(run_dir, run_config, init)
    make_folder(paths.folds)
    begin_record(run_dir, FINETUNING)
    save_config(run_config, paths.config)
    survival = settings.task == "survival"
    cohort = load_cohort(cohort_config, None if survival else settings.outcome_horizon)
    if survival:
        cohort = with_event_labels(cohort)
    labeled = [s for s, has in zip(cohort.ids, cohort.labeled, strict=True) if has]
    if not labeled:
        raise CohortError(f"cohort {cohort.config.source} has no labeled subject to fine-tune on")
    cohort = cohort.subset(labeled)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = FoldContext(run_config, cohort, settings, Path(init) if init is not None else None, device)
    test = (load_test_cohort(settings.test_cohort, settings.outcome_horizon, survival)
            if settings.test_cohort is not None else None)
    if test is not None:  # a broken test cohort fails now, not after hours of training
        check_test_cohort(test, cohort, ctx.sequences if "image" in ctx.modalities else [])
    # The architecture each modality was built with, so predict can rebuild the fold models alone.
    architecture = ModelConfig(encoders=dict(ctx.specs)).without_weight_files()
    atomic_write_text(paths.model, json.dumps({
        "encoders": to_dict(architecture.encoders), "init": str(init) if init is not None else None,
        "probe_table_embedding": ctx.probe_table_embedding, "head": settings.head,
    }, indent=2))
    # What predict and explain must know, recorded once (multimodal.run_folder.RunFacts).
    plugins = {m: ctx.specs[m].name for m in ctx.modalities if m not in BUILT_IN_MODALITIES}
    record_facts(run_dir, RunFacts(
        task=settings.task, horizon=settings.horizon_record(cohort_config.time_unit), sequences=list(ctx.sequences),
        column_roles=cohort_roles(cohort.config), plugins=plugins, plugin_modules=plugin_modules(plugins),
        shared_encoders=ctx.shared_encoders))
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
    atomic_write_text(paths.splits, json.dumps(splits))
    results = {}
    for name, split in tqdm(splits.items(), desc="folds", unit="fold"):
        path = paths.fold(name)
        if path.is_file():  # finished before a stop: --resume skips it
            results[name] = json.loads(path.read_text())
            continue
        result, model = (run_survival_fold if survival else run_fold)(ctx, split["train"], split["test"],
                                                                      run_config.seed + len(results))
        weights = paths.fold_weights(name)
        save_weights(model.state_dict(), weights)
        record_weights(run_dir, [weights])  # before the fold file that marks the fold done
        atomic_write_text(path, json.dumps(result))
        results[name] = result
        if survival:
            logger.info("fold %s: Harrell's C %.3f", name, result["metrics"]["harrell_c"])
        else:
            logger.info("fold %s: AUROC %.3f (threshold %.3f)", name, result["metrics"]["auroc"], result["threshold"])
    if survival:
        summarise_survival_run(run_dir, run_config, cohort, test, settings, results, run_config.seed)
    else:
        summarise_run(run_dir, run_config, cohort, test, settings, results, run_config.seed)
