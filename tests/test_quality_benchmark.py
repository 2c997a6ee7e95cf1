"""``summarise`` (benchmarks/quality.py): seed means, oracle fractions and the gap chain of the table."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import markdown, summarise


def _run(auroc: float, lr: float, scores: pd.DataFrame) -> dict:
    ci = lambda v: {"estimate": v, "lower": v - 0.05, "upper": v + 0.05}  # noqa: E731
    model = {k: ci(auroc) for k in ("auroc", "auprc", "balanced_accuracy")}
    baselines = {b: {k: ci(lr) for k in ("auroc", "auprc", "balanced_accuracy")}
                 for b in ("logistic_regression", "gradient_boosting")}
    delta = {"delta": auroc - lr, "lower": -0.01, "upper": 0.02, "p_value": 0.5}
    return {"metrics": {"model": model, "baselines": baselines, "n": len(scores), "positives": 20,
                        "delta_auroc": {"logistic_regression": delta, "gradient_boosting": delta}},
            "cv": auroc - 0.02, "scores": scores}


def test_summary_means_fractions_and_gap_chain():
    rng = np.random.default_rng(0)
    label = (rng.random(120) < 0.2).astype(int)
    ids = [f"s{i}" for i in range(120)]

    def scores(signal: float) -> pd.DataFrame:
        p = 1 / (1 + np.exp(-(signal * label + rng.normal(size=120))))
        return pd.DataFrame({"label": label, "probability": p}, index=pd.Index(ids, name="subject_id"))

    results = {}
    for seed, (a, b, c) in enumerate([(0.80, 0.74, 0.60), (0.78, 0.70, 0.62)]):
        results[("default", 0.1, seed)] = _run(a, 0.75, scores(3.0))
        results[("simclr", 0.1, seed)] = _run(b, 0.75, scores(1.5))
        results[("scratch", 0.1, seed)] = _run(c, 0.75, scores(0.2))
    oracle = {"bayes": 0.9, "image": 0.8, "tabular": 0.7}
    summary = summarise(results, oracle, (0.1,), bootstrap=200)
    row = summary["by_budget"]["10%"]["default"]
    assert row["auroc"]["mean"] == pytest.approx(0.79)
    assert row["auroc"]["sd"] == pytest.approx(np.std([0.80, 0.78], ddof=1))
    assert row["auroc_fraction"]["bayes"] == pytest.approx(0.79 / 0.9)
    assert summary["by_budget"]["10%"]["logistic_regression"]["auroc"]["mean"] == pytest.approx(0.75)
    gaps = summary["gaps"]
    assert gaps["chain"] == ["default", "simclr", "scratch"]  # best multimodal, best unimodal, scratch
    assert all(d["delta"] > 0 for d in gaps["default - simclr"] + gaps["simclr - scratch"])
    info = {"profile": "test", "cohort_seed": 0, "runs_done": 6, "wall_clock_s": 60, "test_n": 120,
            "test_positives": 20}
    assert "| 10% | default | 0.790 ± 0.014 |" in markdown(summary, {}, info)


def test_oracle_row_and_share_of_the_oracle_gain():
    rng = np.random.default_rng(1)
    label = (rng.random(80) < 0.25).astype(int)
    scores = pd.DataFrame({"label": label, "probability": rng.random(80)},
                          index=pd.Index([f"s{i}" for i in range(80)], name="subject_id"))
    results = {}
    for seed, (oracle_auroc, gain) in enumerate([(0.85, 0.10), (0.80, 0.01)]):
        run = _run(0.78, 0.75, scores)
        share = {"share": 0.3 / gain * 0.1, "lower": 0.1, "upper": 0.5, "oracle_gain": gain,
                 "oracle_gain_lower": gain - 0.02, "oracle_gain_upper": gain + 0.02}
        run["metrics"]["oracle_features"] = {"auroc": {"estimate": oracle_auroc, "lower": 0.7, "upper": 0.9},
                                             "share": share}
        results[("default", 1.0, seed)] = run
    summary = summarise(results, {"bayes": 0.9, "image": 0.8, "tabular": 0.7}, (1.0,), bootstrap=100)
    rows = summary["by_budget"]["100%"]
    assert rows["oracle_features"]["auroc"]["mean"] == pytest.approx(0.825)
    assert [d["oracle_gain"] for d in rows["default"]["share_of_oracle_gain"]] == [0.10, 0.01]
    info = {"profile": "test", "cohort_seed": 0, "runs_done": 2, "wall_clock_s": 60, "test_n": 80,
            "test_positives": 20}
    table = markdown(summary, {}, info)
    assert "| 100% | oracle-feature LR (table + true image quantities) | 0.825 ± 0.035 |" in table
    # a prize under 0.03 AUROC ranks nothing: the share is not printed as a number
    assert "0.30 [0.10, 0.50]; n/a (oracle gain +0.010)" in table


def test_text_methods_are_compared_with_baselines_that_read_the_text():
    rng = np.random.default_rng(2)
    label = (rng.random(80) < 0.25).astype(int)
    scores = pd.DataFrame({"label": label, "probability": rng.random(80)},
                          index=pd.Index([f"s{i}" for i in range(80)], name="subject_id"))
    results = {("default", 1.0, 0): _run(0.78, 0.70, scores), ("default_text", 1.0, 0): _run(0.82, 0.76, scores)}
    summary = summarise(results, {"bayes": 0.9, "image": 0.8, "tabular": 0.7}, (1.0,), bootstrap=100)
    rows = summary["by_budget"]["100%"]
    assert rows["logistic_regression"]["auroc"]["mean"] == pytest.approx(0.70)
    assert rows["logistic_regression+text"]["auroc"]["mean"] == pytest.approx(0.76)
    assert rows["gradient_boosting+text"]["auroc_fraction"]["bayes"] == pytest.approx(0.76 / 0.9)


def _report(methods: dict, rows: dict, seeds: tuple[int, ...] = (0, 1, 2), imaging: dict | None = None) -> dict:
    return {"info": {"methods": methods, "settings": {"seeds": list(seeds), "imaging": imaging or {}},
                     "profile": "full", "cohort_seed": 2},
            "by_budget": {"100%": rows}}


def _row(auroc: float, n: int = 3) -> dict:
    return {"auroc": {"mean": auroc, "sd": 0.0, "n": n}, "auprc": {"mean": 0.3, "sd": 0.0, "n": n}}


def test_tables_name_rows_by_todays_recipe_and_list_what_never_ran(tmp_path):
    from quality import METHODS
    from quality_tables import gather, markdown

    old = _report({"default": ["clip", {"mode": "frozen", "head": "probe"}]},  # the default of an older version
                  {"default": _row(0.70), "logistic_regression": _row(0.67)})
    new = _report({"default": list(METHODS["default"])}, {"default": _row(0.72), "logistic_regression": _row(0.67)})
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    table = gather([tmp_path / "a.json", tmp_path / "b.json"])
    methods = table["by_budget"]["100%"]["methods"]
    assert METHODS["clip_avg"] == ("clip", {"mode": "frozen", "head": "probe"})  # the premise of the rename
    assert [r["file"] for r in methods["clip_avg"]] == ["a.json"]
    assert [r["file"] for r in methods["default"]] == ["b.json"]
    assert "clip_avg" not in table["not_run"] and "scratch" in table["not_run"]
    assert "| 100% | default | b.json | 3 | 0.720 ± 0.000 |" in markdown(table, "image")


def test_tables_name_a_finer_grid_run_apart(tmp_path):
    from quality import METHODS
    from quality_tables import gather

    recipe = {"default": list(METHODS["default"])}
    (tmp_path / "a.json").write_text(json.dumps(_report(recipe, {"default": _row(0.72)})))
    (tmp_path / "b.json").write_text(json.dumps(_report(recipe, {"default": _row(0.75)},
                                                        imaging={"spatial_size": [48] * 3, "spacing": [4.6667] * 3})))
    methods = gather([tmp_path / "a.json", tmp_path / "b.json"])["by_budget"]["100%"]["methods"]
    assert [r["file"] for r in methods["default"]] == ["a.json"]
    assert [r["file"] for r in methods["default at 48³"]] == ["b.json"]


def test_tables_refuse_baselines_that_differ_on_the_same_seeds(tmp_path):
    from quality_tables import gather

    a = _report({}, {"logistic_regression": _row(0.67)})
    b = _report({}, {"logistic_regression": _row(0.70)})
    fewer = _report({}, {"logistic_regression": _row(0.70, n=1)}, seeds=(1,))  # other seeds: may differ
    for name, report in (("a", a), ("b", b), ("fewer", fewer)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    assert gather([tmp_path / "a.json", tmp_path / "fewer.json"])["by_budget"]["100%"]["reference"][
        "logistic_regression"]["file"] == "a.json"  # the file with the most seeds
    with pytest.raises(ValueError, match="not the same cohort and split"):
        gather([tmp_path / "a.json", tmp_path / "b.json"])


def test_oracle_decomposition_splits_as_the_benchmark_and_adds_each_quantity(tmp_path):
    from oracle_decomposition import decompose
    from quality import PROFILES, prepare_cohort

    profile = replace(PROFILES["quick"], n=120, grid=16)
    data = prepare_cohort(tmp_path, profile, seed=5, risk_profile="image")
    result = decompose(data["cohort"], split_seed=5)
    assert result["test_ids"] == sorted(data["test_ids"])  # the same fixed test cohort as quality.py
    names = result["quantities"]
    assert len(result["auroc"]) == 2 ** len(names) and "table only" in result["auroc"]
    with pytest.raises(SystemExit, match="synthesised at grid 16, not 24"):  # --grid never reuses another grid's cohort
        prepare_cohort(tmp_path, replace(profile, grid=24), seed=5, risk_profile="image")


def test_tables_compare_a_stopped_benchmark_on_the_seeds_it_finished(tmp_path):
    from quality_tables import gather

    full = _report({}, {"logistic_regression": _row(0.6717)})
    stopped = _report({}, {"logistic_regression": _row(0.6716, n=2)})  # seeds 0 and 1 of (0, 1, 2) done
    stopped_wrong = _report({}, {"logistic_regression": _row(0.6716, n=3)})  # all three: must agree, does not
    for name, report in (("full", full), ("stopped", stopped), ("wrong", stopped_wrong)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    assert gather([tmp_path / "full.json", tmp_path / "stopped.json"])["by_budget"]["100%"]["reference"][
        "logistic_regression"]["file"] == "full.json"
    with pytest.raises(ValueError, match="not the same cohort and split"):
        gather([tmp_path / "full.json", tmp_path / "wrong.json"])
