"""The ``strokessl`` command line: the only module that sees every package.

A ``StrokeSSLError`` (bad input or config) is printed in one line and exits 2; anything else
is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from strokessl import __version__

logger = logging.getLogger("strokessl")


def _add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a run-config key, e.g. --set {example} (repeatable)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="strokessl",
        description="Self-supervised multimodal learning on stroke cohorts (MRI + clinical records).",
    )
    parser.add_argument("--version", action="version", version=f"strokessl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth", help="write a synthetic cohort (NIfTI + CSV + cohort.yaml) in the real format",
        description="Write a synthetic stroke cohort built on the MNI152 template into OUT.",
    )
    synth.add_argument("out", type=Path, help="output folder (new or empty)")
    synth.add_argument("--n", type=int, default=60, help="number of subjects (default 60)")
    synth.add_argument("--grid", type=int, default=48, help="voxels along the longest image axis (default 48)")
    synth.add_argument("--labeled-fraction", type=float, default=0.5, help="share of subjects with a label (default 0.5)")
    synth.add_argument("--sequences", default="flair,dwi", help="comma-separated: flair, dwi, t1 (default flair,dwi)")
    synth.add_argument("--prevalence", type=float, default=0.15, help="mean 12-month recurrence risk (default 0.15)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--profile", choices=["standard", "image"], default="standard",
                       help="risk model: standard (the record predicts much of what the image shows) or image "
                            "(WMH load, atrophy beyond age and infarct volume beyond NIHSS carry risk the record "
                            "barely predicts; a benchmark with room for the image to win)")
    synth.add_argument("--dicom", nargs="?", type=float, const=0.25, default=0.0, metavar="FRACTION",
                       help="write a share of the subjects (default 0.25) as DICOM series folders instead of NIfTI")
    synth.add_argument("--infarct-masks", action="store_true",
                       help="also write truth/<id>_infarct.nii.gz (ground truth for checking saliency maps)")

    validate = commands.add_parser(
        "validate", help="check a cohort (table + every image) and print a summary",
        description="Check a cohort up front and report all problems at once. CONFIG is a cohort.yaml "
        "or a run config naming one under 'cohort'. Exits 2 when the cohort has errors.",
    )
    validate.add_argument("config", type=Path, help="cohort.yaml or run config")
    _add_overrides(validate, "imaging.sequences=[flair]")
    validate.add_argument("--headers-only", action="store_true",
                          help="read NIfTI headers only (fast; misses truncated image data)")

    pretrain = commands.add_parser(
        "pretrain", help="contrastive image-tabular pretraining (CLIP + matching, or simclr / scarf)",
        description="Pretrain the MRI and clinical-record encoders as the run config says and write "
        "the run folder (run.dir). Under `torchrun --nproc_per_node N` it runs distributed.",
    )
    pretrain.add_argument("config", type=Path, help="run config (e.g. configs/demo.yaml)")
    _add_overrides(pretrain, "pretrain.epochs=5")
    pretrain.add_argument("--with-ids", action="store_true",
                          help="label the TensorBoard embedding projector with subject ids (off: labels only)")
    pretrain.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                          help="continue a stopped run (its folder, default run.dir); the config must match "
                          "except pretrain.epochs")

    finetune = commands.add_parser(
        "finetune", help="cross-validated fine-tuning for recurrence, with baselines and confidence intervals",
        description="Fine-tune on the labeled subjects with stratified K-fold cross-validation and write the "
        "run folder: metrics.json (bootstrap CIs, paired dAUROC vs baselines), predictions.csv, report/.",
    )
    finetune.add_argument("config", type=Path, help="run config (e.g. configs/demo.yaml)")
    finetune.add_argument("--init", type=Path, default=None, metavar="RUN",
                          help="pretraining run folder to take the encoders and preprocessor from")
    _add_overrides(finetune, "finetune.mode=frozen")
    finetune.add_argument("--repeats", type=int, default=None, metavar="N",
                          help="repeat the K-fold cross-validation N times with other splits (small cohorts); "
                          "same as --set finetune.repeats=N")
    finetune.add_argument("--resume", action="store_true", help="finish a stopped run, skipping completed folds")

    predict = commands.add_parser(
        "predict", help="recurrence probability and risk group for new subjects from a fine-tuning run",
        description="Average the run's fold models on a new cohort and apply the threshold chosen on pooled "
        "out-of-fold predictions. --cohort takes a cohort.yaml or a bare CSV in the training cohort's format.",
    )
    predict.add_argument("run", type=Path, help="finished fine-tuning run folder")
    predict.add_argument("--cohort", type=Path, required=True, help="cohort.yaml or CSV of the new subjects")
    # a str, not a Path: "new/" (a folder the user means) must keep its slash to be refused
    predict.add_argument("--out", required=True, help="CSV to write (subject_id, probability, risk_group)")
    predict.add_argument("--allow-missing-features", action="store_true",
                         help="score clinical features the cohort lacks as missing values instead of refusing")

    embed = commands.add_parser(
        "embed", help="write a cohort's embeddings (.npz) and a TensorBoard projector view",
        description="Embed every subject of COHORT with the encoders of RUN (a pretraining or fine-tuning run) and "
        "write OUT/embeddings.npz (rows in cohort order) and OUT/tb (TensorBoard projector, coloured by label).",
    )
    embed.add_argument("run", type=Path, help="pretraining or fine-tuning run folder")
    embed.add_argument("--cohort", type=Path, required=True, help="cohort.yaml (or, for a fine-tuning run, a CSV)")
    embed.add_argument("--out", type=Path, required=True, help="output folder")
    embed.add_argument("--color-by", nargs="*", default=[], metavar="COLUMN",
                       help="clinical columns to colour the projector by, beside the label")
    embed.add_argument("--with-ids", action="store_true", help="also write subject ids (patient identifiers)")
    embed.add_argument("--allow-missing-features", action="store_true",
                       help="fine-tuning run: score clinical columns absent from the cohort as missing values")

    explain = commands.add_parser(
        "explain", help="what the embedding space holds and what drives the model: report/explain.html",
        description="Analyse RUN on COHORT: embedding space (retrieval, alignment, probes, PCA / t-SNE), Integrated "
        "Gradients of the clinical features, occlusion and Grad-CAM saliency of the highest-risk subjects; writes "
        "RUN/report/explain.md, explain.html and explain.json.",
    )
    explain.add_argument("run", type=Path, help="pretraining or fine-tuning run folder")
    explain.add_argument("--cohort", type=Path, required=True, help="cohort.yaml (or, for a fine-tuning run, a CSV)")
    explain.add_argument("--seed", type=int, default=0, help="cross-validation splits of the probes, t-SNE, bootstrap")
    explain.add_argument("--subject", default=None, metavar="ID",
                         help="fine-tuning run: also write this subject's one-page PNG, its occlusion and Grad-CAM "
                         "maps as NIfTI on the input's grid, and a JSON to RUN/report/subjects/")
    explain.add_argument("--baseline", choices=["missing", "median"], default="median",
                         help="the lead Integrated Gradients baseline: every feature at its training median / most "
                         "frequent category (default, a typical patient) or every feature missing; the report shows "
                         "the other as a second view")
    explain.add_argument("--gallery", type=int, default=4, metavar="N",
                         help="saliency montages of the N highest-risk subjects in the report (0: none)")
    explain.add_argument("--with-ids", action="store_true",
                         help="add subject ids (patient identifiers) to report/explain_attributions.csv")
    explain.add_argument("--allow-missing-features", action="store_true",
                         help="fine-tuning run: score clinical columns absent from the cohort as missing values")
    return parser.parse_args(argv)


def setup_logging(verbose: bool) -> None:
    # Under torchrun only rank 0 reports progress; other ranks still say what went wrong.
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_synth(args: argparse.Namespace) -> int:
    from multimodal.errors import StrokeSSLError
    from multimodal.run_folder import check_output
    from multimodal.synthetic import write_synthetic_cohort

    check_output(args.out / "cohort.csv", option="synth OUT")  # not into a run folder
    if args.out.is_file():
        raise StrokeSSLError(f"synth OUT {args.out} is a file; give a new or empty folder")
    if (args.out / "cohort.csv").exists() or (args.out / "cohort.yaml").exists():
        raise StrokeSSLError(f"synth OUT {args.out} already holds a cohort (cohort.csv / cohort.yaml) that a new one "
                             "would replace; give a new or empty folder")
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    path = write_synthetic_cohort(
        args.out, n=args.n, grid=args.grid, labeled_fraction=args.labeled_fraction,
        seed=args.seed, sequences=sequences, prevalence=args.prevalence, profile=args.profile,
        dicom_fraction=args.dicom,
    )
    if args.infarct_masks:
        from multimodal.synthetic_masks import write_infarct_masks

        logger.info("wrote infarct masks in %s", write_infarct_masks(path.parent))
    logger.info("wrote %s", path)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from multimodal.config import is_run_config, load_cohort_config, load_run_config
    from multimodal.config_checks import missing_files
    from multimodal.errors import CohortError
    from multimodal.validate import format_report, validate_cohort

    sequences, folds, pretraining, horizon = None, None, None, None
    if is_run_config(args.config):
        run_config = load_run_config(args.config, args.overrides)
        cohort_config = load_cohort_config(run_config.cohort)
        sequences = run_config.imaging.sequences
        from finetune.config import finetune_config
        from multimodal.errors import ConfigError
        from pretrain.config import pretrain_config

        errors = missing_files(run_config)  # every section's mistakes in one go, not one per run of validate
        try:
            finetune_settings = finetune_config(run_config)
            folds, horizon = finetune_settings.folds, finetune_settings.outcome_horizon
        except ConfigError as error:
            errors.append(str(error))
        try:
            settings = pretrain_config(run_config)
            pretraining = (settings.rows, settings.val_fraction, settings.batch_size)
        except ConfigError as error:
            errors.append(str(error))
        if errors:
            raise ConfigError("; ".join(dict.fromkeys(errors)))
    else:
        if args.overrides:
            logger.warning("--set applies to run configs; %s is a cohort config", args.config)
        cohort_config = load_cohort_config(args.config)
    report = validate_cohort(cohort_config, read_images=not args.headers_only, sequences=sequences, folds=folds,
                             pretraining=pretraining, horizon=horizon)
    sys.stdout.write(format_report(report, cohort_config) + "\n")
    if not report.ok:
        raise CohortError(f"{len(report.errors)} error(s) in cohort {cohort_config.source}; see the list above")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from pretrain.run import run_pretrain as pretrain

    overrides = [*args.overrides, *(["pretrain.log_subject_ids=true"] if args.with_ids else [])]
    run_dir = pretrain(args.config, overrides, resume=args.resume)
    logger.info("run folder: %s", run_dir)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    import json

    from finetune.run import run_finetune as finetune
    from finetune.summary import format_metrics
    from finetune.survival_summary import format_survival_metrics
    from multimodal.run_folder import run_paths

    overrides = [*(args.overrides or []), *([f"finetune.repeats={args.repeats}"] if args.repeats is not None else [])]
    run_dir = finetune(args.config, overrides, init=args.init, resume=args.resume)
    metrics = json.loads(run_paths(run_dir).metrics.read_text())
    text = format_survival_metrics(metrics) if metrics.get("task") == "survival" else format_metrics(metrics)
    sys.stdout.write(f"\nMetrics with 95 % stratified bootstrap CIs:\n{text}\n")
    logger.info("run folder: %s", run_dir)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from finetune.predict import run_predict as predict

    predict(args.run, args.cohort, args.out, allow_missing_features=args.allow_missing_features)
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from finetune.explain.embed import embed_run, write_embeddings
    from multimodal.run_folder import check_output

    check_output(args.out / "embeddings.npz", [args.cohort])  # refused before the slow embedding
    write_embeddings(embed_run(args.run, args.cohort, allow_missing_features=args.allow_missing_features), args.out,
                     args.color_by, args.with_ids)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from finetune.explain.report import markdown, sections
    from finetune.explain.run import explain_run

    analysis = explain_run(args.run, args.cohort, seed=args.seed, subject=args.subject, baseline=args.baseline,
                           gallery=args.gallery, allow_missing_features=args.allow_missing_features,
                           with_ids=args.with_ids)
    sys.stdout.write(markdown(sections(analysis)) + "\n")
    return 0


COMMANDS = {"synth": run_synth, "validate": run_validate, "pretrain": run_pretrain, "finetune": run_finetune,
            "predict": run_predict, "embed": run_embed, "explain": run_explain}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from multimodal.errors import StrokeSSLError

    try:
        return COMMANDS[args.command](args)
    except StrokeSSLError as err:
        message = " ".join(str(err).split())
        sys.stderr.write(f"strokessl {args.command}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"strokessl {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
