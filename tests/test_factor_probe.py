"""``probe_factors`` (benchmarks/factor_probe.py): linear probes find a planted factor, not noise."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

# benchmarks/ is a folder of scripts, not a package: import the module by its file name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from factor_probe import probe_factors


def _embedding_and_targets(n: int = 200, dim: int = 16) -> tuple[np.ndarray, pd.DataFrame]:
    """Column 0 = target ``a`` + noise, column 1 separates ``flag``; ``b`` is independent of all."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    flag = rng.random(n) < 0.3
    embedding = rng.normal(size=(n, dim))  # (N, D) unrelated features ...
    embedding[:, 0] = 2.0 * a + rng.normal(0, 0.3, n)  # ... one holding a noisy linear image of a
    embedding[:, 1] = np.where(flag, 1.0, -1.0) + rng.normal(0, 0.3, n)
    sex = np.where(flag, "M", "F").astype(object)
    sex[:5] = None  # missing cells are dropped per target
    targets = pd.DataFrame({"a": a, "b": b, "flag": flag.astype(int), "sex": sex,
                            "smoking": rng.choice(["never", "former", "current"], n)})
    return embedding, targets


def test_probe_recovers_the_planted_factor_only() -> None:
    embedding, targets = _embedding_and_targets()
    scores = probe_factors(embedding, targets, seed=0)
    assert scores["r2"]["a"] > 0.8
    assert scores["r2"]["b"] < 0.2
    assert scores["auroc"]["flag"] > 0.9
    assert scores["auroc"]["sex"] > 0.9 and scores["rows"]["sex"] == 195
    assert "smoking" in scores["auroc"]  # three categories: a macro one-vs-rest AUROC


def test_a_near_dead_channel_does_not_wreck_the_probe() -> None:
    """A ReLU channel that is ~0 but for a few subjects must not blow up held-out predictions
    (unclipped, the held-out subject's z ≈ 10^4 gave R² ≈ -785 here)."""
    embedding, targets = _embedding_and_targets(n=60)
    a = targets["a"].to_numpy()
    embedding[:, 2] = 0.0
    embedding[:10, 2] = 1e-3 * (a[:10] + 3)  # tiny, but follows a in the training folds
    embedding[59, 2] = 5.0  # one subject far outside any training range
    assert probe_factors(embedding, targets[["a"]], seed=0)["r2"]["a"] > 0.8


def test_probe_is_reproducible_for_a_seed() -> None:
    embedding, targets = _embedding_and_targets(n=60)
    assert probe_factors(embedding, targets, seed=1) == probe_factors(embedding, targets, seed=1)


def test_a_categorical_target_with_several_levels_gets_a_macro_auroc():
    from multimodal.linear_probes import probe_factors as shared

    rng = np.random.default_rng(0)
    levels = np.array(["never", "former", "current"])[rng.integers(0, 3, 150)]
    signal = np.c_[(levels == "current") * 2.0, (levels == "former") * 2.0] + rng.normal(size=(150, 2))
    noise = rng.normal(size=(150, 2))
    scores = shared(np.c_[signal, rng.normal(size=(150, 4))], pd.DataFrame({"smoking": levels}))
    blind = shared(np.c_[noise, rng.normal(size=(150, 4))], pd.DataFrame({"smoking": levels}))
    assert scores["auroc"]["smoking"] > 0.8 and abs(blind["auroc"]["smoking"] - 0.5) < 0.12


def test_rare_levels_of_a_categorical_target_are_pooled_not_the_column_skipped():
    from multimodal.linear_probes import probe_factors as shared

    rng = np.random.default_rng(1)
    levels = np.array(["lacunar", "cardioembolic", "large-artery"])[rng.integers(0, 3, 150)].astype(object)
    levels[:2], levels[2:4] = "dissection", "other"  # two levels of 2 rows: pooled into one of 4
    signal = np.c_[(levels == "lacunar") * 2.0, (levels == "cardioembolic") * 2.0] + rng.normal(size=(150, 2))
    scores = shared(np.c_[signal, rng.normal(size=(150, 4))], pd.DataFrame({"toast": levels}))
    assert scores["auroc"]["toast"] > 0.7 and scores["rows"]["toast"] == 150 and not scores["skipped"]
    levels[4] = "vasculitis"  # one row: pooled with nothing else of its size, 1 + 4 rows in the pool
    assert shared(np.c_[signal, rng.normal(size=(150, 4))], pd.DataFrame({"toast": levels}))["rows"]["toast"] == 150
    single = pd.Series(["a"] * 70 + ["b"] * 78 + ["c"] * 2, dtype=object)  # pool of 2 rows: left out
    result = shared(rng.normal(size=(150, 3)), pd.DataFrame({"x": single}))
    assert result["rows"]["x"] == 148 and "x" in result["auroc"]
    tiny = pd.Series(["a"] * 148 + ["b"] * 2, dtype=object)  # what is left is one level
    assert shared(rng.normal(size=(150, 3)), pd.DataFrame({"x": tiny}))["skipped"]["x"] == "a class has fewer than 3 rows"


def test_id_like_and_constant_text_columns_are_skipped_with_the_reason():
    from multimodal.linear_probes import probe_factors as shared

    rng = np.random.default_rng(2)
    targets = pd.DataFrame({"site_code": [f"c{i // 2}" for i in range(150)], "scanner": ["prisma"] * 150})
    skipped = shared(rng.normal(size=(150, 3)), targets)["skipped"]
    assert skipped["site_code"].startswith("most rows hold levels under 3 rows")
    assert skipped["scanner"] == "constant"


def test_partial_r2_credits_only_what_the_table_cannot_predict() -> None:
    from multimodal.linear_probes import probe_partial_r2, table_design

    rng = np.random.default_rng(1)
    n = 400
    age = rng.normal(70, 10, n)
    smoking = rng.choice(["never", "current"], n)
    own = rng.normal(size=n)  # the part of the quantity no clinical value predicts
    quantity = 0.1 * (age - 70) + 1.0 * (smoking == "current") + own
    table = pd.DataFrame({"age": age, "smoking": smoking})
    table.loc[:9, "age"] = np.nan  # a missing value is filled and flagged, not dropped
    design = table_design(table, ["age"], ["smoking"])
    assert design.shape == (n, 4) and np.isfinite(design).all()  # age, its missing flag, two levels
    noise = rng.normal(size=(n, 8))
    holds_own = np.column_stack([own + rng.normal(0, 0.2, n), noise])
    holds_table = np.column_stack([quantity - own, noise])  # what the record already says
    beyond = probe_partial_r2(holds_own, quantity, design, seed=0)
    assert beyond["partial_r2"] > 0.85 and 0.4 < beyond["table_r2"] < 0.75
    assert probe_partial_r2(holds_table, quantity, design, seed=0)["partial_r2"] < 0.1


def test_a_wide_embedding_is_probed_through_its_components_and_keeps_its_signal() -> None:
    # 400 columns (> LOGISTIC_WIDTH): a planted binary factor spread over 40 of them stays readable,
    # an unrelated one stays at chance.
    from multimodal.linear_probes import LOGISTIC_WIDTH, probe_auroc

    rng = np.random.default_rng(3)
    n, width = 300, LOGISTIC_WIDTH + 144
    factor = rng.normal(size=n)
    x = rng.normal(size=(n, width))
    x[:, :40] += 0.6 * factor[:, None]
    planted = (factor > 0.5).astype(int)
    unrelated = (rng.normal(size=n) > 0.5).astype(int)
    assert probe_auroc(x, planted, seed=0) > 0.9
    assert abs(probe_auroc(x, unrelated, seed=0) - 0.5) < 0.1
