"""What each true image quantity is worth: the oracle-feature LR refitted on subsets of them (JSON + Markdown).

    python benchmarks/oracle_decomposition.py runs/quality-image/cohort    # after quality.py wrote the cohort

The share of the oracle gain divides by what a linear model gains from *every* true image quantity. Where
a quantity is not rendered at the benchmark's grid (white-matter lesions a voxel thin at 7 mm), no encoder
can capture its part, and the share's ceiling is below 1. This refits the logistic-regression baseline on
the quality benchmark's labeled training pool plus each subset of the quantities and scores it on the
fixed test cohort (the same split as ``quality.py``), so the table says which part of the prize each
quantity holds. No images are read: seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from quality import budget_rows, split_pool_test  # noqa: E402  (benchmarks/ is on sys.path)

from finetune.baselines import baseline_frame, fit_predict_baseline  # noqa: E402
from finetune.oracle import with_truth  # noqa: E402
from multimodal.cohort import load_cohort  # noqa: E402
from multimodal.config import load_cohort_config  # noqa: E402

logger = logging.getLogger("oracle_decomposition")


def decompose(cohort_yaml: Path, split_seed: int, test_share: float = 0.5, budget: float = 1.0,
              seed: int = 0) -> dict[str, Any]:
    """Test AUROC of LR on the table plus every subset of the true image quantities, on the split of
    ``quality.prepare_cohort`` (``split_seed`` = its cohort seed); ``budget`` < 1 takes that stratified
    share of the pool with ``seed``, as ``quality.budget_cohort`` does."""
    config = load_cohort_config(cohort_yaml)
    cohort = load_cohort(config)
    folder = Path(config.csv).parent
    names = json.loads((folder / "truth.json").read_text())["image_quantities"]
    risk = pd.read_csv(folder / "risk.csv", dtype={"subject_id": str}).set_index("subject_id")
    pool_rows, test_rows = split_pool_test(Path(config.csv), test_share, split_seed)
    pool, test = list(budget_rows(pool_rows, budget, seed)["subject_id"]), list(test_rows["subject_id"])
    y_all = pd.Series(dict(zip(cohort.ids, cohort.labels, strict=True))).loc[pool + test].astype(int)
    frame = baseline_frame(cohort.features, cohort.continuous, cohort.categorical)
    rows = {}
    for size in range(len(names) + 1):
        for subset in itertools.combinations(names, size):
            train, held = frame.loc[pool], frame.loc[test]
            if subset:
                truth = risk.loc[:, list(subset)].astype(float)
                train, held = with_truth(train, truth), with_truth(held, truth)
            p = fit_predict_baseline("logistic_regression", train, y_all.loc[pool].to_numpy(), held, seed)
            rows[" + ".join(subset) or "table only"] = float(roc_auc_score(y_all.loc[test], p))
    base, full = rows["table only"], rows[" + ".join(names)]
    return {"cohort": str(cohort_yaml), "split_seed": split_seed, "budget": budget, "seed": seed,
            "train_n": len(pool), "test_n": len(test), "test_ids": sorted(test), "quantities": names, "auroc": rows,
            "share_of_the_full_gain": {k: (v - base) / (full - base) for k, v in rows.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Cohort `{result['cohort']}`, {result['train_n']} training / {result['test_n']} test subjects "
             f"(split seed {result['split_seed']}, budget {result['budget']:.0%}, seed {result['seed']}).", "",
             "| LR on the table + | test AUROC | gain over the table | share of the full oracle gain |",
             "| --- | --- | --- | --- |"]
    base = result["auroc"]["table only"]
    for name, auroc in result["auroc"].items():
        lines.append(f"| {name} | {auroc:.3f} | {auroc - base:+.3f} | {result['share_of_the_full_gain'][name]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohort_dir", type=Path, help="the cohort folder quality.py wrote (cohort.yaml, truth.json)")
    parser.add_argument("--cohort-seed", type=int, default=2, help="quality.py's --cohort-seed (its split)")
    parser.add_argument("--budgets", default="0.1,0.25,1.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "oracle_decomposition.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = [decompose(args.cohort_dir / "cohort.yaml", args.cohort_seed, budget=float(b), seed=int(s))
               for b in args.budgets.split(",") for s in (args.seeds.split(",") if float(b) < 1 else ["0"])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{k: v for k, v in r.items() if k != "test_ids"} for r in results], indent=2))
    args.out.with_suffix(".md").write_text("\n".join(markdown(r) for r in results))
    logger.info("wrote %s\n%s", args.out.with_suffix(".md"), args.out.with_suffix(".md").read_text())
    return {"results": results}


if __name__ == "__main__":
    main()
