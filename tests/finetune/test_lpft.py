"""LP-FT (``mode: trainable`` from the fitted probe): the probe as layers, model selection from epoch 0,
layer-wise learning-rate decay, the probe's components from the pretraining subjects, CLI to predict."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_config
from safetensors.torch import load_file

from finetune.config import FinetuneConfig
from finetune.fold import FoldContext, _fit_probe_fold
from finetune.inference import EmbeddingDataset, predict_probabilities
from finetune.loop import train_fold
from finetune.lpft import ProbeReduction, load_probe_head
from finetune.model import FusionClassifier, build_classifier, parameter_groups, set_mode
from finetune.probe import fit_linear_probe, probe_groups
from multimodal.cohort import load_cohort, stratified_folds
from multimodal.config import load_cohort_config, load_run_config
from multimodal.encoders import create_encoder
from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main

FINETUNE = {"epochs": 2, "batch_size": 8, "folds": 2, "repeats": 1, "bootstrap": 200, "patience": 1, "hidden": 16}


class _Encoder(torch.nn.Module):
    """A fixed 'encoder': the first ``num_features`` input columns."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.num_features]


class _Settings:
    head, branches, probe_table_embedding, hidden, dropout = "probe", "both", False, 8, 0.0

    def __init__(self, mode: str, probe_pcs: int | None = 16) -> None:
        self.mode, self.probe_pcs = mode, probe_pcs


# 14 subjects: fewer components than the head holds (zero-padded); probe_pcs 8 and None (every column)
@pytest.mark.parametrize(("n", "pcs"), [(120, 16), (14, 16), (120, 8), (120, None)])
def test_lpft_head_computes_the_frozen_probe_logit(n, pcs):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, 40)) @ rng.normal(size=(40, 40))  # an embedding block (40 > 16 components)
    table = {"continuous": torch.tensor(rng.normal(size=(n, 2)), dtype=torch.float32),
             "categorical": torch.tensor(rng.integers(0, 3, size=(n, 1))),
             "missing": torch.tensor(rng.random((n, 3)) < 0.1)}
    y = (image[:, 0] + table["continuous"][:, 0].numpy() + rng.normal(size=n) > 0).astype(int)
    models = {mode: set_mode(build_classifier({"image": _Encoder(40), "table": torch.nn.Identity()},
                                              _Settings(mode, pcs), 2, [3]), mode).eval()
              for mode in ("frozen", "trainable")}
    assert isinstance(models["trainable"].head[0], ProbeReduction)
    design_width = int((probe_groups(models["frozen"]) == 0).sum())  # the table design keeps every column
    assert models["trainable"].head[0].out_features == design_width + (40 if pcs is None else pcs)
    inputs = {"image": torch.tensor(image, dtype=torch.float32), "table": table}
    features = torch.cat(list(models["frozen"].embed(inputs).values()), dim=1).numpy()
    fit = fit_linear_probe(features, y, seed=0, groups=probe_groups(models["frozen"]), components=pcs)
    for model in models.values():
        load_probe_head(model.head, fit)
    expected = features @ fit["weight"] + fit["bias"]
    with torch.no_grad():
        for model in models.values():
            np.testing.assert_allclose(model(inputs).numpy(), expected, rtol=1e-4, atol=1e-4)
    # the reduction stays differentiable: gradients reach the (trainable) encoder output
    image_in = inputs["image"].clone().requires_grad_(True)
    models["trainable"]({"image": image_in, "table": table}).sum().backward()
    assert image_in.grad is not None and image_in.grad.abs().sum() > 0


def _linear_model(weight: torch.Tensor) -> FusionClassifier:
    model = set_mode(FusionClassifier({"x": _Encoder(4)}, head_layers=0), "frozen")
    with torch.no_grad():
        model.head[-1].weight.copy_(weight[None])
        model.head[-1].bias.zero_()
    return model


@pytest.mark.parametrize("helpful", [False, True])
def test_selection_never_ends_above_the_start(helpful):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(80, 4)), dtype=torch.float32)
    y = (x[:, 0] > 0).float().numpy()
    truth = torch.tensor([3.0, 0.0, 0.0, 0.0])
    # a good start that training on flipped labels can only spoil, or a blank start it can only improve
    model = _linear_model(truth if not helpful else torch.zeros(4))
    train_labels = y[:60] if helpful else 1 - y[:60]
    train = EmbeddingDataset({"x": x[:60]}, train_labels)
    val = EmbeddingDataset({"x": x[60:]}, y[60:])
    settings = FinetuneConfig(mode="frozen", head="mlp", head_layers=0, epochs=6, patience=6, lr=0.2,
                              loss="bce", weight_decay=0.0)
    history = train_fold(model, settings, train, val, train_labels, torch.device("cpu"), seed=0, from_start=True)
    losses = [e["val_loss"] for e in history]
    assert history[0]["epoch"] == 0 and "train_loss" not in history[0]
    chosen = [e for e in history if e.get("selected")]
    assert len(chosen) == 1 and chosen[0]["val_loss"] == min(losses) <= losses[0]
    assert (chosen[0]["epoch"] > 0) == helpful
    # the weights kept are the chosen epoch's: their inner-validation loss is the one recorded
    p = torch.as_tensor(predict_probabilities(model, val, 16, torch.device("cpu"))).double().clamp(1e-7, 1 - 1e-7)
    loss = float(torch.nn.functional.binary_cross_entropy(p, torch.as_tensor(y[60:]).double()))
    assert loss == pytest.approx(chosen[0]["val_loss"], abs=1e-4)


@pytest.mark.parametrize(("name", "args", "stages"), [
    # 3D ResNet: stem, layer1 ... layer4 (its token positions with layer4)
    ("resnet3d_10", {"widen_factor": 0.25}, ["stem", "layer1", "layer2", "layer3", "layer4"]),
    # slice ResNet + LSTM: the LSTM is the last stage
    ("slice_lstm_resnet10t", {"lstm_hidden": 8}, ["stem", "layer1", "layer2", "layer3", "layer4", "lstm"]),
])
def test_layer_decay_gives_each_stage_its_rate(name, args, stages):
    encoder = create_encoder(name, in_channels=1, **args)
    model = set_mode(FusionClassifier({"image": encoder}, head_layers=0), "trainable")
    groups = parameter_groups(model, "trainable", lr=1e-3, encoder_lr_ratio=0.1, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) and set(lr_of) == {id(p) for p in model.parameters()}

    def stage(param_name: str) -> str:
        parts = param_name.split(".")
        if parts[0] == "backbone":
            return "stem" if parts[1] in ("conv1", "bn1") else parts[1]
        return "layer4" if parts[0] == "pos_embed" else parts[0]

    rates: dict[str, set[float]] = {}
    for param_name, param in encoder.named_parameters():
        rates.setdefault(stage(param_name), set()).add(round(lr_of[id(param)], 12))
    assert set(rates) == set(stages)
    for i, s in enumerate(stages):  # the last stage at the encoder rate, each earlier one at half the next
        assert rates[s] == {round(1e-4 * 0.5 ** (len(stages) - 1 - i), 12)}, s
    assert {lr_of[id(p)] for p in model.head_parameters()} == {1e-3}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert all(decay_of[id(p)] == (0.0 if p.ndim < 2 else 0.05) for n, p in encoder.named_parameters()
               if "pos_embed" not in n)
    torch.optim.AdamW(groups)


def test_probe_components_from_a_basis_follow_its_principal_axes():
    rng = np.random.default_rng(2)
    n, d = 60, 12
    embedding = rng.normal(size=(n, d))
    y = (embedding[:, 0] + rng.normal(size=n) > 0).astype(int)
    basis = np.zeros((200, d + 1))
    basis[:, 3] = 10 * np.tile([1.0, -1.0], 100)  # the basis varies along column 3, then 5 (orthogonal)
    basis[:, 5] = np.tile([1.0, 1.0, -1.0, -1.0], 50)
    x = np.c_[embedding, rng.normal(size=n)]
    groups = np.r_[np.ones(d, int), 0]
    fit = fit_linear_probe(x, y, seed=0, groups=groups, components=2, basis=basis)
    axes = fit["projection"][:d][:, fit["reduced_groups"] == 1]  # (d, 2)
    np.testing.assert_allclose(np.abs(axes[[3, 5]]), np.eye(2), atol=1e-8)
    with pytest.raises(ValueError, match="basis"):
        fit_linear_probe(x, y, seed=0, groups=groups, basis=basis[:, :4])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny cohort (48 labeled subjects), its config and a pretraining run on it."""
    folder = tmp_path_factory.mktemp("lpft")
    cohort = write_synthetic_cohort(folder / "c", n=48, grid=16, labeled_fraction=1.0, seed=4, prevalence=0.3)
    config = write_tiny_config(folder / "tiny.yaml", cohort, finetune=FINETUNE)
    assert main(["pretrain", str(config), "--set", f"run.dir={folder / 'pre'}"]) == 0
    return config, folder / "pre"


def test_trainable_starts_at_the_frozen_probe_on_the_same_fold(pretrained):
    config, pre = pretrained
    cohort = load_cohort(load_cohort_config(load_run_config(config).cohort))
    label_of = dict(zip(cohort.ids, cohort.labels, strict=True))
    train_ids, test_ids = stratified_folds(cohort.ids, cohort.labels, 2, 0)[0]
    probabilities, models = {}, {}
    for mode in ("frozen", "trainable"):
        run_config = load_run_config(config, [f"finetune.mode={mode}"])
        ctx = FoldContext(run_config, cohort, FinetuneConfig(**{**FINETUNE, "mode": mode}), pre, torch.device("cpu"))
        ctx.cache.warm(cohort.records(), workers=0)
        model = ctx.model(ctx.preprocessor)
        *_, probabilities[mode] = _fit_probe_fold(ctx, model, ctx.preprocessor, train_ids, test_ids,
                                                  lambda ids: np.array([label_of[s] for s in ids]), seed=0)
        models[mode] = (model, ctx.dataset(test_ids, ctx.preprocessor, augment=False))
    np.testing.assert_allclose(probabilities["trainable"], probabilities["frozen"], atol=1e-5)
    # from raw inputs (encoders, reduction layers, head), before any fine-tuning step
    model, test = models["trainable"]
    assert isinstance(model.head[0], ProbeReduction) and all(p.requires_grad for p in model.parameters())
    np.testing.assert_allclose(predict_probabilities(model, test, 8, torch.device("cpu")), probabilities["frozen"],
                               atol=1e-5)


def _check_predict_reproduces_out_of_fold(run, cohort_yaml, out):
    assert main(["predict", str(run), "--cohort", str(cohort_yaml), "--out", str(out)]) == 0
    predicted = pd.read_csv(out).set_index("subject_id")
    oof = pd.read_csv(run / "predictions.csv").set_index("subject_id")
    for subject in oof.index[:4]:
        column = f"probability_{oof.loc[subject, 'fold']}"
        assert predicted.loc[subject, column] == pytest.approx(oof.loc[subject, "probability"], abs=1e-5)


def test_trainable_lpft_through_the_cli_then_predict(pretrained, tmp_path, monkeypatch):
    import finetune.fold

    config, pre = pretrained
    events = []  # ("fit", rows the probe was fitted on) and ("train", rows of inner-train), in call order
    fit, train = finetune.fold.fit_linear_probe, finetune.fold.train_fold
    monkeypatch.setattr(finetune.fold, "fit_linear_probe",
                        lambda features, *a, **k: events.append(("fit", len(features))) or fit(features, *a, **k))
    monkeypatch.setattr(finetune.fold, "train_fold",
                        lambda model, s, data, *a, **k: events.append(("train", len(data))) or train(model, s, data, *a, **k))
    run = tmp_path / "lpft"
    assert main(["finetune", str(config), "--init", str(pre), "--set", "finetune.mode=trainable",
                 "--set", "finetune.probe_components=pretraining", "--set", f"run.dir={run}"]) == 0
    # Each fold: its probe, then the starting probe fitted on inner-train only (so epoch 0 is scored on
    # subjects it never saw), then fine-tuning on those same rows.
    first = next(i for i, event in enumerate(events) if event[0] == "train")
    assert events[first - 1] == ("fit", events[first][1]) and events[first - 2][0] == "fit"
    assert events[first - 2][1] > events[first][1]
    fold = json.loads((run / "folds" / "r0f0.json").read_text())
    probe, epochs = fold["history"][0], fold["history"][1:]
    assert probe["C"] > 0 and probe["components_from"] == "pretraining" and probe["component_subjects"] == 48
    assert epochs[0]["epoch"] == 0 and sum(bool(e.get("selected")) for e in epochs) == 1
    assert json.loads((run / "model.json").read_text())["head"] == "probe"
    weights = load_file(str(run / "folds" / "r0f0.safetensors"))
    assert weights["head.0.blocks.0.weight"].shape == (16, 128)  # the image block's 16 components
    assert weights["head.1.weight"].shape[0] == 1 and "image_encoder.backbone.layer4.0.conv1.weight" in weights
    _check_predict_reproduces_out_of_fold(run, config.parent / "c" / "cohort.yaml", tmp_path / "pred.csv")


def test_slice_lstm_lpft_with_a_fine_tuned_epoch_then_predict(pretrained, tmp_path, monkeypatch):
    """The ResNet-per-slice + LSTM encoder through LP-FT; selection is forced past the probe, so the
    fold is the fine-tuned model's (its threshold from inner validation) and predict must reproduce it."""
    import finetune.fold

    config, _ = pretrained
    model = ["--set", "model.encoders.image.name=slice_lstm_resnet10t",
             "--set", "model.encoders.image.args={lstm_hidden: 8}"]
    pre = tmp_path / "pre"
    assert main(["pretrain", str(config), *model, "--set", f"run.dir={pre}"]) == 0
    original = finetune.fold.train_fold

    def past_the_probe(*args, **kwargs):
        history = original(*args, **{**kwargs, "from_start": False})
        return [{"epoch": 0, "val_loss": math.inf}, *history]

    monkeypatch.setattr(finetune.fold, "train_fold", past_the_probe)
    run = tmp_path / "lstm"
    assert main(["finetune", str(config), "--init", str(pre), *model, "--set", "finetune.mode=trainable",
                 "--set", "finetune.branches=image", "--set", "finetune.epochs=1", "--set", f"run.dir={run}"]) == 0
    fold = json.loads((run / "folds" / "r0f0.json").read_text())
    assert fold["history"][-1]["selected"] and len(fold["validation"]["ids"]) < 24  # inner validation only
    weights = load_file(str(run / "folds" / "r0f0.safetensors"))
    assert "image_encoder.lstm.weight_ih_l0" in weights and "head.0.blocks.0.weight" in weights
    _check_predict_reproduces_out_of_fold(run, config.parent / "c" / "cohort.yaml", tmp_path / "pred.csv")
