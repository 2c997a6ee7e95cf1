"""Time-to-event outcomes: the binary label at a horizon, censoring, units, and what validate reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_cohort, write_nifti

from multimodal.cohort import load_cohort
from multimodal.config import CohortConfig, load_cohort_config
from multimodal.errors import CohortError, ConfigError
from multimodal.outcome import Horizon, horizon_labels
from multimodal.validate import validate_cohort

NAN = np.nan


def test_the_label_at_a_horizon_follows_the_censoring_rules() -> None:
    # (follow-up months, event) -> label at 12 months, written out by hand
    cases = [((5, 1), 1.0), ((12, 1), 1.0), ((13, 1), 0.0), ((12, 0), 0.0), ((30, 0), 0.0),
             ((5, 0), NAN), ((11.9, 0), NAN), ((NAN, 1), NAN), ((4, NAN), NAN)]
    time = np.array([c[0][0] for c in cases], float)
    event = np.array([c[0][1] for c in cases], float)
    labels, counts = horizon_labels(time, event, 12.0)
    np.testing.assert_array_equal(labels, [c[1] for c in cases])
    assert counts == {"event_by_horizon": 2, "followed_past_horizon": 3, "censored_before_horizon": 2,
                      "missing_time_or_event": 2}


def test_a_horizon_in_months_applies_to_follow_up_in_days() -> None:
    horizon = Horizon(12, "months").in_unit("days")
    assert horizon == pytest.approx(365.25)
    labels, _ = horizon_labels(np.array([365.0, 366.0, 366.0, 364.0]), np.array([1, 1, 0, 0]), horizon)
    np.testing.assert_array_equal(labels, [1.0, 0.0, 0.0, NAN])


def _cohort(tmp_path: Path, rows: list[dict], **config) -> Path:
    for row in rows:
        write_nifti(tmp_path / f"{row['subject_id']}.nii.gz", np.ones((4, 4, 4), np.float32))
        row.setdefault("flair", f"{row['subject_id']}.nii.gz")
    return write_cohort(tmp_path, rows, {"label": None, "time": "followup_months", "event": "recurrence", **config})


ROWS = [{"subject_id": "a", "followup_months": 3, "recurrence": 1, "age": 70},
        {"subject_id": "b", "followup_months": 5, "recurrence": 0, "age": 61},  # censored before 12 months
        {"subject_id": "c", "followup_months": 24, "recurrence": 0, "age": 80},
        {"subject_id": "d", "followup_months": 18, "recurrence": 1, "age": 55},  # event after the horizon
        {"subject_id": "e", "followup_months": "", "recurrence": 0, "age": 66}]


def test_a_time_to_event_cohort_is_labeled_at_the_horizon_and_time_and_event_are_no_features(tmp_path: Path) -> None:
    cohort = load_cohort(load_cohort_config(_cohort(tmp_path, [dict(r) for r in ROWS])), Horizon(12))
    np.testing.assert_array_equal(cohort.labels, [1.0, NAN, 0.0, 0.0, NAN])
    assert list(cohort.features.columns) == ["age"]
    assert cohort.subset(["c", "a"]).time.tolist() == [24.0, 3.0]
    no_horizon = load_cohort(load_cohort_config(tmp_path / "cohort.yaml"))
    assert np.isnan(no_horizon.labels).all()  # no label column and no horizon: nothing is labeled


def test_validate_says_how_many_subjects_each_rule_moved(tmp_path: Path) -> None:
    config = load_cohort_config(_cohort(tmp_path, [dict(r) for r in ROWS]))
    report = validate_cohort(config, horizon=Horizon(12))
    assert report.summary["outcome"] == {"event_by_horizon": 1, "followed_past_horizon": 2,
                                         "censored_before_horizon": 1, "missing_time_or_event": 1,
                                         "horizon": "12 months"}
    assert report.summary["labeled"] == 3
    without = validate_cohort(config)
    assert any("without a horizon" in w.message for w in without.warnings)


def test_a_label_column_beside_time_and_event_is_checked_against_them(tmp_path: Path) -> None:
    rows = [dict(r, recurrence_12m=lab) for r, lab in zip(ROWS, [1, 0, 1, 0, 0], strict=True)]  # c disagrees
    config = load_cohort_config(_cohort(tmp_path, rows, label="recurrence_12m"))
    report = validate_cohort(config, horizon=Horizon(12))
    assert any("disagrees" in w.message and "for 1 subject" in w.message for w in report.warnings)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("followup_months", "-2", "follow-up time '-2' is not a number of months >= 0"),
    ("followup_months", "soon", "follow-up time 'soon'"),
    ("recurrence", "2", "event '2' is not 0/1"),
])
def test_bad_time_or_event_cells_name_the_subject(tmp_path: Path, column: str, value: str, message: str) -> None:
    rows = [dict(r) for r in ROWS]
    rows[2][column] = value
    with pytest.raises(CohortError, match=message) as error:
        load_cohort(load_cohort_config(_cohort(tmp_path, rows)), Horizon(12))
    assert "c" in str(error.value)


def test_time_needs_event_and_a_known_unit() -> None:
    with pytest.raises(ConfigError, match="give both columns"):
        CohortConfig(csv=Path("c.csv"), images={"flair": "f"}, time="t")
    with pytest.raises(ConfigError, match="time_unit"):
        CohortConfig(csv=Path("c.csv"), images={"flair": "f"}, time="t", event="e", time_unit="fortnights")
    with pytest.raises(ConfigError, match=r"finetune\.horizon must be a positive number"):
        Horizon(-1)


def test_a_time_to_event_cohort_fine_tunes_on_its_horizon_labels_from_the_cli(tmp_path: Path, capsys) -> None:
    from conftest import write_tiny_config

    from multimodal.synthetic import write_synthetic_cohort
    from strokessl.cli import main

    source = write_synthetic_cohort(tmp_path / "c", n=36, grid=16, labeled_fraction=1.0, seed=6, prevalence=0.35)
    table = pd.read_csv(source.parent / "cohort.csv", dtype={"subject_id": str}).drop(
        columns=["followup_months", "recurrence"])  # the generator's own follow-up, replaced below
    rng = np.random.default_rng(0)
    event = table.pop("recurrence_12m").to_numpy().copy()
    followup = np.where(event == 1, rng.uniform(1, 12, len(table)), rng.uniform(13, 36, len(table)))
    censored = rng.permutation(len(table))[:6]  # six subjects lost to follow-up before 12 months
    followup[censored], event[censored] = rng.uniform(1, 11, 6), 0
    table["followup_days"], table["event"] = (followup * 30.4375).round(), event
    table.to_csv(source.parent / "cohort.csv", index=False)
    roles = yaml.safe_load(source.read_text())
    roles.update(label=None, time="followup_days", time_unit="days", event="event")
    source.write_text(yaml.safe_dump(roles))
    config = write_tiny_config(tmp_path / "run.yaml", source, finetune={
        "folds": 2, "repeats": 1, "bootstrap": 100, "horizon": 12, "horizon_unit": "months"})
    assert main(["validate", str(config)]) == 0
    assert "6 censored before it" in capsys.readouterr().out
    assert main(["pretrain", str(config), "--set", f"run.dir={tmp_path / 'pre'}"]) == 0
    assert main(["finetune", str(config), "--init", str(tmp_path / "pre"), "--set", f"run.dir={tmp_path / 'ft'}"]) == 0
    scored = pd.read_csv(tmp_path / "ft" / "predictions.csv", dtype={"subject_id": str})
    assert len(scored) == 30 and not set(scored["subject_id"]) & set(table["subject_id"].iloc[censored])
