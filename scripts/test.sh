#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ruff check .
python -m pytest -q "$@"
