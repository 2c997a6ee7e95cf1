import numpy as np
import pytest
from conftest import write_cohort

from multimodal.cohort import load_cohort, read_cohort, stratified_folds, stratified_split
from multimodal.config import load_cohort_config
from multimodal.errors import CohortError


def rows(labels, **extra):
    return [{"subject_id": f"p{i:03d}", "flair": f"img/{i}.nii", "recurrence_12m": lab, **extra}
            for i, lab in enumerate(labels)]


def test_default_label_map_accepts_common_spellings(tmp_path):
    path = write_cohort(tmp_path, rows(["yes", "No", "TRUE", "false", "1", "0.0", "1.0", ""]))
    cohort, problems = read_cohort(load_cohort_config(path))
    assert problems == []
    np.testing.assert_array_equal(cohort.labels[:7], [1, 0, 1, 0, 1, 0, 1])
    assert np.isnan(cohort.labels[7])


def test_unmappable_label_names_subject_and_custom_map_fixes_it(tmp_path):
    path = write_cohort(tmp_path, rows(["1", "2", "recurrence"]))
    _, problems = read_cohort(load_cohort_config(path))
    assert [p.subject for p in problems] == ["p001", "p002"]
    assert "label_map" in problems[0].message
    path = write_cohort(tmp_path, rows(["Recurrence", "none"]), {"label_map": {"recurrence": 1, "none": 0}})
    cohort, problems = read_cohort(load_cohort_config(path))
    assert problems == [] and cohort.labels.tolist() == [1, 0]


def test_one_line_error_says_a_repeated_problem_once(tmp_path):
    path = write_cohort(tmp_path, rows(["unknown"] * 5 + ["2", "1"]))
    with pytest.raises(CohortError) as caught:
        load_cohort(load_cohort_config(path))
    text = str(caught.value)
    assert text.startswith("6 problem(s) in cohort")
    assert "subjects p000, p001, p002 and 2 more, column 'recurrence_12m': label 'unknown' is not one of" in text
    assert "add 'unknown' to its na_values" in text and text.count("'unknown' is not one of") == 1
    assert "subject p005, column 'recurrence_12m': label '2'" in text
    assert text.endswith("(run `strokessl validate` for the full list)")
    # a bare CSV (as predict reads one) has no cohort.yaml for validate: the hint says how to get one
    from multimodal.config import CohortConfig
    with pytest.raises(CohortError, match=r"a cohort\.yaml beside the CSV"):
        load_cohort(CohortConfig(csv=tmp_path / "cohort.csv", images={"flair": "flair"}))


def test_duplicate_ids_name_both_csv_lines_and_numeric_labels_get_no_na_values_hint(tmp_path):
    path = write_cohort(tmp_path, [{"subject_id": "a", "flair": "x.nii", "recurrence_12m": "1"},
                                   {"subject_id": "", "flair": "x.nii", "recurrence_12m": "0"},  # line 3, dropped
                                   {"subject_id": "b", "flair": "x.nii", "recurrence_12m": "9"},
                                   {"subject_id": "a", "flair": "x.nii", "recurrence_12m": "0"}])
    _, problems = read_cohort(load_cohort_config(path))
    text = "\n".join(str(p) for p in problems)
    assert "id appears more than once (row 5, first in row 2)" in text
    # na_values blanks a number in every column (NIHSS 9 too): for a numeric code only label_map is offered
    assert "label '9' is not one of" in text and "na_values" not in text


def test_feature_types_na_values_and_ids(tmp_path):
    table = rows(["1", "0", "0"])
    for row, (age, score, sex) in zip(table, [(70, -999, "M"), (55.5, 3, "unknown"), ("", 2, "F")], strict=True):
        row.update(age=age, score=score, sex=sex)
    table[0]["subject_id"] = "007"
    path = write_cohort(tmp_path, table, {"na_values": [-999, "unknown"], "types": {"score": "categorical"}})
    cohort = load_cohort(load_cohort_config(path))
    assert cohort.ids[0] == "007"
    assert cohort.feature_types == {"age": "continuous", "score": "categorical", "sex": "categorical"}
    assert np.isnan(cohort.features.loc["p002", "age"]) and cohort.features.loc["p001", "age"] == 55.5
    assert cohort.features["score"].isna().tolist() == [True, False, False]
    assert cohort.features["sex"].isna().tolist() == [False, True, False]
    assert cohort.image_paths["007"]["flair"] == tmp_path / "img" / "0.nii"


def test_missing_column_suggests_the_nearest(tmp_path):
    path = write_cohort(tmp_path, rows(["1"]), {"label": "recurence_12m"})
    with pytest.raises(CohortError, match="did you mean 'recurrence_12m'"):
        load_cohort(load_cohort_config(path))


def test_missing_images_drop_removes_subjects(tmp_path):
    table = rows(["1", "0", "0"])
    table[1]["flair"] = ""
    path = write_cohort(tmp_path, table, {"missing_images": "drop"})
    assert load_cohort(load_cohort_config(path)).ids == ["p000", "p002"]


def test_folds_are_disjoint_stratified_and_seeded():
    labels = np.array([1] * 12 + [0] * 48, dtype=float)
    ids = [f"s{i}" for i in range(60)]
    folds = stratified_folds(ids, labels, k=4, seed=3)
    tested = [s for _, test in folds for s in test]
    assert sorted(tested) == sorted(ids)
    for train, test in folds:
        assert not set(train) & set(test)
        assert sum(labels[ids.index(s)] for s in test) == 3
    assert folds == stratified_folds(ids, labels, k=4, seed=3)
    assert folds != stratified_folds(ids, labels, k=4, seed=4)


def test_folds_refuse_more_folds_than_positives():
    labels = np.array([1, 1, 0, 0, 0, 0, 0], dtype=float)
    with pytest.raises(CohortError, match="at most 2 folds"):
        stratified_folds([str(i) for i in range(7)], labels, k=3, seed=0)


def test_split_keeps_label_proportions_and_unlabeled_stratum():
    labels = np.array([1] * 20 + [0] * 60 + [np.nan] * 20)
    ids = [str(i) for i in range(100)]
    train, held = stratified_split(ids, labels, 0.25, seed=0)
    assert len(held) == 25 and not set(train) & set(held)
    held_labels = labels[[int(s) for s in held]]
    assert (held_labels == 1).sum() == 5 and np.isnan(held_labels).sum() == 5


def test_a_held_out_share_smaller_than_the_strata_count_splits_without_error():
    from multimodal.cohort import stratified_split

    ids = [f"s{i}" for i in range(40)]
    labels = np.array([np.nan] * 20 + [0.0] * 15 + [1.0] * 5)  # three strata, 2 subjects held out
    train, held = stratified_split(ids, labels, 0.05, seed=0)
    assert len(held) == 2 and sorted(train + held) == sorted(ids)
