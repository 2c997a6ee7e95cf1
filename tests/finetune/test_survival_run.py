"""The survival task end to end from the CLI: Cox probe and Cox baseline in the same folds, metrics with
intervals, the Kaplan-Meier report, predict's risk and probability by the horizon; and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_config

from multimodal.survival_metrics import harrell_c
from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main


@pytest.fixture(scope="module")
def survival_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 70-subject synthetic cohort (every subject with follow-up), a 1-epoch pretraining, a survival run."""
    root = tmp_path_factory.mktemp("survival")
    cohort = write_synthetic_cohort(root / "c", n=70, grid=16, labeled_fraction=1.0, seed=4, prevalence=0.3)
    config = write_tiny_config(root / "run.yaml", cohort, finetune={"folds": 2, "repeats": 1, "bootstrap": 100})
    assert main(["pretrain", str(config), "--set", f"run.dir={root / 'pre'}"]) == 0
    assert main(["finetune", str(config), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", f"run.dir={root / 'ft'}"]) == 0
    return root, cohort, root / "ft"


def test_a_survival_run_reports_c_indices_with_intervals_and_the_cox_baseline(survival_run) -> None:
    _, cohort, run = survival_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "survival" and metrics["horizon"]["value"] == 12
    table = pd.read_csv(cohort.parent / "cohort.csv")
    assert metrics["n"] == 70 and metrics["events"] == int(table["recurrence"].sum())
    for section in (metrics["model"], metrics["baselines"]["cox"]):
        for name in ("harrell_c", "uno_c", "td_auroc", "brier"):
            low, high = section[name]["ci"]
            assert low <= section[name]["value"] <= high
    # the pooled out-of-fold risks give the reported C-index (an independent recomputation)
    scored = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert harrell_c(scored["risk"], scored["event"], scored["time"]) == pytest.approx(
        metrics["model"]["harrell_c"]["value"])
    assert harrell_c(scored["cox_risk"], scored["event"], scored["time"]) == pytest.approx(
        metrics["baselines"]["cox"]["harrell_c"]["value"])
    assert "cox_oracle" in metrics["baselines"]  # the generator's truth is in the cohort folder
    groups = metrics["risk_groups"]
    assert groups["high"]["n"] + groups["low"]["n"] == 70 and 0 <= groups["logrank"]["p_value"] <= 1
    assert (run / "report" / "kaplan_meier.png").stat().st_size > 10_000
    assert "Harrell's C" in (run / "report" / "summary.md").read_text()
    facts = json.loads((run / "run.json").read_text())["facts"]  # what predict and explain read
    assert facts["task"] == "survival" and facts["horizon"]["in_time_unit"] == 12
    assert facts["sequences"] == ["flair", "dwi"] and facts["column_roles"]["time"] == "followup_months"
    assert facts["shared_encoders"] == ["image", "table"]  # frozen, pretrained: every fold holds the same weights


def test_predict_writes_the_risk_score_and_the_probability_by_the_horizon(survival_run) -> None:
    root, cohort, run = survival_run
    assert main(["predict", str(run), "--cohort", str(cohort), "--out", str(root / "pred.csv")]) == 0
    scored = pd.read_csv(root / "pred.csv", dtype={"subject_id": str}).set_index("subject_id")
    probability = scored["probability_by_12_months"]
    assert ((probability > 0) & (probability < 1)).all()
    # a higher log hazard is a higher probability of recurrence by the horizon, fold by fold
    for fold in [c.removeprefix("risk_") for c in scored.columns if c.startswith("risk_r")]:
        order = np.argsort(scored[f"risk_{fold}"].to_numpy())
        assert np.all(np.diff(scored[f"probability_{fold}"].to_numpy()[order]) >= 0)
    assert np.allclose(scored[[c for c in scored.columns if c.startswith("risk_r")]].mean(axis=1), scored["risk_score"])
    assert set(scored["risk_group"]) <= {"high", "low"}


def test_survival_needs_time_and_event_and_a_frozen_probe(survival_run, tmp_path: Path, capsys) -> None:
    root, cohort, _ = survival_run
    config = root / "run.yaml"
    assert main(["finetune", str(config), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", "finetune.mode=trainable", "--set", f"run.dir={tmp_path / 'a'}"]) == 2
    assert "finetune.task: survival fits a Cox model on frozen embeddings" in capsys.readouterr().err
    roles = (cohort.parent / "cohort.yaml").read_text()
    plain = tmp_path / "cohort.yaml"
    plain.write_text(roles.replace("time: followup_months\n", "").replace("time_unit: months\n", "")
                     .replace("event: recurrence\n", "").replace("csv: cohort.csv", f"csv: {cohort.parent / 'cohort.csv'}"))
    assert main(["finetune", str(config), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", f"cohort={plain}", "--set", f"run.dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "finetune.task: survival needs a time-to-event outcome" in err and "add time:" in err


def test_the_run_writes_its_model_report_and_decision_curve(survival_run) -> None:
    _, _, run = survival_run
    report = (run / "report" / "model_report.md").read_text()
    for section in ("## 1. Data", "## 4. Performance", "## 5. Calibration at the horizon", "## 7. Clinical utility",
                    "## 8. Verdict", "| hba1c | continuous |", "Harrell's C"):
        assert section in report
    assert "sub-00" not in report  # aggregate figures only, no subject id
    metrics = json.loads((run / "metrics.json").read_text())
    curve = metrics["decision_curve"]
    assert set(curve["net_benefit"]) >= {"model", "cox", "treat_all", "treat_none"}
    for name in ("decision_curve.png", "calibration.png"):
        assert (run / "report" / name).stat().st_size > 10_000


def test_the_fusion_head_trains_on_the_cox_likelihood(survival_run, tmp_path: Path) -> None:
    root, cohort, _ = survival_run
    run = tmp_path / "mlp"
    assert main(["finetune", str(root / "run.yaml"), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", "finetune.head=mlp", "--set", "finetune.epochs=30", "--set", f"run.dir={run}"]) == 0
    fold = json.loads((run / "folds" / "r0f0.json").read_text())
    losses = [entry["train_loss"] for entry in fold["history"]]
    assert losses[-1] < losses[0]  # the partial likelihood rises on the training split
    assert sum(bool(entry.get("selected")) for entry in fold["history"]) == 1
    assert 0 < fold["baseline_survival"] < 1
    assert "trained by the Cox partial likelihood" in (run / "report" / "model_report.md").read_text()
    assert main(["predict", str(run), "--cohort", str(cohort), "--out", str(tmp_path / "p.csv")]) == 0


def test_a_fixed_test_cohort_is_scored_by_the_fold_models_and_the_refit_cox(survival_run, tmp_path: Path) -> None:
    root, _, _ = survival_run
    test = write_synthetic_cohort(tmp_path / "test", n=40, grid=16, labeled_fraction=1.0, seed=9, prevalence=0.3)
    run = tmp_path / "with_test"
    assert main(["finetune", str(root / "run.yaml"), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", f"finetune.test_cohort={test}", "--set", f"run.dir={run}"]) == 0
    section = json.loads((run / "metrics.json").read_text())["test"]
    assert section["n"] == 40 and set(section["baselines"]) == {"cox", "cox_oracle"}
    scored = pd.read_csv(run / "test_predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert harrell_c(scored["risk_score"], scored["event"], scored["time"]) == pytest.approx(
        section["model"]["harrell_c"]["value"])
    assert harrell_c(scored["cox_risk"], scored["event"], scored["time"]) == pytest.approx(
        section["baselines"]["cox"]["harrell_c"]["value"])
    assert (run / "report" / "test_kaplan_meier.png").is_file()
    assert "Fixed test cohort (40 subjects" in (run / "report" / "model_report.md").read_text()


def test_too_few_events_per_fold_is_a_clear_error(survival_run, tmp_path: Path, capsys) -> None:
    root, cohort, _ = survival_run
    table = pd.read_csv(cohort.parent / "cohort.csv", dtype={"subject_id": str})
    table["recurrence"] = 0
    table.loc[table.index[:2], "recurrence"] = 1  # two events: one per training fold of 2-fold CV
    for sequence in ("flair", "dwi"):  # the copy lives elsewhere: absolute image paths
        table[sequence] = [str(cohort.parent / path) for path in table[sequence]]
    table.to_csv(tmp_path / "cohort.csv", index=False)
    roles = (cohort.parent / "cohort.yaml").read_text().replace("csv: cohort.csv", f"csv: {tmp_path / 'cohort.csv'}")
    (tmp_path / "cohort.yaml").write_text(roles)
    assert main(["finetune", str(root / "run.yaml"), "--init", str(root / "pre"), "--set", "finetune.task=survival",
                 "--set", f"cohort={tmp_path / 'cohort.yaml'}", "--set", f"run.dir={tmp_path / 'ft'}"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 per fold: lower finetune.folds" in err and "Traceback" not in err
