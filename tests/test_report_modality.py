"""The built-in report modality end to end through the CLI: pretraining with the report as a
teacher (image-report and table-report CLIP), fine-tuning with a text block, ``predict`` on
subjects with and without a report."""

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_IMAGING
from safetensors.torch import load_file

from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

CONFIG = {
    **TINY_IMAGING,
    "model": {"encoders": {
        "image": {"name": "resnet3d_10", "args": {"widen_factor": 0.25}},
        "table": {"name": "ft_transformer", "args": {"dim": 16, "depth": 1, "heads": 2}},
        "report": {"name": "tfidf_projection", "args": {"features": 512, "dim": 8}},
    }},
    "pretrain": {"epochs": 1, "batch_size": 8, "rows": "all", "val_fraction": 0.25, "projection_dim": 16,
                 "projection_hidden": 32, "objectives": {"clip": 1.0}, "clip_pairs": {"table-report": 0.5}},
    "finetune": {"folds": 2, "repeats": 1, "bootstrap": 100, "baselines": ["logistic_regression"]},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    cohort = write_synthetic_cohort(folder / "cohort", n=40, grid=16, labeled_fraction=1.0, seed=6, prevalence=0.3)
    config = folder / "report.yaml"
    config.write_text(yaml.safe_dump(dict(CONFIG, cohort=str(cohort))))
    pretrained, finetuned = folder / "pretrain", folder / "finetune"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", f"run.dir={finetuned}"]) == 0
    return cohort, pretrained, finetuned


def test_pretraining_fits_the_idf_on_its_rows_and_trains_the_report_pairs(runs):
    cohort, pretrained, _ = runs
    weights = load_file(str(pretrained / "checkpoints" / "report_encoder.safetensors"))
    assert weights["idf"].shape == (512,) and (weights["idf"] == 0).any() and (weights["idf"] > 1).any()
    scalars = json.loads((pretrained / "metrics.json").read_text())
    text = json.dumps(scalars)
    assert "clip_image_report" in text and "clip_table_report" in text
    # the subjects without a report pretrained too (nobody was left out for lacking one)
    reports = pd.read_csv(cohort.parent / "cohort.csv")["report"]
    assert reports.isna().any()


def test_fine_tuning_reads_the_report_and_predict_scores_rows_with_and_without_one(runs, tmp_path):
    cohort, pretrained, finetuned = runs
    architecture = json.loads((finetuned / "model.json").read_text())
    assert sorted(architecture["encoders"]) == ["image", "report", "table"]
    fold = load_file(str(finetuned / "folds" / "r0f0.safetensors"))
    torch.testing.assert_close(fold["report_encoder.idf"],
                               load_file(str(pretrained / "checkpoints" / "report_encoder.safetensors"))["idf"])
    with_reports = tmp_path / "with.csv"
    assert main(["predict", str(finetuned), "--cohort", str(cohort), "--out", str(with_reports)]) == 0
    # the same subjects with every report removed: scored from image and table alone
    blank = cohort.parent / "cohort_no_reports.csv"
    table = pd.read_csv(cohort.parent / "cohort.csv")
    table.assign(report=None).to_csv(blank, index=False)
    config = yaml.safe_load(cohort.read_text())
    no_reports_yaml = cohort.parent / "cohort_no_reports.yaml"
    no_reports_yaml.write_text(yaml.safe_dump({**config, "csv": blank.name}))
    without = tmp_path / "without.csv"
    assert main(["predict", str(finetuned), "--cohort", str(no_reports_yaml), "--out", str(without)]) == 0
    # a bare CSV without the report column at all is scored like the blanked one
    bare = cohort.parent / "bare.csv"  # beside the images its paths name
    table.drop(columns="report").to_csv(bare, index=False)
    assert main(["predict", str(finetuned), "--cohort", str(bare), "--out", str(tmp_path / "bare_out.csv")]) == 0
    pd.testing.assert_series_equal(pd.read_csv(tmp_path / "bare_out.csv")["probability"],
                                   pd.read_csv(without)["probability"])
    a, b = pd.read_csv(with_reports).set_index("subject_id"), pd.read_csv(without).set_index("subject_id")
    had = table.set_index("subject_id")["report"].notna()
    diff = (a["probability"] - b["probability"]).abs()
    assert diff[~had].max() < 1e-6 and diff[had].max() > 1e-4  # the report moves only those who have one


def test_a_cohort_without_text_runs_exactly_as_without_the_report_entry(runs, tmp_path, caplog):
    cohort, _, _ = runs
    table = pd.read_csv(cohort.parent / "cohort.csv").drop(columns="report")
    table.to_csv(cohort.parent / "cohort_no_text.csv", index=False)
    config = {k: v for k, v in yaml.safe_load(cohort.read_text()).items() if k != "text"}
    no_text = cohort.parent / "cohort_no_text.yaml"
    no_text.write_text(yaml.safe_dump({**config, "csv": "cohort_no_text.csv"}))
    without_entry = {**CONFIG, "model": {"encoders": {k: v for k, v in CONFIG["model"]["encoders"].items()
                                                      if k != "report"}}}
    without_entry["pretrain"] = {k: v for k, v in CONFIG["pretrain"].items() if k != "clip_pairs"}
    weights = {}
    for name, run_config in (("with_entry", CONFIG), ("without_entry", without_entry)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(run_config, cohort=str(no_text))))
        caplog.clear()
        with caplog.at_level("INFO"):
            assert main(["pretrain", str(path), "--set", f"run.dir={tmp_path / name}"]) == 0
        assert ("has no report for any subject" in caplog.text) == (name == "with_entry")
        weights[name] = load_file(str(tmp_path / name / "checkpoints" / "image_encoder.safetensors"))
        assert not (tmp_path / name / "checkpoints" / "report_encoder.safetensors").exists()
    for key, value in weights["without_entry"].items():
        torch.testing.assert_close(weights["with_entry"][key], value, rtol=0, atol=0)


def test_explain_ranks_report_words_and_keeps_rare_ones_out(runs, tmp_path):
    cohort, _, finetuned = runs
    table = pd.read_csv(cohort.parent / "cohort.csv")
    first = table["report"].first_valid_index()
    subject = table.loc[first, "subject_id"]
    table.loc[first, "report"] = table.loc[first, "report"] + " Dictated by Smithson on 2026-11-03."
    table.to_csv(cohort.parent / "cohort_named.csv", index=False)
    named = cohort.parent / "cohort_named.yaml"
    named.write_text(yaml.safe_dump({**yaml.safe_load(cohort.read_text()), "csv": "cohort_named.csv"}))
    assert main(["explain", str(finetuned), "--cohort", str(named), "--subject", subject, "--gallery", "0"]) == 0
    report = finetuned / "report"
    analysis = json.loads((report / "explain.json").read_text())
    words = analysis["words"]
    assert words["reports"] == table["report"].notna().sum() and words["ranking"]
    counts = {r["feature"]: r["reports"] for r in words["ranking"]}
    assert min(counts.values()) >= 5 and not any(c.isdigit() for w in counts for c in w)
    assert (report / words["figure"]).stat().st_size > 5_000 and "Which report words drive" in (
        report / "explain.md").read_text()
    page = json.loads((report / "subjects" / f"{subject}.json").read_text())
    assert page["top_words"] and all(w["word"] in table.loc[first, "report"].lower() for w in page["top_words"])
    for path in [report / "explain.json", report / "explain.md", report / "explain.html",
                 report / "subjects" / f"{subject}.json"]:
        assert "smithson" not in path.read_text().lower(), path


def test_fine_tuning_on_a_subset_of_the_modalities(runs, tmp_path):
    cohort, pretrained, _ = runs
    config = tmp_path / "report.yaml"
    config.write_text(yaml.safe_dump(dict(CONFIG, cohort=str(cohort))))
    run = tmp_path / "table_report"
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", f"run.dir={run}",
                 "--set", "finetune.branches=table+report"]) == 0
    assert sorted(json.loads((run / "model.json").read_text())["encoders"]) == ["report", "table"]
    assert main(["predict", str(run), "--cohort", str(cohort), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", f"run.dir={tmp_path / 'bad'}",
                 "--set", "finetune.branches=image+notes"]) == 2
