import logging

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import CohortError
from multimodal.tabular import TabularPreprocessor, canonical_category


@pytest.fixture
def frame():
    rng = np.random.default_rng(1)
    n = 40
    age = rng.normal(70, 10, n)
    age[[3, 7]] = np.nan
    return pd.DataFrame({
        "age": age,
        "glucose": rng.lognormal(1.8, 0.3, n),
        "sex": rng.choice(["M", "F"], n),
        "smoking": rng.choice(["never", "former", "current", None], n, p=[0.5, 0.2, 0.2, 0.1]),
    })


def test_fit_learns_median_and_iqr_from_training_rows_only(frame):
    train, test = frame.iloc[:30], frame.iloc[30:]
    pre = TabularPreprocessor(["age", "glucose"], ["sex", "smoking"]).fit(train)
    values = train["age"].dropna().to_numpy()
    q75, q25 = np.percentile(values, [75, 25])
    assert pre.center_["age"] == pytest.approx(np.median(values))
    assert pre.scale_["age"] == pytest.approx((q75 - q25) / 1.349)
    out = pre.transform(test)
    expected = np.clip((test["glucose"].to_numpy() - pre.center_["glucose"]) / pre.scale_["glucose"], -5, 5)
    np.testing.assert_allclose(out["continuous"][:, 1], expected, rtol=1e-6)


def test_missing_values_are_masked_not_imputed(frame):
    pre = TabularPreprocessor(["age", "glucose"], ["sex", "smoking"]).fit(frame)
    out = pre.transform(frame)
    assert out["missing"].shape == (40, 4)
    np.testing.assert_array_equal(out["missing"][:, 0], frame["age"].isna().to_numpy())
    np.testing.assert_array_equal(out["missing"][:, 3], frame["smoking"].isna().to_numpy())
    assert (out["continuous"][frame["age"].isna().to_numpy(), 0] == 0).all()
    assert (out["categorical"][frame["smoking"].isna().to_numpy(), 1] == 0).all()
    assert (out["categorical"][frame["smoking"].notna().to_numpy(), 1] > 0).all()


def test_outlier_is_clipped_and_does_not_move_the_scale(frame):
    pre = TabularPreprocessor(["glucose"], []).fit(frame)
    spiked = frame.copy()
    spiked.loc[0, "glucose"] = 1e6
    pre_spiked = TabularPreprocessor(["glucose"], []).fit(spiked)
    assert pre_spiked.scale_["glucose"] == pytest.approx(pre.scale_["glucose"], rel=0.1)
    assert pre_spiked.transform(spiked)["continuous"][0, 0] == pytest.approx(5.0)


def test_unseen_category_uses_unknown_bucket_with_warning(frame, caplog):
    pre = TabularPreprocessor([], ["sex"]).fit(frame)
    new = pd.DataFrame({"sex": ["M", "X", None]})
    with caplog.at_level(logging.WARNING):
        out = pre.transform(new)
    assert "unseen" in caplog.text and "'sex'" in caplog.text
    assert out["categorical"][0, 0] == pre.categories_["sex"].index("m") + 1
    assert out["categorical"][1, 0] == 0 and not out["missing"][1, 0]
    assert out["categorical"][2, 0] == 0 and out["missing"][2, 0]


def test_json_round_trip_gives_identical_tensors(frame, tmp_path):
    pre = TabularPreprocessor(["age", "glucose"], ["sex", "smoking"]).fit(frame.iloc[:25])
    pre.save(tmp_path / "preprocessor.json")
    loaded = TabularPreprocessor.load(tmp_path / "preprocessor.json")
    a, b = pre.transform_tensors(frame), loaded.transform_tensors(frame)
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert (a[key] == b[key]).all()
    assert loaded.category_sizes == pre.category_sizes


def test_absent_column_enters_as_missing(frame):
    pre = TabularPreprocessor(["age", "glucose"], ["sex"]).fit(frame)
    out = pre.transform(frame.drop(columns=["glucose"]))
    assert out["missing"][:, 1].all() and (out["continuous"][:, 1] == 0).all()


def test_constant_column_and_integer_like_categories():
    frame = pd.DataFrame({"c": [3.0] * 6, "code": [1, 2, 1.0, 2.0, "1", None]})
    pre = TabularPreprocessor(["c"], ["code"]).fit(frame)
    assert pre.scale_["c"] == 1.0
    assert pre.categories_["code"] == ["1", "2"]
    assert canonical_category(" Yes ") == "yes" and canonical_category(float("nan")) is None


def test_text_in_continuous_column_names_the_column():
    frame = pd.DataFrame({"age": ["70", "eighty", "65"]}, index=["a", "b", "c"])
    with pytest.raises(CohortError, match=r"'age'.*'eighty'"):
        TabularPreprocessor(["age"], []).fit(frame)


def test_unseen_category_warning_is_given_once_per_preprocessor(frame, caplog):
    new = pd.DataFrame({"sex": ["X", "M"]})
    pre = TabularPreprocessor([], ["sex"]).fit(frame)
    with caplog.at_level(logging.WARNING, logger="multimodal.tabular"):
        for _ in range(3):  # e.g. every fold model sharing this preprocessor
            pre.transform(new)
        assert caplog.text.count("unseen in training") == 1
        TabularPreprocessor([], ["sex"]).fit(frame).transform(new)  # another run: warned again
        assert caplog.text.count("unseen in training") == 2
