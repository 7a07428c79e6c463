#!/usr/bin/env bash
# The main job. Sets up .venv, then opens napari with a microscopy sample and the
# "Upscale (RRIM x4)" widget. With --headless (no display needed) it upscales the samples and
# writes results and a report to --out (default: out/demo).
#   bash scripts/run.sh              # GUI
#   bash scripts/run.sh --headless   # files + report in out/demo
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" napari
# shellcheck disable=SC1091
. "${RRIM_VENV:-$ROOT/.venv}/bin/activate"
cd "$ROOT"
if [[ " $* " == *" --headless "* ]] && [[ " $* " != *" -o "* ]] && [[ " $* " != *" --out "* ]]; then
  set -- "$@" --out out/demo
fi
exec python -m napari_rrim_sr demo "$@"
