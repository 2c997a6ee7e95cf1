"""End-to-end pretraining on a tiny synthetic cohort, through the CLI entry point."""

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_IMAGING
from safetensors.torch import load_file

from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

TINY = {
    **TINY_IMAGING,
    "model": {
        "image_encoder": "resnet3d_10",
        "image_encoder_args": {"widen_factor": 0.25},
        "tabular_encoder": "ft_transformer",
        "tabular_encoder_args": {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0},
    },
    "pretrain": {
        "epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0.5, "rows": "all", "val_fraction": 0.25,
        "projection_dim": 16, "projection_hidden": 32, "fusion_dim": 16, "fusion_depth": 1, "fusion_heads": 2,
        "log_every": 1,
    },
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    return write_synthetic_cohort(folder / "c", n=36, grid=16, labeled_fraction=0.5, seed=2)


WITH_ITM = {"clip": 1.0, "itm": 1.0}  # matching draws shared-seed noise: resume must replay it


def write_config(tmp_path, cohort, **pretrain):
    data = json.loads(json.dumps(TINY))
    data["cohort"] = str(cohort)
    data["run"] = {"dir": str(tmp_path / "run")}
    data["pretrain"].update(pretrain)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_clip_itm_run_writes_the_run_folder(tmp_path, cohort):
    config = write_config(tmp_path, cohort, objectives=WITH_ITM)
    assert main(["pretrain", str(config)]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "preprocessor.json", "metrics.json", "checkpoints/latest.json", "checkpoints/weights-0002.safetensors", "checkpoints/state-0002.pt",
                 "checkpoints/model.safetensors", "checkpoints/image_encoder.safetensors",
                 "checkpoints/table_encoder.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_subjects"] == 9 and len(metrics["history"]) == 2
    final = metrics["final"]
    assert 0.0 <= final["recall@5_image_to_table"] <= 1.0 and final["chance_recall@1"] == pytest.approx(1 / 9)
    assert {"train/clip_loss", "train/itm_loss", "train/itm_accuracy"} <= set(metrics["history"][0])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # The embedding projector labels points by their label, never by subject id (a patient identifier).
    projector = sorted((run / "tb").rglob("metadata.tsv"))
    assert len(projector) == 2
    ids = set(pd.read_csv(cohort.parent / "cohort.csv", dtype=str)["subject_id"])
    for path in projector:
        values = set(path.read_text().split())
        assert values and not values & ids and values <= {"0", "1", "unlabeled"}


@pytest.mark.parametrize(
    "objectives",
    [
        {"clip": 1.0},
        {"clip": 1.0, "itm": 0.5, "masked_tabular": 0.5},
        {"simclr": 1.0},
        {"scarf": 1.0},
        {"clip": 1.0, "simclr": 0.5},
    ],
    ids=["clip", "clip+itm+masked", "simclr", "scarf", "clip+simclr"],
)
def test_each_objective_runs_end_to_end(tmp_path, cohort, objectives):
    config = write_config(tmp_path, cohort, epochs=1, objectives=objectives,
                          queue_size=16 if objectives == {"clip": 1.0} else 0)
    assert main(["pretrain", str(config)]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for name in objectives:
        value = history[0][f"train/{name}_loss"]
        assert value == value and value > 0  # finite, positive


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, cohort, monkeypatch):
    straight = tmp_path / "straight"
    straight.mkdir()
    assert main(["pretrain", str(write_config(straight, cohort, epochs=2, objectives=WITH_ITM))]) == 0

    import pretrain.run

    real_epoch = pretrain.run.train_one_epoch

    def killed_in_epoch_two(*args, **kwargs):
        if args[8] == 1:  # the epoch argument: die at the start of the second epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    config = write_config(stopped, cohort, epochs=2, objectives=WITH_ITM)
    monkeypatch.setattr(pretrain.run, "train_one_epoch", killed_in_epoch_two)
    assert main(["pretrain", str(config)]) == 130
    assert not (stopped / "run" / "metrics.json").exists()  # an unfinished run is never presented as done
    monkeypatch.setattr(pretrain.run, "train_one_epoch", real_epoch)
    first_start = json.loads((stopped / "run" / "run_info.json").read_text())["started"]
    assert main(["pretrain", str(config), "--resume"]) == 0
    info = json.loads((stopped / "run" / "run_info.json").read_text())
    assert info["started"] == first_start and len(info["resumed"]) == 1  # the history of the run is kept
    a = load_file(str(straight / "run" / "checkpoints" / "model.safetensors"))
    b = load_file(str(stopped / "run" / "checkpoints" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_augmenting_on_the_device_trains_the_weights_the_loader_path_trains(tmp_path, cohort):
    """pretrain.augment_on: device (for GPUs whose loader cannot keep up) draws the same views, so
    clip + simclr (two views per subject) ends with the loader path's weights."""
    weights = {}
    for where in ("loader", "device"):
        folder = tmp_path / where
        folder.mkdir()
        config = write_config(folder, cohort, epochs=1, objectives={"clip": 1.0, "simclr": 0.5}, augment_on=where)
        assert main(["pretrain", str(config)]) == 0
        weights[where] = load_file(str(folder / "run" / "checkpoints" / "model.safetensors"))
    assert weights["loader"].keys() == weights["device"].keys()
    for key, value in weights["loader"].items():
        torch.testing.assert_close(weights["device"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_existing_run_and_changed_resume_are_refused(tmp_path, cohort, capsys):
    config = write_config(tmp_path, cohort, epochs=1)
    assert main(["pretrain", str(config)]) == 0
    assert main(["pretrain", str(config)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", str(config), "--set", "pretrain.lr=0.1", "--resume"]) == 2
    assert "pretrain.lr" in capsys.readouterr().err


def test_loss_decreases_on_a_fixed_batch(cohort, tmp_path):
    """A few optimiser steps of clip + itm on one batch must lower the loss (the gradients flow)."""
    from multimodal.config import load_cohort_config, load_run_config
    from multimodal.data import encoder_sizes
    from pretrain.config import pretrain_config
    from pretrain.data import build_pretrain_data, make_loader
    from pretrain.loop import PretrainStep
    from pretrain.model import build_pretrain_model

    config = load_run_config(write_config(tmp_path, cohort))
    settings = pretrain_config(config)
    (tmp_path / "run").mkdir()
    data = build_pretrain_data(config, load_cohort_config(config.cohort), settings, tmp_path / "run")
    torch.manual_seed(0)
    model = build_pretrain_model(config.model, settings,
                                 encoder_sizes(data.modalities, data.sequences, data.preprocessor))
    step = PretrainStep(model, settings, data.preprocessor.category_sizes, data.table_pool, seed=0)
    batch = next(iter(make_loader(data.val, 8, 0, 0, train=False)))
    optimizer = torch.optim.AdamW(step.parameters(), lr=3e-4)
    losses = []
    for _ in range(20):
        terms = step(batch, 0)  # step 0 every time: the same ITM negatives, a fixed objective
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_a_refused_config_leaves_no_lock_and_a_damaged_pointer_falls_back(tmp_path, cohort, capsys):
    # batch 64 cannot be filled: refused after the run folder was made...
    config = write_config(tmp_path, cohort, batch_size=64)
    assert main(["pretrain", str(config)]) == 2
    assert "cannot fill one optimiser step" in capsys.readouterr().err
    # ...and the corrected config runs there, with or without --resume (nothing had started)
    config = write_config(tmp_path, cohort, epochs=1)
    assert main(["pretrain", str(config), "--resume"]) == 0
    run = tmp_path / "run"
    # an emptied latest.json (by hand, or a full disk) resumes from the newest complete epoch
    (run / "checkpoints" / "latest.json").write_text("")
    config = write_config(tmp_path, cohort, epochs=2)
    assert main(["pretrain", str(config), "--resume"]) == 0
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(tmp_path, cohort, capsys, monkeypatch):
    import errno

    from multimodal import checkpoint

    replace = checkpoint.os.replace

    def full_disk(src, dst):
        if "weights-0002" in str(dst):  # epoch 1 is saved, epoch 2's weights meet a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", full_disk)
    config = write_config(tmp_path, cohort)
    assert main(["pretrain", str(config)]) == 2
    err = capsys.readouterr().err
    assert "free disk space" in err and "weights-0002" in err and "Traceback" not in err
    run = tmp_path / "run"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1  # never the broken epoch
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    assert main(["pretrain", str(config), "--resume"]) == 0
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
