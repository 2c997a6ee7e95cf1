#!/usr/bin/env bash
# Issue #4's done-when evaluation on 2 CPU cores: a 1,600-subject synthetic cohort (32^3, 320
# labeled), one multimodal pretraining run, every fine-tuning variant from the CLI (each run also
# fits both baselines on the same folds), then one table next to the generator's oracle AUROCs.
#
#   bash benchmarks/finetune_eval/run.sh [RUNS_DIR]      (default runs/eval1600; resumable)
#
# Writes benchmarks/results/finetune_eval.{json,md}. Every step resumes, so a killed run goes on.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVAL=benchmarks/finetune_eval
RUNS=${1:-runs/eval1600}
CONFIG=$EVAL/eval1600.yaml
strokessl() { python -m strokessl.cli "$@"; }

if [ ! -f "$EVAL/cohort/cohort.yaml" ]; then
    strokessl synth "$EVAL/cohort" --n 1600 --grid 32 --labeled-fraction 0.2
fi
strokessl pretrain "$CONFIG" --set "run.dir=$RUNS/pretrain" --resume

finetune() {  # NAME then --set overrides; resumes a stopped variant, skips a finished one
    local name=$1; shift
    [ -f "$RUNS/$name/metrics.json" ] && return 0
    local resume=()
    [ -f "$RUNS/$name/folds.json" ] && resume=(--resume)
    strokessl finetune "$CONFIG" "$@" --set "run.dir=$RUNS/$name" ${resume[@]+"${resume[@]}"}
}
finetune frozen --init "$RUNS/pretrain" --set finetune.mode=frozen
finetune frozen-platt --init "$RUNS/pretrain" --set finetune.mode=frozen --set finetune.recalibration=platt
finetune trainable --init "$RUNS/pretrain" --set finetune.mode=trainable
finetune scratch --set finetune.mode=scratch
finetune image-frozen --init "$RUNS/pretrain" --set finetune.mode=frozen --set finetune.branches=image
finetune image-trainable --init "$RUNS/pretrain" --set finetune.mode=trainable --set finetune.branches=image
finetune image-scratch --set finetune.mode=scratch --set finetune.branches=image
finetune table-frozen --init "$RUNS/pretrain" --set finetune.mode=frozen --set finetune.branches=table
finetune table-scratch --set finetune.mode=scratch --set finetune.branches=table
finetune table-scratch-mlp --set finetune.mode=scratch --set finetune.branches=table \
    --set model.tabular_encoder=tabular_mlp --set "model.tabular_encoder_args={}"

python "$EVAL/summarise.py" "$RUNS" "$EVAL/cohort/truth.json"
