#!/usr/bin/env bash
# Set up .venv, install what Atelier needs, then start webui.py with the given flags.
#   ./webui.sh [flags]        e.g. ./webui.sh --listen --api
#   TORCH_COMMAND="pip install torch==..." ./webui.sh   to choose the torch build yourself
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${VENV_DIR:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_COMMAND:-}" ]; then
        "$VENV/bin/python" -m $TORCH_COMMAND
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        "${PIP[@]}" install torch  # PyPI's default Linux build is the CUDA one
    elif [ "$(uname -s)" = "Darwin" ]; then
        "${PIP[@]}" install torch  # includes MPS
    else
        # No GPU: the pinned release (a CPU build where the machine offers one locally; otherwise
        # set TORCH_COMMAND to your CPU wheel source to avoid the large CUDA build).
        "${PIP[@]}" install torch==2.13.0
    fi
fi

REQS="${REQS_FILE:-requirements.txt}"
STAMP="$VENV/.installed-$(basename "$REQS")"
if [ ! -f "$STAMP" ] || [ "$REQS" -nt "$STAMP" ] || [ requirements.txt -nt "$STAMP" ] \
        || [ requirements-nodeps.txt -nt "$STAMP" ] || [ requirements-ray.txt -nt "$STAMP" ]; then
    "${PIP[@]}" install -r "$REQS"
    # spandrel (upscaler models) declares torchvision, and pip would swap our torch build to satisfy it: install
    # it alone, its other needs are in requirements.txt; modules/torchvision_standin.py covers torchvision.
    "${PIP[@]}" install --no-deps -r requirements-nodeps.txt
    touch "$STAMP"
fi

exec "$VENV/bin/python" webui.py "$@"
