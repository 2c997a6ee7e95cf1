"""End-to-end cross-validated fine-tuning on a tiny synthetic cohort, through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_IMAGING
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from finetune.baselines import baseline_frame, fit_predict_baseline
from finetune.recalibration import apply_recalibration
from multimodal.cohort import load_cohort
from multimodal.config import load_cohort_config
from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

TINY = {
    **TINY_IMAGING,
    "model": {
        "image_encoder": "resnet3d_10",
        "image_encoder_args": {"widen_factor": 0.25},
        "tabular_encoder": "ft_transformer",
        "tabular_encoder_args": {"dim": 16, "depth": 1, "heads": 2},
    },
    "pretrain": {"epochs": 1, "batch_size": 8, "rows": "all", "val_fraction": 0.25, "projection_dim": 16,
                 "projection_hidden": 32, "fusion_dim": 16, "fusion_depth": 1, "fusion_heads": 2},
    "finetune": {"epochs": 2, "batch_size": 8, "folds": 2, "repeats": 1, "bootstrap": 200, "patience": 1,
                 "hidden": 16},
}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune")
    cohort = write_synthetic_cohort(folder / "c", n=48, grid=16, labeled_fraction=1.0, seed=4, prevalence=0.3)
    data = dict(TINY, cohort=str(cohort))
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_scratch_run_writes_metrics_predictions_and_plots(config, tmp_path, capsys):
    run = tmp_path / "scratch"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", f"run.dir={run}"]) == 0
    assert "auroc" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    auroc = metrics["model"]["auroc"]
    assert auroc["lower"] <= auroc["estimate"] <= auroc["upper"]
    assert set(metrics["baselines"]) == {"logistic_regression", "gradient_boosting"}
    assert set(metrics["delta_auroc"]) == set(metrics["baselines"]) and len(metrics["per_fold"]) == 2
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == metrics["n"] == 48 and predictions["probability"].between(0, 1).all()
    folds = json.loads((run / "folds.json").read_text())
    tested = [s for split in folds.values() for s in split["test"]]
    assert sorted(tested) == sorted(predictions["subject_id"])  # every subject tested exactly once
    for name in ("roc", "pr", "calibration", "risk_groups", "decision_curve"):
        assert (run / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = (run / "report" / "model_report.md").read_text()
    assert "## 5. Calibration" in report and "random initialisation" in report and "| 0.10 |" in report
    assert set(metrics["decision_curve"]["net_benefit"]) == {"model", *metrics["baselines"], "treat_all", "treat_none"}


def test_resume_skips_finished_folds(config, tmp_path, capsys):
    run = tmp_path / "resumed"
    args = ["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
            "--set", f"run.dir={run}"]
    assert main(args) == 0
    first = (run / "folds" / "r0f0.json").read_text()
    (run / "metrics.json").unlink()
    (run / "folds" / "r0f1.json").unlink()
    assert main(args) == 2  # an existing run is not overwritten
    assert "already holds a started fine-tuning run; add --resume to finish it" in capsys.readouterr().err
    assert main([*args, "--set", "finetune.loss=focal", "--resume"]) == 2  # would mix two kinds of folds
    assert "finetune.loss" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert (run / "folds" / "r0f0.json").read_text() == first and (run / "metrics.json").is_file()


def test_frozen_from_a_pretraining_run(config, tmp_path):
    pretrained = tmp_path / "pre"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    run = tmp_path / "frozen"
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", "finetune.mode=frozen",
                 "--set", "finetune.head=mlp", "--set", "finetune.head_layers=0", "--set", f"run.dir={run}"]) == 0
    assert json.loads((run / "metrics.json").read_text())["n"] == 48
    head = {k: v.shape for k, v in load_file(str(run / "folds" / "r0f0.safetensors")).items() if k.startswith("head.")}
    assert sorted(head) == ["head.0.bias", "head.0.weight"]
    assert head["head.0.weight"][0] == 1  # head_layers 0: one linear layer on the embeddings (a linear probe)


def test_trainable_needs_init(config, capsys):
    assert main(["finetune", str(config)]) == 2
    assert "--init" in capsys.readouterr().err


def test_predict_on_new_subjects_with_unseen_category_and_no_labels(config, tmp_path):
    run = tmp_path / "scratch"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", f"run.dir={run}"]) == 0
    cohort_dir = yaml.safe_load(config.read_text())["cohort"]
    table = pd.read_csv(cohort_dir.replace("cohort.yaml", "cohort.csv"), dtype=str)
    new = table.head(5).copy()
    new["recurrence_12m"] = ""  # unlabeled
    new.loc[new.index[0], "smoking"] = "vaping"  # a category the models never saw
    new.loc[new.index[1], "age"] = ""  # missing value
    csv = tmp_path / "new.csv"
    folder = cohort_dir.rsplit("/", 1)[0]
    for column in ("flair", "dwi"):  # absolute paths: the CSV now lives in another folder
        new[column] = [f"{folder}/{p}" for p in new[column]]
    new.to_csv(csv, index=False)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--cohort", str(csv), "--out", str(out)]) == 0
    predictions = pd.read_csv(out)
    assert len(predictions) == 5 and predictions["probability"].between(0, 1).all()
    assert set(predictions["risk_group"]) <= {"high", "low"}
    folds = [c for c in predictions.columns if c.startswith("probability_")]
    assert len(folds) == 2
    assert predictions["probability"].to_numpy() == pytest.approx(predictions[folds].mean(axis=1).to_numpy())
    # the same subjects as in training get the average of the fold models, so a fold model that
    # tested a subject agrees with its out-of-fold prediction
    oof = pd.read_csv(run / "predictions.csv").set_index("subject_id")
    first = predictions.iloc[2]
    fold = oof.loc[first["subject_id"], "fold"]
    assert first[f"probability_{fold}"] == pytest.approx(oof.loc[first["subject_id"], "probability"], abs=1e-5)


def test_fixed_test_cohort_repeats_and_per_fold_intervals(config, tmp_path, capsys):
    test_cohort = write_synthetic_cohort(tmp_path / "test", n=30, grid=16, labeled_fraction=1.0, seed=9,
                                         prevalence=0.3)
    run = tmp_path / "with-test"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                 "--repeats", "2", "--set", f"finetune.test_cohort={test_cohort}", "--set", f"run.dir={run}"]) == 0
    assert "fixed test cohort" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["per_fold"]) == ["r0f0", "r0f1", "r1f0", "r1f1"]
    assert metrics["fold_summary"]["auroc"]["n"] == 4
    for fold in metrics["per_fold"].values():
        auroc = fold["auroc"]
        assert auroc["lower"] <= auroc["estimate"] <= auroc["upper"]
    test = metrics["test"]
    labels = pd.read_csv(test_cohort.parent / "cohort.csv").set_index("subject_id")["recurrence_12m"]
    assert test["n"] == 30 and test["positives"] == int(labels.sum())
    scored = pd.read_csv(run / "test_predictions.csv").set_index("subject_id")
    assert test["model"]["auroc"]["estimate"] == pytest.approx(roc_auc_score(labels[scored.index], scored["probability"]))
    # the deep model on the test cohort is exactly what `strokessl predict` gives for it
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--cohort", str(test_cohort), "--out", str(out)]) == 0
    predicted = pd.read_csv(out).set_index("subject_id")
    assert scored["probability"].to_numpy() == pytest.approx(predicted.loc[scored.index, "probability"].to_numpy())
    # each baseline is refit on every labeled development subject
    development = load_cohort(load_cohort_config(yaml.safe_load(config.read_text())["cohort"]))
    expected = fit_predict_baseline(
        "logistic_regression", baseline_frame(development.features, development.continuous, development.categorical),
        development.labels.astype(int),
        baseline_frame(load_cohort(load_cohort_config(test_cohort)).features, development.continuous,
                       development.categorical), seed=0)
    assert scored["logistic_regression"].to_numpy() == pytest.approx(expected)
    assert (run / "report" / "test_roc.png").read_bytes()[:4] == b"\x89PNG"


def test_test_cohort_that_is_the_development_table_or_lacks_a_sequence_is_refused(config, tmp_path, capsys):
    development = yaml.safe_load(config.read_text())["cohort"]
    run = tmp_path / "same"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                 "--set", f"finetune.test_cohort={development}", "--set", f"run.dir={run}"]) == 2
    assert "development table" in capsys.readouterr().err
    other = write_synthetic_cohort(tmp_path / "no-dwi", n=8, grid=16, labeled_fraction=1.0, seed=9,
                                   prevalence=0.5, sequences=["flair", "t1"])
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=image",
                 "--set", f"finetune.test_cohort={other}", "--set", f"run.dir={tmp_path / 'seq'}"]) == 2
    err = capsys.readouterr().err
    assert "lacks the sequences ['dwi']" in err and not list((tmp_path / "seq" / "folds").glob("*.json"))


def test_test_cohort_without_both_classes_is_a_clear_error(config, tmp_path, capsys):
    test_cohort = write_synthetic_cohort(tmp_path / "test", n=6, grid=16, labeled_fraction=0.0, seed=9)
    run = tmp_path / "bad-test"
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                 "--set", f"finetune.test_cohort={test_cohort}", "--set", f"run.dir={run}"]) == 2
    assert "test cohort" in capsys.readouterr().err
    assert not (run / "metrics.json").exists() and not list((run / "folds").glob("*.json"))  # before any fold


def test_slice_lstm_image_branch_from_pretraining_to_predict(config, tmp_path):
    """The ResNet-per-slice + LSTM encoder through every stage: pretrain, trainable fine-tuning, predict."""
    model = ["--set", "model.image_encoder=slice_lstm_resnet10t", "--set", "model.image_encoder_args={lstm_hidden: 16}"]
    pretrained = tmp_path / "pre"
    assert main(["pretrain", str(config), *model, "--set", f"run.dir={pretrained}"]) == 0
    run = tmp_path / "lstm"
    assert main(["finetune", str(config), "--init", str(pretrained), *model, "--set", "finetune.branches=image",
                 "--set", "finetune.mode=trainable", "--set", "finetune.head=mlp",
                 "--set", "finetune.epochs=1", "--set", f"run.dir={run}"]) == 0
    weights = load_file(str(run / "folds" / "r0f0.safetensors"))
    assert "image_encoder.lstm.weight_ih_l0" in weights
    out = tmp_path / "pred.csv"
    cohort = yaml.safe_load(config.read_text())["cohort"]
    assert main(["predict", str(run), "--cohort", cohort, "--out", str(out)]) == 0
    oof = pd.read_csv(run / "predictions.csv").set_index("subject_id")
    predicted = pd.read_csv(out).set_index("subject_id")
    subject = oof.index[0]
    fold = oof.loc[subject, "fold"]
    assert predicted.loc[subject, f"probability_{fold}"] == pytest.approx(oof.loc[subject, "probability"], abs=1e-5)


def test_platt_recalibration_keeps_fold_ranking_and_reaches_predict(config, tmp_path, monkeypatch):
    # On 48 tiny subjects the fitted map falls back to the identity (the fit itself is tested in
    # test_recalibration.py); a fixed non-identity map makes this a real check of the wiring.
    import finetune.fold

    monkeypatch.setattr(finetune.fold, "fit_recalibration", lambda method, labels, probabilities: (
        None if method == "none" else {"method": "platt", "intercept": -0.5, "slope": 2.0}))
    runs = {}
    for method in ("none", "platt"):
        runs[method] = tmp_path / method
        assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.branches=table",
                     "--set", f"finetune.recalibration={method}", "--set", f"run.dir={runs[method]}"]) == 0
    raw, platt = (json.loads((runs[m] / "metrics.json").read_text())["per_fold"] for m in ("none", "platt"))
    for fold in raw:  # same training (same seed); an increasing map leaves each fold's AUROC alone
        assert platt[fold]["auroc"]["estimate"] == pytest.approx(raw[fold]["auroc"]["estimate"], abs=1e-9)
    fold = json.loads((runs["platt"] / "folds" / "r0f0.json").read_text())
    assert fold["recalibration"] == {"method": "platt", "intercept": -0.5, "slope": 2.0}
    assert len(fold["validation"]["ids"]) == len(fold["validation"]["raw_probabilities"]) > 0
    expected = apply_recalibration(np.array(json.loads((runs["none"] / "folds" / "r0f0.json").read_text())[
        "probabilities"]), fold["recalibration"])
    assert np.asarray(fold["probabilities"]) == pytest.approx(expected, abs=1e-6)
    # predict applies each fold's recalibration: a fold model reproduces its out-of-fold probability
    out = tmp_path / "pred.csv"
    assert main(["predict", str(runs["platt"]), "--cohort", yaml.safe_load(config.read_text())["cohort"],
                 "--out", str(out)]) == 0
    predicted = pd.read_csv(out).set_index("subject_id")
    subject = fold["test_ids"][0]
    assert predicted.loc[subject, "probability_r0f0"] == pytest.approx(fold["probabilities"][0], abs=1e-5)


def test_probe_head_from_a_pretraining_run_and_predict(config, tmp_path):
    pretrained = tmp_path / "pre"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    run = tmp_path / "probe"
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", "finetune.mode=frozen",
                 "--set", "finetune.head=probe", "--set", f"run.dir={run}"]) == 0
    fold = json.loads((run / "folds" / "r0f0.json").read_text())
    assert fold["history"][0]["C"] > 0
    assert len(fold["validation"]["ids"]) == 24  # the whole training fold: the probe's inner CV picks C
    weights = load_file(str(run / "folds" / "r0f0.safetensors"))
    assert weights["head.0.weight"].shape[0] == 1 and "head.1.weight" not in weights
    # predict rebuilds the probe fold model: a subject gets its out-of-fold probability back
    cohort_yaml = yaml.safe_load(config.read_text())["cohort"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--cohort", cohort_yaml, "--out", str(out)]) == 0
    predictions = pd.read_csv(out).set_index("subject_id")
    oof = pd.read_csv(run / "predictions.csv").set_index("subject_id")
    for subject in oof.index[:3]:
        column = f"probability_{oof.loc[subject, 'fold']}"
        assert predictions.loc[subject, column] == pytest.approx(oof.loc[subject, "probability"], abs=1e-5)


def test_frozen_embeddings_shared_across_folds_change_nothing(config, tmp_path, monkeypatch):
    """Frozen pretrained encoders embed the cohort once for all folds; per-fold embedding gives the same run."""
    from finetune.fold import FoldContext

    pretrained = tmp_path / "pre"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    shared, per_fold = tmp_path / "shared", tmp_path / "per_fold"
    common = ["finetune", str(config), "--init", str(pretrained), "--set", "finetune.head=mlp", "--set",
              "finetune.head_layers=0"]
    assert main([*common, "--set", f"run.dir={shared}"]) == 0
    original = FoldContext.__init__

    def no_sharing(self, *args, **kwargs):
        original(self, *args, **kwargs)
        assert self.share_embeddings  # frozen + pretrained + one preprocessor: sharing was on above
        self.share_embeddings = False

    monkeypatch.setattr(FoldContext, "__init__", no_sharing)
    assert main([*common, "--set", f"run.dir={per_fold}"]) == 0
    a = pd.read_csv(shared / "predictions.csv").set_index("subject_id")["probability"]
    b = pd.read_csv(per_fold / "predictions.csv").set_index("subject_id")["probability"]
    assert a.to_numpy() == pytest.approx(b.loc[a.index].to_numpy(), abs=1e-5)


def test_probe_needs_frozen_mode(config, capsys):
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", "finetune.head=probe"]) == 2
    assert "finetune.mode: frozen" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_fold_does_not_lock_the_folder(config, tmp_path, capsys):
    run = tmp_path / "stopped"
    (run / "folds").mkdir(parents=True)
    (run / "folds.json").write_text("{}")  # killed (or refused) after the split, before any fold finished
    (run / "config.yaml").write_text("cohort: elsewhere.yaml\n")
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", f"run.dir={run}"]) == 0
    assert (run / "metrics.json").is_file()
    # a finished run is not overwritten: the message says it is finished and to choose another folder
    assert main(["finetune", str(config), "--set", "finetune.mode=scratch", "--set", f"run.dir={run}"]) == 2
    assert "already holds a finished fine-tuning run; choose another folder" in capsys.readouterr().err
