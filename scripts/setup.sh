#!/usr/bin/env bash
# Create .venv (if needed) and install strokessl with its dev extra into it (if pyproject changed).
# Sourced by demo.sh and test.sh; afterwards .venv/bin is first on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STROKESSL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.strokessl-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing strokessl and its dependencies into $VENV (a few minutes the first time)" >&2
    # This machine's pip config lists local mirrors that may be absent; hide only those warnings.
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
    "$VENV/bin/python" -c "import strokessl, multimodal, pretrain, finetune, torch, monai, timm" \
        || { echo "installation failed; see the pip output above" >&2; exit 1; }
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
