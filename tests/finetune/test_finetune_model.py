"""FusionClassifier, fine-tuning modes and ``--init`` from a pretraining run folder (tiny sizes)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from finetune.init import (
    PretrainingRunError,
    build_finetune_encoders,
    load_pretraining_run,
    reconcile_features,
    reconcile_sequences,
)
from finetune.model import (
    FUSIONS,
    FusionClassifier,
    parameter_groups,
    precompute_embeddings,
    set_mode,
)
from multimodal.checkpoint import save_weights
from multimodal.config import ImagingConfig, ModelConfig, RunConfig, save_config
from multimodal.encoders import build_image_encoder, build_tabular_encoder
from multimodal.errors import ConfigError, StrokeSSLError
from multimodal.tabular import TabularPreprocessor

SEQUENCES = ["flair", "dwi"]
MODEL = ModelConfig(
    image_encoder="resnet3d_10",
    image_encoder_args={"widen_factor": 0.25},
    tabular_encoder="ft_transformer",
    tabular_encoder_args={"dim": 16, "depth": 1, "heads": 2},
)


def _frame(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "age": rng.normal(70, 10, n),
        "nihss": [3, np.nan, 7, 1, 12, 4][:n],
        "sex": ["f", "m", "m", None, "f", "m"][:n],
    })


@pytest.fixture(scope="module")
def preprocessor() -> TabularPreprocessor:
    return TabularPreprocessor(["age", "nihss"], ["sex"]).fit(_frame())


@pytest.fixture(scope="module")
def batch(preprocessor: TabularPreprocessor) -> dict:
    torch.manual_seed(0)
    return {"image": torch.randn(2, 2, 16, 16, 16), "table": preprocessor.transform_tensors(_frame(2))}


def _encoders(preprocessor: TabularPreprocessor, model: ModelConfig = MODEL) -> tuple:
    torch.manual_seed(1)
    image = build_image_encoder(model, in_channels=len(SEQUENCES))
    table = build_tabular_encoder(model, len(preprocessor.continuous), preprocessor.category_sizes)
    return image, table


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusions_give_one_logit_per_subject_and_train_every_parameter(fusion, preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = FusionClassifier(image, table, fusion=fusion, hidden=16)
    logits = model(batch["image"], batch["table"])
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    logits.sum().backward()
    head = list(model.head_parameters())
    assert head and all(p.grad is not None for p in head)
    emb = model.embed(batch["image"], batch["table"])
    assert emb["image"].shape == (2, image.num_features)
    assert emb["table"].shape == (2, table.num_features)


@pytest.mark.parametrize("branch", ["image", "table"])
@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_single_modality_variants(branch, fusion, preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = FusionClassifier(image if branch == "image" else None,
                             table if branch == "table" else None, fusion=fusion, hidden=16)
    assert model.fusion == "concat"  # one embedding: the plain MLP whatever the config says
    # The absent modality's input is never read.
    logits = model(batch["image"] if branch == "image" else None,
                   batch["table"] if branch == "table" else None)
    assert logits.shape == (2,)
    emb = model.embed(batch["image"], batch["table"])
    assert (emb["image"] is None) == (branch == "table")
    assert (emb["table"] is None) == (branch == "image")
    with pytest.raises(ValueError, match=branch):
        model(None, None)


def test_no_encoder_and_bad_fusion_are_config_errors(preprocessor):
    with pytest.raises(ConfigError, match="needs an image encoder"):
        FusionClassifier(None, None)
    _, table = _encoders(preprocessor)
    with pytest.raises(ConfigError, match="gated"):
        FusionClassifier(None, table, fusion="gate")


def test_frozen_encoders_get_no_gradient_and_stay_in_eval(preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = set_mode(FusionClassifier(image, table, hidden=16), "frozen")
    model.train()
    assert model.training and model.head.training
    assert not image.training and not table.training
    assert not any(m.training for enc in model.encoders() for m in enc.modules())
    # Encoders in eval: the FT-Transformer's dropout is off, embeddings are repeatable in train().
    first = model.embed(batch["image"], batch["table"])
    second = model.embed(batch["image"], batch["table"])
    assert torch.equal(first["table"], second["table"])
    model(batch["image"], batch["table"]).sum().backward()
    assert all(p.grad is None and not p.requires_grad for enc in model.encoders() for p in enc.parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    groups = parameter_groups(model, "frozen", lr=1e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.head_parameters()}
    # Back to trainable: train() reaches the encoders again.
    set_mode(model, "trainable")
    model.train()
    assert image.training and all(p.requires_grad for p in image.parameters())


@pytest.mark.parametrize(("mode", "encoder_lr"), [("trainable", 1e-4), ("scratch", 1e-3)])
def test_parameter_groups_learning_rates(mode, encoder_lr, preprocessor):
    image, table = _encoders(preprocessor)
    model = set_mode(FusionClassifier(image, table, fusion="gated", hidden=16), mode)
    groups = parameter_groups(model, mode, lr=1e-3, encoder_lr_ratio=0.1, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups)  # no parameter twice
    assert set(lr_of) == {id(p) for p in model.parameters()}
    encoder_ids = {id(p) for enc in model.encoders() for p in enc.parameters()}
    assert all(lr_of[i] == pytest.approx(encoder_lr) for i in encoder_ids)
    assert {lr_of[i] for i in set(lr_of) - encoder_ids} == {1e-3}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    torch.optim.AdamW(groups)  # the groups are what AdamW takes


def test_forward_from_cached_embeddings_equals_forward(preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = set_mode(FusionClassifier(image, table, fusion="attention", hidden=16), "frozen").eval()
    halves = [
        {"image": batch["image"][i : i + 1], "table": {k: v[i : i + 1] for k, v in batch["table"].items()}}
        for i in range(2)
    ]
    model.train()
    cached = precompute_embeddings(model, halves)
    assert model.training  # restored after the no_grad pass
    assert cached["image"].shape == (2, image.num_features) and not cached["image"].requires_grad
    model.eval()
    with torch.no_grad():
        expected = model(batch["image"], batch["table"])
        got = model.forward_from_embeddings(cached["image"], cached["table"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- --init
def _write_run(tmp_path: Path, preprocessor: TabularPreprocessor, image=None, table=None,
               finished: bool = True, sequences: list[str] | None = SEQUENCES) -> Path:
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump({"csv": "cohort.csv", "images": {"t1": "t1", "flair": "f", "dwi": "d"}}, sort_keys=False))
    run = tmp_path / "run"
    config = RunConfig(cohort=cohort, imaging=ImagingConfig(sequences=sequences, spatial_size=(16, 16, 16)),
                       model=MODEL, pretrain={"objectives": {"clip": 1.0}})
    save_config(config, run / "config.yaml")
    preprocessor.save(run / "preprocessor.json")
    if image is not None:
        save_weights(image.state_dict(), run / "checkpoints" / "image_encoder.safetensors")
    if table is not None:
        save_weights(table.state_dict(), run / "checkpoints" / "table_encoder.safetensors")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"final": {}}))
    return run


def test_init_rebuilds_the_pretrained_encoders_exactly(tmp_path, preprocessor, batch):
    image, table = _encoders(preprocessor)
    run = load_pretraining_run(_write_run(tmp_path, preprocessor, image, table))
    assert run.finished and run.sequences == SEQUENCES
    assert run.preprocessor.feature_names == preprocessor.feature_names
    torch.manual_seed(123)  # a different random init: equality must come from the weights
    new_image, new_table = build_finetune_encoders(run, None, in_channels=2)
    for old, new, x in ((image, new_image, batch["image"]), (table, new_table, batch["table"])):
        old.eval()
        new.eval()
        with torch.no_grad():
            assert torch.equal(old(x), new(x))


def test_fine_tuning_model_config_cannot_change_a_pretrained_encoder(tmp_path, preprocessor, caplog):
    image, table = _encoders(preprocessor)
    run = load_pretraining_run(_write_run(tmp_path, preprocessor, image, table))
    other = ModelConfig(image_encoder="resnet3d_18", tabular_encoder="ft_transformer",
                        tabular_encoder_args={"dim": 16, "depth": 1, "heads": 2})
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        new_image, _ = build_finetune_encoders(run, other, in_channels=2)
    assert new_image.num_features == image.num_features  # rebuilt as trained (widen 0.25)
    assert "resnet3d_18" in caplog.text and "tabular_encoder" not in caplog.text
    with pytest.raises(ConfigError, match="2 \\(\\['flair', 'dwi'\\]\\)"):
        build_finetune_encoders(run, None, in_channels=3)


def test_image_only_run_gives_a_random_table_branch_with_a_warning(tmp_path, preprocessor, batch, caplog):
    image, _ = _encoders(preprocessor)
    run = load_pretraining_run(_write_run(tmp_path, preprocessor, image=image))
    assert run.table_weights is None
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        new_image, new_table = build_finetune_encoders(run, None, in_channels=2)
    assert "no tabular encoder" in caplog.text and "random" in caplog.text
    assert new_table.num_features == 16
    image.eval()
    new_image.eval()
    with torch.no_grad():
        assert torch.equal(image(batch["image"]), new_image(batch["image"]))


def test_init_refuses_missing_and_unfinished_runs(tmp_path, preprocessor):
    with pytest.raises(PretrainingRunError, match="not a pretraining run"):
        load_pretraining_run(tmp_path / "nowhere")
    assert issubclass(PretrainingRunError, StrokeSSLError)
    image, table = _encoders(preprocessor)
    run = _write_run(tmp_path, preprocessor, image, table, finished=False)
    with pytest.raises(PretrainingRunError, match=r"resume it first.*--resume"):
        load_pretraining_run(run)
    assert not load_pretraining_run(run, require_finished=False).finished


def test_sequences_default_to_the_pretraining_cohort(tmp_path, preprocessor):
    image, _ = _encoders(preprocessor)
    run = _write_run(tmp_path, preprocessor, image=image, sequences=None)
    assert load_pretraining_run(run).sequences == ["t1", "flair", "dwi"]  # the cohort's order
    (tmp_path / "cohort.yaml").unlink()
    with pytest.raises(ConfigError, match=r"set imaging\.sequences"):
        load_pretraining_run(run)


def test_reconcile_sequences(caplog):
    # Matched by name, pretraining order kept, an extra cohort sequence ignored with a warning.
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        assert reconcile_sequences(["flair", "dwi"], ["dwi", "t1", "flair"]) == ["flair", "dwi"]
    assert "t1" in caplog.text
    with pytest.raises(ConfigError, match="'dwi'"):
        reconcile_sequences(["flair", "dwi"], ["flair"])
    assert reconcile_sequences(["flair", "dwi"], ["flair"], missing_images="zero") == ["flair", "dwi"]


def test_reconcile_features(preprocessor, caplog):
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        assert reconcile_features(preprocessor, ["sex", "age"]) is preprocessor
    assert "nihss" in caplog.text  # absent: enters as missing
    with pytest.raises(ConfigError, match="'glucose'"):
        reconcile_features(preprocessor, ["age", "glucose", "sex"])
    with pytest.raises(ConfigError, match=r"not supported yet.*scratch"):
        reconcile_features(preprocessor, ["age", "glucose"], new_features=["glucose"])
