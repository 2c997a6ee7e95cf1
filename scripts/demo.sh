#!/usr/bin/env bash
# Set up (if needed), synthesise a small cohort and validate it. Later stages extend this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
COHORT=demo/cohort
if [ ! -f "$COHORT/cohort.yaml" ]; then
    strokessl synth "$COHORT" --n 300 --grid 32 --labeled-fraction 0.5 --seed 0
fi
strokessl validate configs/demo.yaml
