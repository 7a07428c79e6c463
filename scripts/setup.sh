#!/usr/bin/env bash
# Shared set-up for scripts/run.sh and scripts/test.sh: a local virtual environment in .venv
# with torch installed FIRST (torch==2.13.0 is a local CPU wheel here; an unpinned torch would
# pull several GB of CUDA packages), then this package with the requested extras.
# Idempotent: re-installs only when pyproject.toml changed.
set -euo pipefail
EXTRAS="${1:-napari}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RRIM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${RRIM_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.napari-rrim-sr-$EXTRAS.stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (first, so nothing pulls a CUDA build)"
    python -m pip install -q "$TORCH_SPEC"
  fi
  echo "[setup] installing napari-rrim-sr[$EXTRAS] (editable)"
  python -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither" || true
  python -c "import napari_rrim_sr" # fail loudly if the install did not work
  echo "$want" > "$stamp"
fi
