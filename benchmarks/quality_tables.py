"""One table per synth risk profile from the quality benchmark's separate invocations (JSON + Markdown).

    python benchmarks/quality_tables.py            # benchmarks/results/quality_full_{standard,image}.{json,md}

The full benchmark (every method, 3 budgets x 3 seeds, both profiles) is many CPU hours, so it ran as
several ``quality.py`` invocations on the same reporting cohort (one synth seed; the cohort written
afresh gives the same subjects), some with a pretraining of their own. This gathers their rows: one row
per method and pretraining run, named by its recipe as ``quality.METHODS`` names it today (an older
file's "default" was another recipe), beside the baselines and the oracle-feature LR, which must agree
between files that fitted them on the same subjects and seeds. Methods of ``quality.METHODS`` that no
file holds are listed as not run, so a gap in the table is visible, not silent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from quality import BASELINES, METHODS, TEXT  # noqa: E402

from finetune.oracle import MIN_ORACLE_GAIN, ORACLE  # noqa: E402

REFERENCE_ROWS = tuple(name + suffix for suffix in ("", TEXT) for name in (*BASELINES, ORACLE))
BUDGET_ORDER = ("10%", "25%", "50%", "100%")


def recipe_name(name: str, recipe: list[Any] | tuple[Any, Any]) -> str:
    """The name ``quality.METHODS`` gives this (pretraining, fine-tuning overrides) today, else the
    old name with its recipe spelled out."""
    pretraining, overrides = recipe
    for method, (p, o) in METHODS.items():
        if p == pretraining and o == overrides:
            return method
    return f"{name} (then: {pretraining} + {json.dumps(overrides, sort_keys=True)})"


def gather(files: list[Path], tolerance: float = 1e-6) -> dict[str, Any]:
    """Rows of every file, per budget: ``methods`` (name -> list of runs) and ``reference`` (the
    baselines / oracle of the file with the most seeds). Raises ValueError where two files' baselines
    on the same seeds differ (not the same cohort or split)."""
    budgets: dict[str, dict[str, Any]] = {}
    for path in files:
        report = json.loads(path.read_text())
        recipes = report["info"]["methods"]
        planned = tuple(report["info"]["settings"]["seeds"])
        for budget, rows in report["by_budget"].items():
            slot = budgets.setdefault(budget, {"methods": {}, "reference": {}})
            for method, row in rows.items():
                if method in REFERENCE_ROWS:
                    # a stopped benchmark finished the first n of its seeds at this budget (seeds run in order)
                    seeds = planned[:row["auroc"]["n"]]
                    held = slot["reference"].get(method)
                    same_seeds = held is not None and held["seeds"] == seeds
                    if same_seeds and abs(held["row"]["auroc"]["mean"] - row["auroc"]["mean"]) > tolerance:
                        raise ValueError(f"{path.name}: {method} at {budget} scores "
                                         f"{row['auroc']['mean']:.4f}, {held['file']} "
                                         f"{held['row']['auroc']['mean']:.4f} on the same seeds: "
                                         "not the same cohort and split")
                    if held is None or row["auroc"]["n"] > held["row"]["auroc"]["n"]:
                        slot["reference"][method] = {"row": row, "file": path.name, "seeds": seeds}
                elif method in recipes:
                    name = recipe_name(method, recipes[method])
                    if grid := report["info"]["settings"].get("imaging", {}).get("spatial_size"):  # --grid
                        name += f" at {grid[0]}³"
                    slot["methods"].setdefault(name, []).append({"row": row, "file": path.name})
    order = sorted(budgets, key=lambda b: BUDGET_ORDER.index(b) if b in BUDGET_ORDER else len(BUDGET_ORDER))
    seen = {m for b in budgets.values() for m in b["methods"]}
    return {"by_budget": {b: budgets[b] for b in order}, "not_run": [m for m in METHODS if m not in seen],
            "files": [p.name for p in files]}


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):+.3f}" if values else ""


def markdown(table: dict[str, Any], profile: str) -> str:
    lines = [f"Risk profile {profile}: {len(table['files'])} result files of `quality.py` on the reporting "
             "cohort (" + ", ".join(f"`{f}`" for f in table["files"]) + "). One row per method and "
             "pretraining run; the file says which run.", "",
             "| budget | method | file | seeds | test AUROC | AUPRC | ΔAUROC vs LR (mean over seeds) | "
             "seeds with ΔAUROC CI > 0 | share of the oracle gain (mean over seeds; blank under an oracle gain of "
             f"{MIN_ORACLE_GAIN}) |",
             "|" + " --- |" * 9]
    for budget, slot in table["by_budget"].items():
        for name, ref in slot["reference"].items():
            label = {ORACLE: "oracle-feature LR", ORACLE + TEXT: "oracle-feature LR + text"}.get(name, name)
            row = ref["row"]
            auprc = f"{row['auprc']['mean']:.3f}" if "auprc" in row else ""
            lines.append(f"| {budget} | *{label}* | {ref['file']} | {row['auroc']['n']} | "
                         f"{row['auroc']['mean']:.3f} ± {row['auroc']['sd']:.3f} | {auprc} | | | |")
        for name, runs in sorted(slot["methods"].items(), key=lambda kv: -max(r["row"]["auroc"]["mean"]
                                                                           for r in kv[1])):
            for run in runs:
                row = run["row"]
                deltas = row.get("delta_auroc", {}).get("logistic_regression", [])
                # under MIN_ORACLE_GAIN the share is noise over a near-zero prize (quality.py prints n/a)
                shares = [s["share"] for s in row.get("share_of_oracle_gain", [])
                          if s["share"] is not None and s["oracle_gain"] >= MIN_ORACLE_GAIN]
                above = sum(d["lower"] > 0 for d in deltas)
                lines.append(f"| {budget} | {name} | {run['file']} | {row['auroc']['n']} | "
                             f"{row['auroc']['mean']:.3f} ± {row['auroc']['sd']:.3f} | "
                             f"{row['auprc']['mean']:.3f} | {_mean([d['delta'] for d in deltas])} | "
                             f"{above} of {len(deltas)} | {_mean(shares).lstrip('+')} |")
    lines += ["", "Not run on this profile: " + (", ".join(table["not_run"]) or "none") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--cohort-seed", type=int, default=2)
    args = parser.parse_args(argv)
    by_profile: dict[str, list[Path]] = {}
    for path in sorted(args.results.glob("quality*.json")):
        if path.name.startswith("quality_full"):
            continue
        info = json.loads(path.read_text())["info"]
        if info["profile"] == "full" and info["cohort_seed"] == args.cohort_seed:
            by_profile.setdefault(info.get("risk_profile", "standard"), []).append(path)
    tables = {}
    for profile, files in by_profile.items():
        tables[profile] = gather(files)
        out = args.results / f"quality_full_{profile}.json"
        out.write_text(json.dumps(tables[profile], indent=2))
        out.with_suffix(".md").write_text(markdown(tables[profile], profile))
    return tables


if __name__ == "__main__":
    main()
