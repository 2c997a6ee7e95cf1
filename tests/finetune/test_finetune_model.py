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
from multimodal.config import EncoderSpec, ImagingConfig, ModelConfig, RunConfig, save_config
from multimodal.encoders import build_encoder
from multimodal.errors import ConfigError, StrokeSSLError
from multimodal.tabular import TabularPreprocessor

SEQUENCES = ["flair", "dwi"]
MODEL = ModelConfig(encoders={
    "image": EncoderSpec("resnet3d_10", {"widen_factor": 0.25}),
    "table": EncoderSpec("ft_transformer", {"dim": 16, "depth": 1, "heads": 2}),
})


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
    image = build_encoder(model, "image", in_channels=len(SEQUENCES))
    table = build_encoder(model, "table", **_sizes(preprocessor)["table"])
    return image, table


def _sizes(preprocessor: TabularPreprocessor, channels: int = 2) -> dict:
    return {"image": {"in_channels": channels},
            "table": {"num_continuous": len(preprocessor.continuous), "category_sizes": preprocessor.category_sizes}}


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusions_give_one_logit_per_subject_and_train_every_parameter(fusion, preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = FusionClassifier({"image": image, "table": table}, fusion=fusion, hidden=16)
    # the second subject lacks its image: the learned missing embedding stands in (and gets a gradient)
    present = {"image": torch.tensor([True, False]), "table": torch.tensor([True, True])}
    logits = model(batch, present)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    logits.sum().backward()
    head = list(model.head_parameters())
    assert head and all(p.grad is not None for p in head)
    emb = model.embed(batch)
    assert emb["image"].shape == (2, image.num_features)
    assert emb["table"].shape == (2, table.num_features)


@pytest.mark.parametrize("branch", ["image", "table"])
@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_single_modality_variants(branch, fusion, preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = FusionClassifier({"image": image if branch == "image" else None,
                              "table": table if branch == "table" else None}, fusion=fusion, hidden=16)
    assert model.fusion == "concat"  # one embedding: the plain MLP whatever the config says
    assert model.modalities == [branch]
    # The absent modality's input is never read.
    logits = model({branch: batch[branch], "other": None})
    assert logits.shape == (2,)
    assert set(model.embed(batch)) == {branch}
    with pytest.raises(ValueError, match=branch):
        model({})


def test_no_encoder_and_bad_fusion_are_config_errors(preprocessor):
    with pytest.raises(ConfigError, match="at least one encoder"):
        FusionClassifier({"image": None})
    _, table = _encoders(preprocessor)
    with pytest.raises(ConfigError, match="gated"):
        FusionClassifier({"table": table}, fusion="gate")


def test_frozen_encoders_get_no_gradient_and_stay_in_eval(preprocessor, batch):
    image, table = _encoders(preprocessor)
    model = set_mode(FusionClassifier({"image": image, "table": table}, hidden=16), "frozen")
    model.train()
    assert model.training and model.head.training
    assert not image.training and not table.training
    assert not any(m.training for enc in model.encoders() for m in enc.modules())
    # Encoders in eval: the FT-Transformer's dropout is off, embeddings are repeatable in train().
    first = model.embed(batch)
    second = model.embed(batch)
    assert torch.equal(first["table"], second["table"])
    model(batch, {"image": torch.tensor([False, True]), "table": torch.tensor([True, False])}).sum().backward()
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
    model = set_mode(FusionClassifier({"image": image, "table": table}, fusion="gated", hidden=16), mode)
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
    model = set_mode(FusionClassifier({"image": image, "table": table}, fusion="attention", hidden=16),
                     "frozen").eval()
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
        expected = model(batch)
        got = model.forward_from_embeddings(cached)
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
    new = build_finetune_encoders(run, None, _sizes(preprocessor))
    new_image, new_table = new["image"], new["table"]
    for old, new, x in ((image, new_image, batch["image"]), (table, new_table, batch["table"])):
        old.eval()
        new.eval()
        with torch.no_grad():
            assert torch.equal(old(x), new(x))


def test_fine_tuning_model_config_cannot_change_a_pretrained_encoder(tmp_path, preprocessor, caplog):
    image, table = _encoders(preprocessor)
    run = load_pretraining_run(_write_run(tmp_path, preprocessor, image, table))
    other = ModelConfig(encoders={"image": EncoderSpec("resnet3d_18"),
                                  "table": EncoderSpec("ft_transformer", {"dim": 16, "depth": 1, "heads": 2})})
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        new_image = build_finetune_encoders(run, other, _sizes(preprocessor))["image"]
    assert new_image.num_features == image.num_features  # rebuilt as trained (widen 0.25)
    assert "resnet3d_18" in caplog.text and "encoders.table" not in caplog.text
    with pytest.raises(ConfigError, match="2 \\(\\['flair', 'dwi'\\]\\)"):
        build_finetune_encoders(run, None, _sizes(preprocessor, channels=3))


def test_image_only_run_gives_a_random_table_branch_with_a_warning(tmp_path, preprocessor, batch, caplog):
    image, _ = _encoders(preprocessor)
    run = load_pretraining_run(_write_run(tmp_path, preprocessor, image=image))
    assert run.table_weights is None
    with caplog.at_level(logging.WARNING, logger="finetune.init"):
        new = build_finetune_encoders(run, None, _sizes(preprocessor))
    new_image, new_table = new["image"], new["table"]
    assert "no table encoder" in caplog.text and "random" in caplog.text
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
