"""Which generator factors a frozen image encoder's embedding holds, beyond what the clinical table predicts.

    python benchmarks/factor_probe.py RUN_CONFIG COHORT_DIR [--init PRETRAIN_RUN_DIR] [--out OUT.json]
        [--seed 0] [--label NAME] [--set KEY=VALUE ...] [--columns age nihss ...]

Every subject of ``COHORT_DIR`` (labeled or not) is embedded once, in ``eval()`` mode and without
augmentation, by the image encoder of a finished pretraining run (``--init``) or, without it, by a
random one built from ``RUN_CONFIG`` (``--seed``): the "random features" reference. A linear probe
then measures what the embedding holds of each generator factor: cross-validated R² (ridge) for
the continuous latents of ``COHORT_DIR/risk.csv`` (``strokessl synth``) and clinical columns,
cross-validated AUROC (logistic) for binary ones (sex, atrial fibrillation, the drawn label).
Compared across pretraining objectives and with random features, it shows which factors (infarct
or WMH volume, atrophy, head size, ...) each objective makes linearly readable. Writes ``{"encoder",
"n", "embedding_dim", "r2", "auroc", ...}`` to ``--out`` (default ``benchmarks/results/
factor_probe_<label>.json``) and logs a table. ``probe_factors`` is the pure part: import it as
``factor_probe`` with ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from multimodal.linear_probes import (  # the one implementation (also strokessl explain)
    probe_factors,
    probe_partial_r2,
    table_design,
)

# torch, MONAI and the project load lazily (~5 s on 2 busy cores): ``probe_factors`` needs none.
if TYPE_CHECKING:
    import torch

    from multimodal.cohort import Cohort
    from multimodal.config import CohortConfig, RunConfig

logger = logging.getLogger("factor_probe")

RESULTS = Path(__file__).parent / "results"
# risk.csv columns probed (absent ones are skipped with a log line); drawn_label is binary (AUROC).
RISK_COLUMNS = ["infarct_volume_ml", "wmh_volume_ml", "atrophy", "atrophy_excess", "head_scale",
                "image_component", "tabular_component", "logit", "drawn_label"]
TRANSFORMS = {"infarct_volume_ml": ("log1p_infarct_volume_ml", np.log1p), "wmh_volume_ml": ("log_wmh_volume_ml", np.log)}
DEFAULT_COLUMNS = ["age", "nihss", "systolic_bp", "bmi", "sex", "atrial_fibrillation"]


# --------------------------------------------------------------------------- embedding
def build_encoder(run_config: RunConfig, cohort: Cohort, init: Path | None,
                  seed: int) -> tuple[torch.nn.Module, list[str]]:
    """``(image encoder, sequences)``: the pretraining run's image encoder, or a random one."""
    import torch

    from finetune.init import build_finetune_encoders, load_pretraining_run, reconcile_sequences
    from multimodal.data import resolve_sequences
    from multimodal.encoders import build_encoder
    from multimodal.errors import StrokeSSLError

    if init is None:
        sequences = resolve_sequences(run_config, cohort)
        torch.manual_seed(seed)
        return build_encoder(run_config.model, "image", in_channels=len(sequences)), sequences
    run = load_pretraining_run(init)
    if run.image_weights is None:
        raise StrokeSSLError(f"pretraining run {init} trained no image encoder: nothing to probe")
    sequences = reconcile_sequences(run.sequences, cohort.sequences, cohort.config.missing_images)
    ours, theirs = run_config.imaging, run.config.imaging
    if (tuple(ours.spacing), tuple(ours.spatial_size)) != (tuple(theirs.spacing), tuple(theirs.spatial_size)):
        logger.warning("imaging grid %s at %s mm differs from pretraining run %s (%s at %s mm)",
                       ours.spatial_size, ours.spacing, init, theirs.spatial_size, theirs.spacing)
    image = build_finetune_encoders(run, None, {"image": {"in_channels": len(sequences)}})["image"]
    return image, sequences


def embed(encoder: torch.nn.Module, loader: torch.utils.data.DataLoader,
          device: torch.device) -> tuple[list[str], np.ndarray]:
    """Subject ids and their embeddings ``(N, D)`` from batches of ``image (B, C, H, W, D)``."""
    import torch

    encoder.eval().to(device)
    ids, chunks = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="embedding", unit="batch"):
            chunks.append(encoder(batch["image"].to(device)).float().cpu())  # (B, D)
            ids.extend(batch["subject_id"])
    return ids, torch.cat(chunks).numpy()


def _present(wanted: list[str], have: pd.Index, where: str) -> list[str]:
    """``wanted`` columns that ``have`` holds; the others are logged as skipped."""
    if absent := [c for c in wanted if c not in have]:
        logger.info("%s has no column(s) %s: skipped", where, absent)
    return [c for c in wanted if c in have]


def load_targets(cohort_dir: Path, cohort_config: CohortConfig, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """Targets for ``ids`` (rows in that order): transformed risk.csv factors + cohort columns."""
    frames, risk_path = [], cohort_dir / "risk.csv"
    if risk_path.is_file():
        risk = pd.read_csv(risk_path, dtype={"subject_id": str}).set_index("subject_id")
        chosen = {}
        for column in _present(RISK_COLUMNS, risk.columns, "risk.csv"):
            name, transform = TRANSFORMS.get(column, (column, None))
            chosen[name] = transform(risk[column]) if transform is not None else risk[column]
        frames.append(pd.DataFrame(chosen).reindex(ids))
    else:
        logger.warning("%s not found: probing the cohort columns only", risk_path)
    table = pd.read_csv(cohort_config.csv, dtype={cohort_config.id: str},
                        na_values=cohort_config.na_values or None).set_index(cohort_config.id)
    frames.append(table[_present(columns, table.columns, "the cohort table")].reindex(ids))
    return pd.concat(frames, axis=1)


def partial_r2(cohort_dir: Path, cohort: Cohort, ids: list[str], embedding: np.ndarray,
               seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per true image quantity (``truth.json``'s ``image_quantities``): the partial R² of the
    embedding beyond the clinical table, and the R² of the table alone. Empty without the truth."""
    truth_file, risk_file = cohort_dir / "truth.json", cohort_dir / "risk.csv"
    if not (truth_file.is_file() and risk_file.is_file()):
        return {}, {}
    names = json.loads(truth_file.read_text()).get("image_quantities", [])
    risk = pd.read_csv(risk_file, dtype={"subject_id": str}).set_index("subject_id").reindex(ids)
    design = table_design(cohort.features.loc[ids], cohort.continuous, cohort.categorical)
    partial, table = {}, {}
    for name in _present(names, risk.columns, "risk.csv"):
        scores = probe_partial_r2(embedding, risk[name].to_numpy(float), design, seed)
        partial[name], table[name] = scores["partial_r2"], scores["table_r2"]
    return partial, table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="run config YAML, e.g. configs/demo.yaml")
    parser.add_argument("cohort_dir", type=Path, help="folder with cohort.yaml (+ risk.csv from strokessl synth)")
    parser.add_argument("--init", type=Path, default=None, help="finished pretraining run folder (else random)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default results/factor_probe_<label>.json)")
    parser.add_argument("--seed", type=int, default=0, help="random-encoder seed and CV shuffling")
    parser.add_argument("--label", default=None, help="results name (default: the run folder's name or random)")
    parser.add_argument("--columns", nargs="*", default=DEFAULT_COLUMNS,
                        help=f"cohort.csv columns to probe (default: {' '.join(DEFAULT_COLUMNS)})")
    parser.add_argument("--batch-size", type=int, default=8)  # volumes per encoder forward
    parser.add_argument("--save-embedding", type=Path, default=None, metavar="NPZ",
                        help="also write the embedding (ids in cohort order + (N, D) array) to this .npz")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override, repeatable")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Embed the cohort, probe every target, write the JSON; returns what it wrote."""
    import torch
    from torch.utils.data import DataLoader

    from multimodal.cohort import load_cohort
    from multimodal.config import load_cohort_config, load_run_config
    from multimodal.data import volume_cache
    from multimodal.imaging import ImageDataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    run_config = load_run_config(args.config, [f"cohort={args.cohort_dir}/cohort.yaml", *args.overrides])
    cohort_config = load_cohort_config(run_config.cohort)
    cohort = load_cohort(cohort_config)
    encoder, sequences = build_encoder(run_config, cohort, args.init, args.seed)
    cache = volume_cache(run_config, cohort_config, sequences)
    records = cohort.records()  # every subject, labeled or not
    cache.warm(records, workers=run_config.data.workers)
    loader = DataLoader(ImageDataset(records, cache, None, seed=run_config.seed), batch_size=args.batch_size,
                        num_workers=run_config.data.workers)
    ids, embedding = embed(encoder, loader, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if args.save_embedding is not None:
        np.savez(args.save_embedding, ids=np.array(ids), embedding=embedding)
    targets = load_targets(args.cohort_dir, cohort_config, ids, args.columns)
    scores = probe_factors(embedding, targets, seed=args.seed)
    scores["partial_r2"], scores["table_r2"] = partial_r2(args.cohort_dir, cohort, ids, embedding, args.seed)
    label = args.label or (args.init.name if args.init is not None else "random")
    result = {"encoder": str(args.init) if args.init is not None else "random", "label": label,
              "n": len(ids), "embedding_dim": int(embedding.shape[1]), "seed": args.seed, **scores}
    out = args.out or RESULTS / f"factor_probe_{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = [f"{name:<26} {metric:<6} {value:7.3f} {scores['rows'][name]:5d}"
             for metric in ("r2", "auroc") for name, value in scores[metric].items()]
    logger.info("%s: %d subjects, embedding dim %d, wrote %s\n%-26s %-6s %7s %5s\n%s", result["encoder"], len(ids),
                embedding.shape[1], out, "target", "metric", "value", "n", "\n".join(table))
    return result


if __name__ == "__main__":
    main()
