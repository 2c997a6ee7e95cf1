"""Quality benchmark: does pretraining pay off when labels are few? (JSON + a Markdown table)

    python benchmarks/quality.py [--quick] [--runs DIR] [--cohort-seed S] [--methods a,b,...]

One synthetic cohort (``strokessl synth``) is split three ways: the unlabeled subjects (every
pretraining run reads only these), a labeled training pool, and a fixed labeled test cohort. Each
pretraining objective runs once. For every label budget (a stratified share of the training pool)
and seed, every method is fine-tuned with cross-validation on the budget's subjects, and its fold
ensemble is scored on the same fixed test cohort, beside logistic regression and gradient
boosting refitted on the same subjects (``finetune.test_cohort``). The table reports test AUROC,
AUPRC and balanced accuracy as mean ± sd over seeds, each AUROC as a fraction of the generator's
Bayes, image-part and tabular-part oracle AUROCs (``risk.csv``), the paired ΔAUROC against
logistic regression, and pairwise gaps between methods at the smallest budget; plus linear
probes of the generator factors from each frozen image embedding (``factor_probe.py``).

Everything resumes: a finished pretraining or fine-tuning run is reused, so a killed benchmark
goes on where it stopped. Report on a cohort seed other than the one settings were tuned on.
"""

from __future__ import annotations

# ruff: noqa: E402 - OMP_NUM_THREADS must be set before torch is imported
import os

# One intra-op thread: with 2 DataLoader workers on 2 cores, 2 torch threads oversubscribe the CPU
# (measured: 3.3 pretraining batches/s with 1 thread against 0.15-0.3 with 2 beside another job).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # factor_probe.py beside this file
sys.path.insert(0, str(HERE.parent))  # the project, when run from a checkout

from finetune.metrics import paired_bootstrap_delta_auroc
from finetune.oracle import MIN_ORACLE_GAIN, ORACLE
from finetune.run import run_finetune
from multimodal.synthetic import write_synthetic_cohort
from pretrain.run import run_pretrain

logger = logging.getLogger("quality")
CONFIG = HERE / "quality.yaml"
LABEL = "recurrence_12m"  # the synthetic cohorts' label column (empty = unlabeled)

# Pretraining objectives the methods draw on (name -> pretrain.objectives).
PRETRAININGS = {
    "clip_itm": {"clip": 1.0, "itm": 1.0},
    "clip": {"clip": 1.0},
    "clip_masked": {"clip": 1.0, "masked_tabular": 1.0},
    "simclr": {"simclr": 1.0},
    "scarf": {"scarf": 1.0},
    # Levers that keep the image's own information (optional objectives and encoder options).
    "clip_masked_volume": {"clip": 1.0, "masked_volume": 1.0},
    "clip_multiscale": {"clip": 1.0},
    "clip_simclr_lesion": {"clip": 1.0, "simclr": 1.0},
    "clip_stages": {"clip": 1.0},
    "clip_stages_text": {"clip": 1.0},  # + image-report and table-report clip: the report as a teacher
}
REPORT_ENCODER = {"name": "tfidf_projection", "args": {"features": 4096, "dim": 64}}  # configs/demo.yaml's
# Further run-config overrides of a pretraining (beyond its objectives).
PRETRAIN_SETS: dict[str, list[str]] = {
    "clip_multiscale": ['model.image_encoder_args={"stem_stride": 2, "norm": "group", "widen_factor": 0.5, '
                        '"pool": "multiscale"}'],
    "clip_simclr_lesion": ["pretrain.simclr_views=lesion_preserving"],
    "clip_stages": ['model.image_encoder_args={"stem_stride": 2, "norm": "group", "widen_factor": 0.5, '
                    '"pool": "stages"}'],
    "clip_stages_text": ['model.image_encoder_args={"stem_stride": 2, "norm": "group", "widen_factor": 0.5, '
                         '"pool": "stages"}', f"model.encoders.report={json.dumps(REPORT_ENCODER)}"],
}
_PROBE = {"mode": "frozen", "head": "probe"}
# Method -> (pretraining or None, finetune overrides). "default" is the shipped recipe of
# configs/*.yaml: keep the two in step.
METHODS: dict[str, tuple[str | None, dict[str, Any]]] = {
    # the recipe of configs/*.yaml: clip with the stages pool, then a frozen linear probe
    "default": ("clip_stages", _PROBE),
    "clip_avg": ("clip", _PROBE),  # the default before pool: stages (the last stage's global average)
    "image_only": ("clip_stages", {**_PROBE, "branches": "image"}),  # the frozen image embedding alone
    "clip_itm_probe": ("clip_itm", _PROBE),
    "clip_itm_frozen": ("clip_itm", {"mode": "frozen", "head": "mlp"}),
    "clip_itm_trainable": ("clip_itm", {"mode": "trainable", "head": "mlp"}),
    "masked_tabular": ("clip_masked", _PROBE),
    "simclr": ("simclr", _PROBE),
    "scarf": ("scarf", {**_PROBE, "branches": "table"}),
    "scratch": (None, {"mode": "scratch", "head": "mlp"}),
    # image + table + report text (the report a teacher in pretraining and a probe block); its baselines
    # read the report too (rows "logistic_regression+text", ...)
    "default_text": ("clip_stages_text", _PROBE),
    "masked_volume": ("clip_masked_volume", _PROBE),  # clip + masked-volume modelling, then the probe
    "multiscale": ("clip_multiscale", _PROBE),  # clip with average + max pooling of two stages
    "clip_simclr_lesion": ("clip_simclr_lesion", _PROBE),  # clip + SimCLR with lesion-preserving views
    "lpft": ("clip_stages", {"mode": "trainable", "head": "probe"}),  # the probe first, then encoders + head fine-tuned
    "probe_pcs_pretraining": ("clip_stages", {**_PROBE, "probe_components": "pretraining"}),  # PCs of the pretraining subjects
    # how many principal components each embedding block keeps (the default 16 against more, and all)
    "probe_pcs32": ("clip_stages", {**_PROBE, "probe_pcs": 32}),
    "probe_pcs64": ("clip_stages", {**_PROBE, "probe_pcs": 64}),
    "probe_pcs_all": ("clip_stages", {**_PROBE, "probe_pcs": None}),
}
BASELINES = ("logistic_regression", "gradient_boosting")
MULTIMODAL = ("default", "clip_avg", "clip_itm_probe", "masked_tabular", "masked_volume", "multiscale",
              "clip_simclr_lesion")
UNIMODAL = ("simclr", "scarf")
TEXT_METHODS = ("default_text",)  # methods reading the report: their baselines do too
TEXT = "+text"  # suffix of those baselines' rows


@dataclass
class Profile:
    n: int  # subjects in the cohort
    labeled_fraction: float  # labeled share; half of it becomes the fixed test cohort
    budgets: tuple[float, ...]  # shares of the labeled training pool
    seeds: tuple[int, ...]
    pretrain: dict[str, Any] = field(default_factory=dict)  # --set overrides of pretrain.*
    finetune: dict[str, Any] = field(default_factory=dict)  # --set overrides of finetune.*
    grid: int = 32  # synth grid (voxels along the longest axis)
    test_share: float = 0.5
    imaging: dict[str, Any] = field(default_factory=dict)  # --set overrides of imaging.* (--grid)


PROFILES = {
    "full": Profile(n=3200, labeled_fraction=0.5, budgets=(0.1, 0.25, 1.0), seeds=(0, 1, 2),
                    pretrain={"epochs": 30}, finetune={"folds": 5, "repeats": 1, "bootstrap": 2000}),
    # Choosing levers (objectives, heads) on a tuning cohort: one budget, one seed, never the reported cohort.
    "tune": Profile(n=1200, labeled_fraction=0.5, budgets=(1.0,), seeds=(0,), pretrain={"epochs": 20},
                    finetune={"folds": 5, "repeats": 1, "bootstrap": 1000}),
    # A smoke run of the whole pipeline, not a measurement: 120 labeled training subjects.
    "quick": Profile(n=480, labeled_fraction=0.5, budgets=(0.5, 1.0), seeds=(0,), grid=24,
                     pretrain={"epochs": 3, "val_fraction": 0.2},
                     finetune={"folds": 3, "repeats": 1, "epochs": 3, "bootstrap": 200}),
}


def _sets(section: str, values: dict[str, Any]) -> list[str]:
    return [f"{section}.{key}={json.dumps(value)}" for key, value in values.items()]


# --------------------------------------------------------------------------- cohort and splits
def prepare_cohort(root: Path, profile: Profile, seed: int, risk_profile: str = "standard") -> dict[str, Any]:
    """Synthesise once; split the labeled subjects into a training pool and a fixed test cohort."""
    cohort_yaml = root / "cohort" / "cohort.yaml"
    if (root / "cohort" / "cohort.csv").is_file():
        truth = json.loads((root / "cohort" / "truth.json").read_text())
        if risk_profile != "independent" and truth.get("grid") != profile.grid:
            raise SystemExit(f"{root / 'cohort'} was synthesised at grid {truth.get('grid')}, not {profile.grid}: "
                             "give another --runs folder for this grid")
    elif risk_profile == "independent":  # the second generator, written apart from ours (native grids)
        from independent_generator import write_independent_cohort  # benchmarks/ is on sys.path

        write_independent_cohort(root / "cohort", n=profile.n, labeled_fraction=profile.labeled_fraction, seed=seed)
    else:
        write_synthetic_cohort(root / "cohort", n=profile.n, grid=profile.grid,
                               labeled_fraction=profile.labeled_fraction, seed=seed, profile=risk_profile)
    pool, test = split_pool_test(root / "cohort" / "cohort.csv", profile.test_share, seed)
    _write_subset(cohort_yaml, test, "test")
    return {"cohort": cohort_yaml, "pool": pool, "test": root / "cohort" / "test.yaml",
            "test_ids": list(test["subject_id"])}


def split_pool_test(csv: Path, test_share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labeled rows of the cohort table, split (stratified) into the training pool and the test cohort."""
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    labeled = table[table[LABEL] != ""]
    pool, test = train_test_split(labeled, test_size=test_share, stratify=labeled[LABEL], random_state=seed)
    return pool, test


def budget_rows(pool: pd.DataFrame, budget: float, seed: int) -> pd.DataFrame:
    """The stratified ``budget`` share of the training pool's rows (all of them at 1)."""
    if budget >= 1.0:
        return pool
    chosen, _ = train_test_split(pool, train_size=budget, stratify=pool[LABEL], random_state=seed)
    return chosen


def _write_subset(cohort_yaml: Path, rows: pd.DataFrame, name: str) -> Path:
    """``<name>.csv`` + ``<name>.yaml`` beside the cohort (image paths stay relative to it)."""
    folder = cohort_yaml.parent
    config = yaml.safe_load(cohort_yaml.read_text())
    if not (folder / f"{name}.csv").is_file():
        rows.to_csv(folder / f"{name}.csv.tmp", index=False)
        (folder / f"{name}.csv.tmp").replace(folder / f"{name}.csv")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**config, "csv": f"{name}.csv"}, sort_keys=False))
    return folder / f"{name}.yaml"


def budget_cohort(cohort_yaml: Path, pool: pd.DataFrame, budget: float, seed: int) -> Path:
    """The stratified ``budget`` share of the training pool, as its own cohort.yaml."""
    return _write_subset(cohort_yaml, budget_rows(pool, budget, seed), f"budget{round(budget * 100)}_seed{seed}")


# --------------------------------------------------------------------------- runs
def pretrain(root: Path, name: str, cohort: Path, profile: Profile) -> Path:
    run = root / f"pretrain-{name}"
    if not (run / "metrics.json").is_file():
        overrides = [f"cohort={cohort}", f"run.dir={run}", f"pretrain.objectives={json.dumps(PRETRAININGS[name])}",
                     *PRETRAIN_SETS.get(name, []), *_sets("pretrain", profile.pretrain),
                     *_sets("imaging", profile.imaging)]
        run_pretrain(CONFIG, overrides, resume=True)
    return run


def finetune(root: Path, method: str, budget: float, seed: int, cohort: Path, test: Path, init: Path | None,
             profile: Profile, run_missing: bool = True) -> dict[str, Any] | None:
    """The test-cohort metrics of one method × budget × seed, fine-tuning it first unless it is
    finished; None when it is not and ``run_missing`` is False."""
    run = root / f"{method}-b{round(budget * 100)}-s{seed}"
    if not (run / "metrics.json").is_file() and not run_missing:
        return None
    if not (run / "metrics.json").is_file():
        overrides = [f"cohort={cohort}", f"run.dir={run}", f"seed={seed}", f"finetune.test_cohort={test}",
                     *_sets("finetune", {**profile.finetune, **METHODS[method][1]}),
                     *_sets("imaging", profile.imaging)]
        run_finetune(CONFIG, overrides, init=init, resume=(run / "folds.json").is_file())
    metrics = json.loads((run / "metrics.json").read_text())
    scores = pd.read_csv(run / "test_predictions.csv").set_index("subject_id")
    return {"metrics": metrics["test"], "cv": metrics["model"]["auroc"]["estimate"], "scores": scores}


# --------------------------------------------------------------------------- summary
def oracles(cohort_dir: Path, ids: list[str]) -> dict[str, float]:
    """AUROC of the generator's true risk and of its image / tabular parts on the test subjects."""
    risk = pd.read_csv(cohort_dir / "risk.csv").set_index("subject_id").loc[ids]
    y = risk["drawn_label"].to_numpy()
    return {"bayes": float(roc_auc_score(y, risk["true_risk"])),
            "image": float(roc_auc_score(y, risk["image_component"])),
            "tabular": float(roc_auc_score(y, risk["tabular_component"]))}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(results: dict[tuple[str, float, int], dict[str, Any]], oracle: dict[str, float],
              budgets: tuple[float, ...], bootstrap: int) -> dict[str, Any]:
    """Per budget and method: mean ± sd over seeds of test AUROC / AUPRC / balanced accuracy,
    AUROC as fractions of the oracles, paired ΔAUROC vs each baseline; gaps between methods."""
    table: dict[str, dict[str, Any]] = {}
    for budget in budgets:
        rows: dict[str, Any] = {}
        runs = {(m, s): r for (m, b, s), r in results.items() if b == budget}
        for method in dict.fromkeys(m for m, _ in runs):
            seeds = [r for (m, _), r in runs.items() if m == method]
            entry = {k: _mean_sd([r["metrics"]["model"][k]["estimate"] for r in seeds])
                     for k in ("auroc", "auprc", "balanced_accuracy")}
            entry["cv_auroc"] = _mean_sd([r["cv"] for r in seeds])
            entry["auroc_fraction"] = {k: entry["auroc"]["mean"] / v for k, v in oracle.items()}
            entry["delta_auroc"] = {b: [r["metrics"]["delta_auroc"][b] for r in seeds] for b in BASELINES}
            if all(ORACLE in r["metrics"] for r in seeds):  # synthetic truth: share of the oracle gain
                entry["share_of_oracle_gain"] = [r["metrics"][ORACLE]["share"] for r in seeds]
            rows[method] = entry
        for suffix, reads_text in (("", False), (TEXT, True)):  # the baselines of table-only and text methods
            # refit on the same subjects in every run of a seed (and the same text): take each seed's last
            seeds = {s: r for (m, s), r in runs.items() if (m in TEXT_METHODS) == reads_text}
            if not seeds:
                continue
            for baseline in BASELINES:
                rows[baseline + suffix] = {k: _mean_sd([r["metrics"]["baselines"][baseline][k]["estimate"]
                                                        for r in seeds.values()])
                                           for k in ("auroc", "auprc", "balanced_accuracy")}
            with_truth = {s: r for s, r in seeds.items() if ORACLE in r["metrics"]}
            if with_truth:
                rows[ORACLE + suffix] = {"auroc": _mean_sd([r["metrics"][ORACLE]["auroc"]["estimate"]
                                                            for r in with_truth.values()])}
        for name in [*BASELINES, ORACLE, *(b + TEXT for b in (*BASELINES, ORACLE))]:
            if name in rows:
                rows[name]["auroc_fraction"] = {k: rows[name]["auroc"]["mean"] / v for k, v in oracle.items()}
        table[f"{round(budget * 100)}%"] = rows
    return {"oracles": oracle, "by_budget": table,
            "gaps": _gaps(results, min(budgets), bootstrap)}


def _gaps(results: dict[tuple[str, float, int], dict[str, Any]], budget: float, bootstrap: int) -> dict[str, Any]:
    """Paired bootstrap ΔAUROC on the test cohort at ``budget``: best multimodal − best unimodal SSL
    − scratch, per seed (the methods' test predictions share subjects)."""
    def best(methods: tuple[str, ...]) -> str | None:
        present = [m for m in methods if any(k[0] == m and k[1] == budget for k in results)]
        means = {m: np.mean([r["metrics"]["model"]["auroc"]["estimate"] for k, r in results.items()
                             if k[0] == m and k[1] == budget]) for m in present}
        return max(means, key=means.get) if means else None

    chain = [best(MULTIMODAL), best(UNIMODAL), "scratch"]
    gaps: dict[str, Any] = {"budget": budget, "chain": chain}
    for a, b in itertools.pairwise(chain):
        if a is None or b is None:
            continue
        per_seed = []
        for (m, bud, seed), r in results.items():
            other = results.get((b, bud, seed))
            if m == a and bud == budget and other is not None:
                y = r["scores"]["label"].to_numpy()
                per_seed.append(paired_bootstrap_delta_auroc(
                    y, r["scores"]["probability"].to_numpy(),
                    other["scores"].loc[r["scores"].index, "probability"].to_numpy(), bootstrap, seed))
        gaps[f"{a} - {b}"] = per_seed
    return gaps


def _share(d: dict[str, float]) -> str:
    """One seed's share of the oracle gain with its CI, or why there is none (a prize under 0.03)."""
    if d["oracle_gain"] < MIN_ORACLE_GAIN:
        return f"n/a (oracle gain {d['oracle_gain']:+.3f})"
    return f"{d['share']:.2f} [{d['lower']:.2f}, {d['upper']:.2f}]"


def markdown(summary: dict[str, Any], probes: dict[str, Any], info: dict[str, Any]) -> str:
    o = summary["oracles"]
    lines = [f"Profile {info['profile']}, synth risk profile {info.get('risk_profile', 'standard')}, "
             f"cohort seed {info['cohort_seed']}, {info['runs_done']} fine-tuning runs, "
             f"wall-clock {info['wall_clock_s'] / 60:.1f} min (this invocation).", "",
             f"Test cohort: {info['test_n']} subjects ({info['test_positives']} positive); oracle AUROCs: "
             f"Bayes {o['bayes']:.3f}, image part {o['image']:.3f}, tabular part {o['tabular']:.3f}.", ""]
    head = ("| budget | method | test AUROC | AUPRC | bal. acc. | ×Bayes | ×image | ×tabular | ΔAUROC vs LR per seed | "
            "share of the oracle gain per seed | CV AUROC |")
    lines += [head, "|" + " --- |" * 11]
    for budget, rows in summary["by_budget"].items():
        for method, e in rows.items():
            def cell(k: str, e: dict[str, Any] = e) -> str:
                return f"{e[k]['mean']:.3f} ± {e[k]['sd']:.3f}"

            f = e["auroc_fraction"]
            deltas = "; ".join(f"{d['delta']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]"
                               for d in e.get("delta_auroc", {}).get("logistic_regression", []))
            cv = cell("cv_auroc") if "cv_auroc" in e else ""
            shares = "; ".join(_share(d) for d in e.get("share_of_oracle_gain", []))
            name = {ORACLE: "oracle-feature LR (table + true image quantities)",
                    ORACLE + TEXT: "oracle-feature LR (table + report TF-IDF + true image quantities)"}.get(method, method)
            other = " | ".join(cell(k) if k in e else "" for k in ("auprc", "balanced_accuracy"))
            lines.append(f"| {budget} | {name} | {cell('auroc')} | {other} | "
                         f"{f['bayes']:.3f} | {f['image']:.3f} | {f['tabular']:.3f} | {deltas} | {shares} | {cv} |")
    gaps = summary["gaps"]
    lines += ["", f"Gaps at {round(gaps['budget'] * 100)}% labels (paired bootstrap on the test cohort, per seed):"]
    for key, per_seed in gaps.items():
        if key not in ("budget", "chain"):
            lines.append(f"- {key}: " + "; ".join(f"{d['delta']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]"
                                                  for d in per_seed))
    partial = sorted({k for p in probes.values() for k in p.get("partial_r2", {})})
    if partial:
        lines += ["", "Partial R² of each true image quantity beyond the clinical table (ridge probe of the residual "
                  "after regressing it on the table; the table alone: "
                  + ", ".join(f"{k} R² {next(iter(probes.values()))['table_r2'][k]:.2f}" for k in partial) + "):",
                  "", "| encoder | " + " | ".join(partial) + " |", "|" + " --- |" * (len(partial) + 1)]
        for encoder, p in probes.items():
            lines.append(f"| {encoder} | " + " | ".join(f"{p['partial_r2'].get(k, float('nan')):.2f}"
                                                      for k in partial) + " |")
    if probes:
        names = sorted({k for p in probes.values() for k in p.get("r2", {})})
        lines += ["", "Linear probes of generator factors from the frozen image embedding (CV R²; AUROC for the label):",
                  "", "| encoder | " + " | ".join(names) + " | label AUROC |", "|" + " --- |" * (len(names) + 2)]
        for encoder, p in probes.items():
            r2 = " | ".join(f"{p['r2'].get(k, float('nan')):.2f}" for k in names)
            lines.append(f"| {encoder} | {r2} | {p.get('auroc', {}).get('drawn_label', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def factor_probes(root: Path, cohort_dir: Path, runs: dict[str, Path], imaging: dict[str, Any]) -> dict[str, Any]:
    import factor_probe  # benchmarks/factor_probe.py

    probes = {}
    for name, run in {"random": None, **runs}.items():
        out = root / f"factor_probe-{name}.json"
        if not out.is_file():
            factor_probe.main([str(CONFIG), str(cohort_dir), "--out", str(out), "--label", name,
                               *(["--init", str(run)] if run is not None else []),
                               *(arg for item in _sets("imaging", imaging) for arg in ("--set", item))])
        probes[name] = json.loads(out.read_text())
    return probes


# --quick runs a subset on both profiles (the default, its image half, the tabular SSL and the supervised
# baselines), so both fit in 15 minutes on 2 cores; every method ran 22 min on the standard profile alone.
QUICK_METHODS = {"standard": ("default", "image_only", "scarf", "scratch"),
                 "image": ("default", "image_only", "scarf", "scratch", "default_text")}
RISK_PROFILES = ("standard", "image")  # "both"; "independent" (the second generator) runs only when named


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 15-minute run on 2 cores (small cohorts, 1 seed)")
    parser.add_argument("--tune", action="store_true",
                        help="the tuning size (1,200 subjects, full budget, one seed); use another --cohort-seed, e.g. 11")
    parser.add_argument("--profile", choices=[*RISK_PROFILES, "both", "independent"], default="both",
                        help="synth risk profile: standard, image (the image carries risk the record barely "
                             "predicts) or both (default); independent: a cohort of benchmarks/independent_generator.py")
    parser.add_argument("--runs", type=Path, help="working folder (default runs/quality[-quick][-image])")
    parser.add_argument("--cohort-seed", type=int, default=2, help="synth seed of the reported cohort")
    parser.add_argument("--methods", help=f"comma-separated subset of {list(METHODS)}")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/quality[_quick][_image].json)")
    parser.add_argument("--budgets", help="comma-separated subset of the profile's budgets, e.g. 0.1,1.0")
    parser.add_argument("--seeds", help="comma-separated subset of the profile's seeds, e.g. 0")
    parser.add_argument("--grid", type=int, help="synthesise and preprocess at G³ voxels over quality.yaml's "
                        "field of view (G voxels of its spacing x spatial_size / G mm; default 32, quick synth 24)")
    parser.add_argument("--pretrain-only", action="store_true", help="stop after the pretraining runs")
    parser.add_argument("--summarise-only", action="store_true",
                        help="train nothing: tabulate the finished runs in --runs (e.g. after a stopped benchmark)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profiles = list(RISK_PROFILES) if args.profile == "both" else [args.profile]
    if len(profiles) > 1 and (args.runs or args.out):
        parser.error("--runs and --out name one benchmark: give --profile standard or --profile image with them")
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    reports = {}
    for risk_profile in profiles:
        chosen = methods
        if args.quick and not args.methods and risk_profile in QUICK_METHODS:
            chosen = list(QUICK_METHODS[risk_profile])
        reports[risk_profile] = run_benchmark(args, risk_profile, chosen)
    return reports


def run_benchmark(args: argparse.Namespace, risk_profile: str, methods: list[str]) -> dict[str, Any]:
    """Every method on one synthetic cohort profile; writes its JSON + Markdown table and returns it."""
    size = "quick" if args.quick else "tune" if args.tune else "full"
    profile = PROFILES[size]
    if args.budgets or args.seeds:  # a subset of the runs (the table then says fewer seeds)
        profile = replace(profile, budgets=tuple(float(b) for b in args.budgets.split(",")) if args.budgets
                          else profile.budgets,
                          seeds=tuple(int(s) for s in args.seeds.split(",")) if args.seeds else profile.seeds)
    if args.grid:  # the cohort is written at this grid and every run preprocesses to it, same field of view
        imaging = yaml.safe_load(CONFIG.read_text())["imaging"]
        fov = [spacing * size for spacing, size in zip(imaging["spacing"], imaging["spatial_size"], strict=True)]
        profile = replace(profile, grid=args.grid, imaging={"spatial_size": [args.grid] * 3,
                                                            "spacing": [round(mm / args.grid, 4) for mm in fov]})
    suffix = (("" if size == "full" else f"_{size}") + ("" if risk_profile == "standard" else f"_{risk_profile}")
              + (f"_grid{args.grid}" if args.grid else ""))
    root = (args.runs or Path("runs") / f"quality{suffix.replace('_', '-')}").resolve()
    out = args.out or HERE / "results" / f"quality{suffix}.json"
    start = time.time()
    data = prepare_cohort(root, profile, args.cohort_seed, risk_profile)
    needed = [name for name in dict.fromkeys(METHODS[m][0] for m in methods) if name is not None]
    if args.summarise_only:
        needed = [name for name in needed if (root / f"pretrain-{name}" / "metrics.json").is_file()]
    pretrained = {name: pretrain(root, name, data["cohort"], profile) for name in needed}
    if args.pretrain_only:
        return {"pretrained": {k: str(v) for k, v in pretrained.items()}}
    images = {k: v for k, v in pretrained.items() if k != "scarf"}
    probes = factor_probes(root, data["cohort"].parent, images, profile.imaging)
    oracle = oracles(data["cohort"].parent, data["test_ids"])
    results: dict[tuple[str, float, int], dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for budget in profile.budgets:
        for seed in profile.seeds:
            cohort = budget_cohort(data["cohort"], data["pool"], budget, seed)
            for method in methods:
                source = METHODS[method][0]
                if source is not None and source not in pretrained:
                    continue  # --summarise-only: its pretraining never finished
                result = finetune(root, method, budget, seed, cohort, data["test"],
                                  pretrained.get(source) if source else None, profile,
                                  run_missing=not args.summarise_only)
                if result is not None:
                    results[(method, budget, seed)] = result
            if not results:
                continue
            # Written after every budget and seed, so a stopped benchmark still leaves its table.
            done = tuple(b for b in profile.budgets if any(k[1] == b for k in results))
            summary = summarise(results, oracle, done, profile.finetune.get("bootstrap", 2000))
            first = next(iter(results.values()))["metrics"]
            info = {"profile": size, "risk_profile": risk_profile,
                    "settings": asdict(profile), "cohort_seed": args.cohort_seed, "test_n": first["n"],
                    "test_positives": first["positives"], "methods": {m: METHODS[m] for m in methods},
                    "runs_done": len(results), "wall_clock_s": round(time.time() - start, 1)}
            report = {"info": info, **summary, "factor_probes": probes}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, default=str))
            out.with_suffix(".md").write_text(markdown(summary, probes, info))
    logger.info("wrote %s and %s (%.0f s)", out, out.with_suffix(".md"), time.time() - start)
    return report


if __name__ == "__main__":
    main()
