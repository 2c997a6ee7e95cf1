"""Linear probe head: the table design against a hand-built one, the fit against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import get_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finetune.baselines import neg_log_loss
from finetune.model import build_classifier
from finetune.probe import ProbeTable, TableDesign, fit_linear_probe, load_probe


def test_table_design_matches_a_hand_built_matrix():
    table = {
        "continuous": torch.tensor([[0.5, 0.0], [-1.0, 2.0]]),
        "categorical": torch.tensor([[2, 0], [1, 3]]),  # sizes 3 and 4 (bucket 0 = missing)
        "missing": torch.tensor([[False, True, False, True], [False, False, False, False]]),
    }
    expected = torch.tensor([
        [0.5, 0.0, 0, 1, 0, 1, 0, 1, 0, 0, 0],
        [-1.0, 2.0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
    ])
    design = TableDesign(2, [3, 4])
    assert design.num_features == 11
    assert torch.equal(design(table), expected.float())


def test_probe_folds_standardisation_into_raw_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [1.0, 5.0, 0.1], size=(300, 3))
    y = (x[:, 0] - 3 + 0.5 * rng.normal(size=300) > 0.8).astype(int)
    fit = fit_linear_probe(x, y, seed=0)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=fit["C"], class_weight="balanced",
                                                                   max_iter=5000)).fit(x, y)
    ours = 1 / (1 + np.exp(-(x @ fit["weight"] + fit["bias"])))
    np.testing.assert_allclose(ours, reference.predict_proba(x)[:, 1], atol=2e-3)  # solver tolerance
    assert fit["oof_probabilities"].shape == (300,)


def test_probe_regularises_noise_harder_than_signal():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 40))
    y = (rng.random(200) < 0.2).astype(int)
    noise_c = fit_linear_probe(x, y, seed=0)["C"]
    signal = x.copy()
    signal[:, 0] += 3 * y
    signal_c = fit_linear_probe(signal, y, seed=0)["C"]
    assert noise_c < signal_c
    with pytest.raises(ValueError, match="2 positives"):
        fit_linear_probe(x[:10], np.r_[1, np.zeros(9, int)], seed=0)


class _Encoder(torch.nn.Module):
    num_features = 3

    def forward(self, x):
        return x.flatten(1)[:, :3]


def test_probe_classifier_computes_the_fitted_logit():
    class Settings:
        head, branches, probe_table_embedding, hidden, dropout = "probe", "both", False, 8, 0.0

    model = build_classifier({"image": _Encoder(), "table": torch.nn.Identity()}, Settings, 1, [2]).eval()
    assert isinstance(model.table_encoder, ProbeTable) and model.head[-1].in_features == 3 + 1 + 2 + 1
    fit = {"weight": np.arange(7, dtype=float), "bias": -1.0}
    load_probe(model.head[-1], fit)
    image = torch.randn(2, 1, 2, 2, 2)
    table = {"continuous": torch.tensor([[0.3], [1.0]]), "categorical": torch.tensor([[1], [0]]),
             "missing": torch.tensor([[False, False], [False, True]])}
    rows = np.c_[image.flatten(1)[:, :3].numpy(), [[0.3, 0, 0, 1], [1.0, 0, 1, 0]]]
    np.testing.assert_allclose(model({"image": image, "table": table}).detach().numpy(), rows @ fit["weight"] - 1.0, atol=1e-5)


def test_auto_repeats_follow_the_positive_count():
    from finetune.config import FinetuneConfig, resolved_repeats

    assert resolved_repeats(FinetuneConfig(), 22) == 3  # small cohort: repeated CV by default
    assert resolved_repeats(FinetuneConfig(), 120) == 1
    assert resolved_repeats(FinetuneConfig(repeats=2), 22) == 2  # an explicit count wins


@pytest.mark.parametrize(("lower", "upper", "words"), [
    (0.01, 0.07, "beats logistic regression by +0.040 [+0.010, +0.070]"),
    (-0.02, 0.10, "does not beat logistic regression: ΔAUROC +0.040 [-0.020, +0.100], the interval includes 0"),
    (-0.09, -0.01, "is worse by -0.050 [-0.090, -0.010]"),
])
def test_verdict_says_whether_the_model_beats_the_baseline(lower, upper, words):
    from finetune.summary import verdict

    ci = {"estimate": 0.7, "lower": 0.6, "upper": 0.8}
    section = {"model": {"auroc": ci}, "baselines": {"logistic_regression": {"auroc": ci}},
               "delta_auroc": {"logistic_regression": {"delta": (lower + upper) / 2, "lower": lower, "upper": upper, "p_value": 0.1}}}
    text = "\n".join(verdict(section))
    assert words in text
    assert ("paid off" in text and "did not" not in text) == (lower > 0)


def test_metrics_read_back_from_json_print_undefined_values_as_n_a():
    from finetune.summary import format_metrics

    ci = {"estimate": 0.7, "lower": 0.6, "upper": 0.8}
    undefined = {"estimate": None, "lower": None, "upper": None}  # NaN as metrics.json stores it
    section = {"model": {"auroc": ci, "ece": undefined}, "baselines": {"gradient_boosting": {"auroc": ci}},
               "delta_auroc": {"gradient_boosting": {"delta": 0.0, "lower": -0.1, "upper": 0.1, "p_value": None}},
               "n": 48, "positives": 8, "threshold": 0.3,
               "fold_summary": {"auroc": {"n": 1, "mean": 0.7, "std": None}}}
    text = format_metrics(section)
    assert "n/a [n/a, n/a]" in text and "p = n/a" in text and "SD n/a" in text


def test_metrics_json_is_strict_json(tmp_path):
    import json

    from multimodal.checkpoint import atomic_write_json

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}: not JSON other languages can read")

    atomic_write_json(tmp_path / "metrics.json", {"model": {"calibration_slope": {"estimate": np.float64("nan")}},
                                                  "n": np.int64(48)})
    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse) == {
        "model": {"calibration_slope": {"estimate": None}}, "n": 48}


def test_probe_weighs_embedding_blocks_by_their_use():
    rng = np.random.default_rng(2)
    n = 400
    design = rng.normal(size=(n, 3))
    noise = rng.normal(size=(n, 120))  # an embedding block that knows nothing
    useful = rng.normal(size=(n, 4))  # one that holds a risk factor the table lacks
    logit = 1.2 * design[:, 0] + 1.2 * useful[:, 0] - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x = np.c_[noise, useful, design]
    groups = np.r_[np.full(120, 1), np.full(4, 2), np.zeros(3, int)]
    fit = fit_linear_probe(x, y, seed=0, groups=groups)
    assert fit["group_weights"][1] < fit["group_weights"][2]
    assert fit["group_weights"][2] > 0
    # on raw inputs, the informative column outweighs a typical noise column many times over
    assert abs(fit["weight"][120]) > 5 * np.abs(fit["weight"][:120]).mean()


def test_probe_with_principal_components_matches_a_scikit_learn_pipeline(monkeypatch):
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA

    import finetune.probe

    monkeypatch.setattr(finetune.probe, "GROUP_WEIGHTS", (1.0,))  # no block weighting: a plain pipeline
    rng = np.random.default_rng(3)
    embedding = rng.normal(size=(250, 30)) @ rng.normal(size=(30, 30))
    design = rng.normal(size=(250, 2))
    y = (embedding[:, 0] + design[:, 0] + rng.normal(size=250) > 1).astype(int)
    x = np.c_[embedding, design]
    fit = fit_linear_probe(x, y, seed=0, groups=np.r_[np.ones(30, int), 0, 0], components=5)
    reference = make_pipeline(
        ColumnTransformer([("design", "passthrough", [30, 31]), ("pca", PCA(5, svd_solver="full"), list(range(30)))]),
        StandardScaler(), LogisticRegression(C=fit["C"], class_weight="balanced", max_iter=5000)).fit(x, y)
    ours = 1 / (1 + np.exp(-(x @ fit["weight"] + fit["bias"])))
    np.testing.assert_allclose(ours, reference.predict_proba(x)[:, 1], atol=2e-3)


def test_more_than_two_blocks_use_a_coordinate_search_that_keeps_the_signal_block():
    rng = np.random.default_rng(3)
    n = 240
    y = (rng.random(n) < 0.3).astype(int)
    design = rng.normal(size=(n, 3))
    blocks = [rng.normal(size=(n, 6)) for _ in range(3)]
    blocks[1][:, 0] += 2.0 * y  # only the second embedding block carries the label
    x = np.concatenate([*blocks, design], axis=1)
    groups = np.r_[np.full(6, 1), np.full(6, 2), np.full(6, 3), np.zeros(3, int)]
    fit = fit_linear_probe(x, y, seed=0, groups=groups, components=4)
    assert set(fit["group_weights"]) == {1, 2, 3}
    assert fit["group_weights"][2] > 0 and fit["group_weights"][2] >= max(fit["group_weights"][1], fit["group_weights"][3])


def test_probe_scorer_equals_scikit_learns_neg_log_loss():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] + rng.normal(size=60) > 0).astype(int)
    reference = get_scorer("neg_log_loss")
    for c in (1e-3, 1.0, 1e6):  # from near-constant to near-separating (probabilities clipped at eps)
        model = LogisticRegression(C=c, max_iter=5000).fit(x * (1.0 if c < 1e6 else 50.0), y)
        assert neg_log_loss(model, x, y) == pytest.approx(reference(model, x, y), rel=1e-10, abs=1e-12)
    labels = np.where(y == 1, "stroke", "none")  # labels that are not 0/1: the positive class is classes_[-1]
    model = LogisticRegression().fit(x, labels)
    assert neg_log_loss(model, x, labels) == pytest.approx(reference(model, x, labels), rel=1e-10)
