#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ruff check .
# Two test processes of one thread each: 642 s for the suite on 2 cores against 845 s in one process of
# two threads (and 1386 s with two processes of two threads each, which contend). Whole files go to one
# process, so a module's fixture (a tiny pretraining) is built once.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest -q -n "${STROKESSL_TEST_WORKERS:-2}" --dist loadfile "$@"
