"""The oracle-feature logistic regression and the share of its gain a model captured (synthetic truth)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_config
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from finetune.baselines import baseline_frame, fit_predict_baseline
from finetune.oracle import ORACLE, share_of_oracle_gain
from multimodal.synthetic import write_synthetic_cohort
from multimodal.synthetic_clinical import draw_clinical, image_quantities
from strokessl.cli import main


def _scores(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    signal = rng.normal(size=n)
    baseline = y * 0.5 + rng.normal(size=n)
    oracle = baseline + y * 1.0 + 0.3 * signal
    return y, expit(baseline), expit(oracle)


@pytest.mark.parametrize("n", [41, 400])
def test_share_is_zero_for_the_baseline_one_for_the_oracle_and_a_ratio_in_between(n):
    y, baseline, oracle = _scores(n)
    assert share_of_oracle_gain(y, baseline, baseline, oracle, 200)["share"] == pytest.approx(0.0)
    assert share_of_oracle_gain(y, oracle, baseline, oracle, 200)["share"] == pytest.approx(1.0)
    between = expit(0.5 * logit(baseline) + 0.5 * logit(oracle))
    result = share_of_oracle_gain(y, between, baseline, oracle, 500, seed=3)
    a = {name: roc_auc_score(y, s) for name, s in (("m", between), ("b", baseline), ("o", oracle))}
    assert result["share"] == pytest.approx((a["m"] - a["b"]) / (a["o"] - a["b"]))
    assert result["oracle_gain"] == pytest.approx(a["o"] - a["b"])
    assert result["lower"] <= result["share"] <= result["upper"]
    assert result["oracle_gain_lower"] <= result["oracle_gain"] <= result["oracle_gain_upper"]


def _oracle_gain(profile: str, seed: int, n_train: int = 800) -> float:
    """Test AUROC of the LR baseline given the true image quantities minus the baseline's (no images)."""
    table, risk = draw_clinical(2 * n_train, seed=seed, profile=profile)
    y = risk["recurrence_12m"].to_numpy()
    categorical = ["sex", "atrial_fibrillation", "smoking", "hypertension", "diabetes"]
    frame = baseline_frame(table.reset_index(drop=True), [c for c in table.columns if c not in categorical],
                           categorical)
    oracle = pd.concat([frame, image_quantities(risk).reset_index(drop=True)], axis=1)
    train, test = np.arange(n_train), np.arange(n_train, 2 * n_train)
    auroc = {}
    for name, x in (("lr", frame), ("oracle", oracle)):
        p = fit_predict_baseline("logistic_regression", x.iloc[train], y[train], x.iloc[test], 0)
        auroc[name] = roc_auc_score(y[test], p)
    return auroc["oracle"] - auroc["lr"]


def test_image_profile_leaves_room_for_the_image_to_win():
    # The benchmark's labeled size (800 training subjects): the true image quantities must add
    # >= 0.06 AUROC to logistic regression on the image profile, and more than on the standard one.
    image, standard = _oracle_gain("image", seed=5), _oracle_gain("standard", seed=5)
    assert image >= 0.06
    assert image > standard + 0.03


def test_finetune_reports_the_oracle_and_the_share_on_a_synthetic_cohort(tmp_path, capsys):
    cohort = write_synthetic_cohort(tmp_path / "dev", n=40, grid=16, labeled_fraction=1.0, seed=3,
                                    prevalence=0.35, profile="image")
    test = write_synthetic_cohort(tmp_path / "test", n=40, grid=16, labeled_fraction=1.0, seed=4,
                                  prevalence=0.35, profile="image")
    assert json.loads((cohort.parent / "truth.json").read_text())["image_quantities"] == [
        "log1p_infarct_volume_ml", "log_wmh_volume_ml", "atrophy_excess"]
    config = write_tiny_config(tmp_path / "run.yaml", cohort, finetune={"folds": 2, "repeats": 1, "bootstrap": 100, "epochs": 2})
    run = tmp_path / "run"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                 "--set", f"finetune.test_cohort={test}", "--set", f"run.dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "given the true image quantities" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for section in (metrics, metrics["test"]):
        share = section[ORACLE]["share"]
        assert share["lower"] <= share["share"] <= share["upper"] or share["oracle_gain"] < 0.03
    # The test-cohort oracle is the LR baseline refit on every development subject with the truth added.
    scored = pd.read_csv(run / "test_predictions.csv").set_index("subject_id")
    risk = {name: pd.read_csv(c.parent / "risk.csv").set_index("subject_id") for name, c in (("dev", cohort),
                                                                                            ("test", test))}
    rows = {name: pd.read_csv(c.parent / "cohort.csv").set_index("subject_id") for name, c in (("dev", cohort),
                                                                                              ("test", test))}
    columns = ["age", "bmi", "systolic_bp", "diastolic_bp", "glucose", "hba1c", "ldl", "hdl", "d_dimer", "nihss"]
    categorical = ["sex", "atrial_fibrillation", "smoking", "hypertension", "diabetes"]

    def design(name):
        frame = rows[name][columns + categorical].copy()
        frame[categorical] = frame[categorical].astype(object).where(frame[categorical].notna(), np.nan)
        truth = risk[name].loc[frame.index, ["log1p_infarct_volume_ml", "log_wmh_volume_ml", "atrophy_excess"]]
        return pd.concat([baseline_frame(frame, columns, categorical), truth], axis=1)

    expected = fit_predict_baseline("logistic_regression", design("dev"), rows["dev"]["recurrence_12m"].to_numpy(),
                                    design("test").loc[scored.index], 0)
    assert roc_auc_score(scored["label"], scored[ORACLE]) == pytest.approx(roc_auc_score(scored["label"], expected),
                                                                           abs=1e-6)

    # Without the generator's truth beside the CSV (every real cohort) there is no oracle.
    plain = tmp_path / "plain"
    shutil.copytree(cohort.parent, plain)
    (plain / "truth.json").unlink()
    config = write_tiny_config(tmp_path / "plain.yaml", plain / "cohort.yaml",
                               finetune={"folds": 2, "repeats": 1, "bootstrap": 100, "epochs": 2})
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                 "--set", f"run.dir={tmp_path / 'plain-run'}"]) == 0
    assert ORACLE not in json.loads((tmp_path / "plain-run" / "metrics.json").read_text())
