"""Privacy by default: the pipeline's outputs hold no subject id or image path except the per-subject
files the README lists (``predictions.csv``, ``test_predictions.csv``, ``folds.json``, ``folds/*.json``
and ``predict --out``)."""

import logging

import pandas as pd
from conftest import write_tiny_config

from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

PER_SUBJECT_FILES = {"predictions.csv", "test_predictions.csv", "folds.json"}


def test_no_subject_id_or_image_path_outside_the_per_subject_files(tmp_path, capsys, caplog):
    cohort = write_synthetic_cohort(tmp_path / "cohort", n=48, grid=16, labeled_fraction=0.75, seed=8, prevalence=0.3)
    test = write_synthetic_cohort(tmp_path / "test", n=24, grid=16, labeled_fraction=1.0, seed=9, prevalence=0.3)
    config = write_tiny_config(tmp_path / "run.yaml", cohort, pretrain={"val_fraction": 0.25, "rows": "unlabeled"},
                               finetune={"folds": 2, "repeats": 1, "bootstrap": 100, "test_cohort": str(test)})
    runs = tmp_path / "runs"
    with caplog.at_level(logging.DEBUG):
        assert main(["validate", str(config)]) == 0
        assert main(["pretrain", str(config), "--set", f"run.dir={runs / 'pretrain'}"]) == 0
        assert main(["finetune", str(config), "--init", str(runs / "pretrain"), "--set", f"run.dir={runs / 'ft'}"]) == 0
    table = pd.concat([pd.read_csv(c.parent / "cohort.csv", dtype=str) for c in (cohort, test)])
    secrets = [*table["subject_id"], *(p.rsplit("/", 1)[-1].split(".")[0] for p in table["flair"])]
    assert len(secrets) == 2 * (48 + 24)
    leaks = []
    for path in sorted(runs.rglob("*")):
        if not path.is_file() or path.name in PER_SUBJECT_FILES or (path.parent.name == "folds" and path.suffix == ".json"):
            continue
        content = path.read_bytes()
        leaks += [(str(path.relative_to(runs)), s) for s in secrets if s.encode() in content]
    captured = capsys.readouterr()
    logs = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    leaks += [("logs", s) for s in secrets if s in logs]
    assert not leaks, leaks[:10]
    # The projector is there, labelled by outcome; the per-subject files do hold the ids.
    assert list((runs / "pretrain" / "tb").rglob("metadata.tsv"))
    assert set(pd.read_csv(runs / "ft" / "predictions.csv")["subject_id"]) <= set(table["subject_id"])
