"""Run folders misused: the wrong kind of run, outputs onto inputs, changed weights, two writers.

One finished pretraining run and one finished fine-tuning run are trained once for the module (16³
volumes, one epoch, two folds); every test works on a copy. Each case goes through the CLI: a
refusal exits 2 with one line naming the folder or file, never a traceback, and leaves the run's
files as they were. The same cases, with the outcome in words, are rows of ``docs/robustness.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_config
from safetensors.torch import load_file, save_file

from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

FINETUNE = {"mode": "scratch", "epochs": 1, "batch_size": 8, "folds": 2, "repeats": 1, "bootstrap": 100,
            "hidden": 16, "baselines": ["logistic_regression"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``cohort`` (cohort.yaml), ``config`` (run config), ``pre`` and ``ft``: a finished run of each kind."""
    folder = tmp_path_factory.mktemp("runs")
    cohort = write_synthetic_cohort(folder / "cohort", n=32, grid=16, labeled_fraction=1.0, seed=3, prevalence=0.3)
    config = write_tiny_config(folder / "run.yaml", cohort, finetune=FINETUNE)
    pre, ft = folder / "pre", folder / "ft"
    assert main(["pretrain", str(config), "--set", f"run.dir={pre}"]) == 0
    assert main(["finetune", str(config), "--set", f"run.dir={ft}"]) == 0
    return {"cohort": cohort, "config": config, "pre": pre, "ft": ft}


def _copy(run: Path, tmp_path: Path, legacy: bool = False) -> Path:
    """A copy of ``run``; ``legacy``: without its run record, as folders written before records (whose
    model.json held the facts the record now keeps)."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    if legacy:
        facts = json.loads((copy / "run.json").read_text()).get("facts", {})
        (copy / "run.json").unlink(missing_ok=True)
        if (copy / "model.json").is_file():
            architecture = json.loads((copy / "model.json").read_text())
            architecture.update(sequences=facts.get("sequences", []), cohort_roles=facts.get("column_roles"))
            (copy / "model.json").write_text(json.dumps(architecture))
    return copy


def _own_cohort(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the cohort (cohort.yaml), for a case that would overwrite its files if it were accepted."""
    shutil.copytree(runs["cohort"].parent, tmp_path / "cohort", ignore=shutil.ignore_patterns(".strokessl-cache"))
    return tmp_path / "cohort" / runs["cohort"].name


def _refused(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    for text in texts:
        assert text in err, err
    return err


@pytest.mark.parametrize("legacy", [False, True], ids=["recorded", "before records"])
def test_a_stage_refuses_a_folder_of_the_other_kind(runs, tmp_path, capsys, legacy):
    config = str(runs["config"])
    ft = _copy(runs["ft"], tmp_path, legacy)
    metrics = (ft / "metrics.json").read_text()
    assert main(["pretrain", config, "--resume", str(ft)]) == 2  # was: pretrained into it, replacing metrics.json
    _refused(capsys, "holds a fine-tuning run")
    assert (ft / "metrics.json").read_text() == metrics and not (ft / "checkpoints").exists()

    pre = _copy(runs["pre"], tmp_path, legacy)
    metrics = (pre / "metrics.json").read_text()
    assert main(["finetune", config, "--resume", "--set", f"run.dir={pre}"]) == 2
    _refused(capsys, "holds a pretraining run")
    assert (pre / "metrics.json").read_text() == metrics and not (pre / "folds").exists()


def test_every_reader_names_the_kind_it_needs(runs, tmp_path, capsys):
    config, cohort = str(runs["config"]), str(runs["cohort"])
    assert main(["finetune", config, "--init", str(runs["ft"]), "--set", "finetune.mode=frozen",
                 "--set", f"run.dir={tmp_path / 'new'}"]) == 2  # was: "has no preprocessor.json; it is incomplete"
    _refused(capsys, "holds a fine-tuning run, not a pretraining run")
    assert not (tmp_path / "new").exists()
    assert main(["predict", str(runs["pre"]), "--cohort", cohort, "--out", str(tmp_path / "p.csv")]) == 2
    _refused(capsys, "holds a pretraining run, not a fine-tuning run")
    for command in ("embed", "explain"):
        extra = ["--out", str(tmp_path / "e")] if command == "embed" else []
        assert main([command, str(runs["cohort"].parent), "--cohort", cohort, *extra]) == 2
        _refused(capsys, "holds no run", "not a fine-tuning or pretraining run folder")


def test_a_run_folder_that_is_a_file_or_holds_the_cohort_is_refused(runs, tmp_path, capsys):
    config = str(runs["config"])
    (tmp_path / "file").write_text("not a folder")
    for command in ("pretrain", "finetune"):  # was: FileExistsError / NotADirectoryError tracebacks
        assert main([command, config, "--set", f"run.dir={tmp_path / 'file'}"]) == 2
        _refused(capsys, "run.dir", str(tmp_path / "file"))  # the config or the run folder refuses it
    cohort = _own_cohort(runs, tmp_path)
    before = sorted(p.name for p in cohort.parent.iterdir())
    assert main(["pretrain", config, "--set", f"cohort={cohort}", "--set", f"run.dir={cohort.parent}"]) == 2
    _refused(capsys, "an input of the run")  # was: a run written among the cohort's files
    assert sorted(p.name for p in cohort.parent.iterdir()) == before


def test_resume_of_a_folder_that_does_not_exist_is_refused(runs, tmp_path, capsys):
    missing = tmp_path / "typo"
    assert main(["pretrain", str(runs["config"]), "--resume", str(missing)]) == 2  # was: a new run there
    _refused(capsys, "does not exist")
    assert not missing.exists()


@pytest.mark.parametrize("target", ["cohort.csv", "image", "ft/predictions.csv", "ft/folds.json",
                                    "ft/test_predictions.csv", "new folder/"])
def test_predict_out_never_replaces_an_input_or_a_run_file(runs, tmp_path, capsys, target):
    ft, cohort = _copy(runs["ft"], tmp_path), _own_cohort(runs, tmp_path)
    table = cohort.parent / "cohort.csv"
    image = sorted((cohort.parent / "images").glob("*.nii.gz"))[0]
    out = {"cohort.csv": str(table), "image": str(image)}.get(target, f"{tmp_path}/{target}")
    before = {p: p.read_bytes() for p in (table, image, *ft.rglob("*")) if p.is_file()}
    assert main(["predict", str(ft), "--cohort", str(cohort), "--out", out]) == 2
    _refused(capsys, {"cohort.csv": "is an input", "image": "is an input", "new folder/": "is a folder"}.get(
        target, "lies in run folder"))
    assert {p: p.read_bytes() for p in before} == before
    assert not (ft / "test_predictions.csv").exists() and not (tmp_path / "new folder").exists()


def test_embed_and_synth_refuse_to_write_onto_a_run_or_a_cohort(runs, tmp_path, capsys):
    pre = _copy(runs["pre"], tmp_path)
    assert main(["embed", str(pre), "--cohort", str(runs["cohort"]), "--out", str(pre)]) == 2  # was: into RUN/tb
    _refused(capsys, "lies in run folder")
    assert not (pre / "embeddings.npz").exists()
    cohort_folder = _own_cohort(runs, tmp_path).parent
    table = (cohort_folder / "cohort.csv").read_bytes()
    assert main(["synth", str(cohort_folder), "--n", "4", "--grid", "16"]) == 2  # was: the cohort replaced
    _refused(capsys, "already holds a cohort")
    assert (cohort_folder / "cohort.csv").read_bytes() == table
    assert main(["synth", str(pre), "--n", "4", "--grid", "16"]) == 2
    _refused(capsys, "lies in run folder")


def _swap(path_a: Path, path_b: Path) -> None:
    a, b = path_a.read_bytes(), path_b.read_bytes()
    path_a.write_bytes(b)
    path_b.write_bytes(a)


def _edit(path: Path) -> None:
    weights = load_file(str(path))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 0.01  # still a valid file of the right shapes
    save_file(weights, str(path))


def test_swapped_or_edited_weights_are_refused(runs, tmp_path, capsys):
    ft = _copy(runs["ft"], tmp_path)
    _swap(ft / "folds" / "r0f0.safetensors", ft / "folds" / "r0f1.safetensors")
    out = tmp_path / "p.csv"
    assert main(["predict", str(ft), "--cohort", str(runs["cohort"]), "--out", str(out)]) == 2  # was: predicted
    _refused(capsys, "r0f0.safetensors differs from the one the run wrote")
    assert not out.exists()

    pre = _copy(runs["pre"], tmp_path)
    _edit(pre / "checkpoints" / "image_encoder.safetensors")
    assert main(["finetune", str(runs["config"]), "--init", str(pre), "--set", "finetune.mode=frozen",
                 "--set", f"run.dir={tmp_path / 'from-edited'}"]) == 2
    _refused(capsys, "image_encoder.safetensors differs from the one the run wrote")
    shutil.copy(runs["pre"] / "checkpoints" / "image_encoder.safetensors", pre / "checkpoints")
    _edit(pre / "checkpoints" / "model.safetensors")
    assert main(["embed", str(pre), "--cohort", str(runs["cohort"]), "--out", str(tmp_path / "e")]) == 2
    _refused(capsys, "model.safetensors differs from the one the run wrote")


def test_a_folder_from_before_records_still_predicts_with_a_warning(runs, tmp_path, caplog):
    ft = _copy(runs["ft"], tmp_path, legacy=True)
    with caplog.at_level(logging.WARNING, logger="multimodal.run_folder"):
        assert main(["predict", str(ft), "--cohort", str(runs["cohort"]), "--out", str(tmp_path / "p.csv")]) == 0
    assert "predates weight digests" in caplog.text


def test_a_record_that_lost_its_facts_is_a_clear_error(runs, tmp_path, capsys):
    ft = _copy(runs["ft"], tmp_path)
    (ft / "run.json").unlink()  # a record deleted by hand: its facts are gone, model.json holds none
    assert main(["predict", str(ft), "--cohort", str(runs["cohort"]), "--out", str(tmp_path / "p.csv")]) == 2
    _refused(capsys, "records no image sequences", "run.json")


_HOLD = ("import sys\nfrom multimodal.run_lock import run_lock\nwith run_lock(sys.argv[1], 'finetune'):\n"
         "    print('locked', flush=True)\n    sys.stdin.read()\n")


def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(runs, tmp_path, capsys, caplog):
    ft = _copy(runs["ft"], tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(ft)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        metrics = (ft / "metrics.json").read_text()
        args = ["finetune", str(runs["config"]), "--resume", "--set", f"run.dir={ft}"]
        assert main(args) == 2  # was: both processes wrote the folder and reported success
        _refused(capsys, f"in use by process {holder.pid} (strokessl finetune)", "started")
        assert main(["predict", str(ft), "--cohort", str(runs["cohort"]), "--out", str(tmp_path / "p.csv")]) == 2
        _refused(capsys, f"being written by process {holder.pid}")
        assert (ft / "metrics.json").read_text() == metrics
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind
        holder.wait()
    assert (ft / "run.lock").is_file()
    with caplog.at_level(logging.WARNING, logger="multimodal.run_folder"):
        assert main(args) == 0
    assert f"stale lock of process {holder.pid}" in caplog.text
    assert not (ft / "run.lock").exists()


def test_latest_json_naming_a_missing_checkpoint_resumes_from_the_newest_complete_one(runs, tmp_path, caplog):
    pre = _copy(runs["pre"], tmp_path)
    (pre / "checkpoints" / "latest.json").write_text(json.dumps({"epoch": 2}))  # epoch 2 was never written
    with caplog.at_level(logging.WARNING, logger="pretrain.run"):
        assert main(["pretrain", str(runs["config"]), "--resume", str(pre)]) == 0  # was: refused
    assert "names epoch 2, whose checkpoint files are missing: resuming from epoch 1" in caplog.text
    ours, theirs = (load_file(str(run / "checkpoints" / "model.safetensors")) for run in (pre, runs["pre"]))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_run_stopped_while_adding_folds_is_not_presented_as_finished(runs, tmp_path, capsys, monkeypatch):
    import finetune.run

    ft = _copy(runs["ft"], tmp_path)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # killed in the first new fold

    monkeypatch.setattr(finetune.run, "run_fold", stopped)
    assert main(["finetune", str(runs["config"]), "--resume", "--repeats", "2", "--set", f"run.dir={ft}"]) == 130
    capsys.readouterr()
    assert (ft / "metrics.json").is_file()  # the summary of the first repeat is still there...
    assert main(["predict", str(ft), "--cohort", str(runs["cohort"]), "--out", str(tmp_path / "p.csv")]) == 2
    _refused(capsys, "has not finished", "--resume")  # ...but predict no longer takes it for the finished run
