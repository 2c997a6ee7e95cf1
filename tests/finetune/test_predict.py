"""``strokessl predict`` is self-contained: column roles from the run folder, optional label, moved runs."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from conftest import TINY_IMAGING

from multimodal.config import load_cohort_config, load_run_config
from multimodal.data import cache_dir_for
from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

TINY = {
    **TINY_IMAGING,
    "model": {"image_encoder": "resnet3d_10", "image_encoder_args": {"widen_factor": 0.25},
              "tabular_encoder": "ft_transformer", "tabular_encoder_args": {"dim": 16, "depth": 1, "heads": 2}},
    "finetune": {"mode": "scratch", "epochs": 1, "batch_size": 8, "folds": 2, "repeats": 1, "bootstrap": 100,
                 "hidden": 16, "baselines": ["logistic_regression"]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished scratch run on a 40-subject cohort, and the cohort's CSV with absolute image paths."""
    folder = tmp_path_factory.mktemp("predict")
    cohort = write_synthetic_cohort(folder / "cohort", n=40, grid=16, labeled_fraction=1.0, seed=3, prevalence=0.3)
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, cohort=str(cohort))))
    run = folder / "run"
    assert main(["finetune", str(config), "--set", f"run.dir={run}"]) == 0
    table = pd.read_csv(cohort.parent / "cohort.csv", dtype=str)
    for column in ("flair", "dwi"):
        table[column] = [str(cohort.parent / p) for p in table[column]]
    return run, cohort, table


def test_moved_run_predicts_a_bare_csv_without_label_column_or_training_cohort_yaml(trained, tmp_path):
    run, cohort, table = trained
    new = tmp_path / "new" / "subjects.csv"
    new.parent.mkdir()
    table.head(6).to_csv(new, index=False)
    before = tmp_path / "before.csv"
    assert main(["predict", str(run), "--cohort", str(new), "--out", str(before)]) == 0

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    hidden = cohort.with_name("hidden.yaml")
    cohort.rename(hidden)  # the training cohort.yaml is gone: roles must come from the run folder
    try:
        table.head(6).drop(columns=["recurrence_12m"]).to_csv(new, index=False)
        after = tmp_path / "after.csv"
        assert main(["predict", str(moved), "--cohort", str(new), "--out", str(after)]) == 0
    finally:
        hidden.rename(cohort)
    first, second = pd.read_csv(before), pd.read_csv(after)
    assert list(second["subject_id"]) == list(table["subject_id"].head(6))
    assert second["probability"].to_numpy() == pytest.approx(first["probability"].to_numpy(), abs=1e-6)


def test_damaged_fold_weights_are_one_clear_line(trained, tmp_path, capsys):
    run, cohort, _ = trained
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    weights = broken / "folds" / "r0f1.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    assert main(["predict", str(broken), "--cohort", str(cohort), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "r0f1.safetensors" in err and "damaged" in err and "Traceback" not in err


def test_one_cache_folder_rule(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cohort.yaml").write_text("csv: cohort.csv\nimages: {flair: flair}\n")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"cohort": "a/cohort.yaml"}))
    config = load_run_config(run)
    other = load_cohort_config(tmp_path / "b" / "cohort.yaml")
    # unset: the folder of whichever cohort is read (training, test or predict cohort)
    assert cache_dir_for(config, other) == tmp_path / "b" / ".strokessl-cache"
    assert cache_dir_for(config, load_cohort_config(config.cohort)) == tmp_path / "a" / ".strokessl-cache"
    # set: that folder for every cohort
    config = load_run_config(run, [f"data.cache_dir={tmp_path / 'shared'}"])
    assert cache_dir_for(config, other) == tmp_path / "shared"


def test_run_folder_from_before_model_encoders_still_predicts(trained, tmp_path):
    """A run folder written before model.encoders (flat image_model / table_model in model.json, no
    stored column roles) predicts as before, with the training cohort.yaml where it was."""
    run, cohort, _ = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    architecture = json.loads((old / "model.json").read_text())
    encoders = architecture.pop("encoders")
    record = json.loads((old / "run.json").read_text())
    architecture["sequences"] = record.pop("facts")["sequences"]  # model.json held them before run.json's facts
    (old / "run.json").write_text(json.dumps(record))
    flat = {"image_encoder": encoders["image"]["name"], "image_encoder_args": encoders["image"]["args"],
            "tabular_encoder": encoders["table"]["name"], "tabular_encoder_args": encoders["table"]["args"]}
    architecture["image_model"] = architecture["table_model"] = flat
    (old / "model.json").write_text(json.dumps(architecture))
    new_out, old_out = tmp_path / "new.csv", tmp_path / "old.csv"
    assert main(["predict", str(run), "--cohort", str(cohort), "--out", str(new_out)]) == 0
    assert main(["predict", str(old), "--cohort", str(cohort.parent / "cohort.csv"), "--out", str(old_out)]) == 0
    assert pd.read_csv(old_out)["probability"].to_numpy() == pytest.approx(
        pd.read_csv(new_out)["probability"].to_numpy(), abs=1e-6)


def test_renamed_or_absent_feature_columns_are_refused_unless_allowed(trained, tmp_path, capsys):
    run, _, table = trained
    shouting = table.head(4).rename(columns={"age": "AGE", "nihss": "NIHSS"})
    csv = tmp_path / "export.csv"
    shouting.to_csv(csv, index=False)
    assert main(["predict", str(run), "--cohort", str(csv), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "'AGE' looks like 'age'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    table.head(4).drop(columns=["glucose"]).to_csv(csv, index=False)
    assert main(["predict", str(run), "--cohort", str(csv), "--out", str(tmp_path / "p.csv")]) == 2
    assert "--allow-missing-features" in capsys.readouterr().err
    assert main(["predict", str(run), "--cohort", str(csv), "--out", str(tmp_path / "p.csv"),
                 "--allow-missing-features"]) == 0
    assert main(["predict", str(run), "--cohort", str(csv), "--out", str(tmp_path), "--allow-missing-features"]) == 2
    assert "is a folder" in capsys.readouterr().err
