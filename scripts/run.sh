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
# napari's default Qt backend (PyQt6) when installed, even if an older PyQt5 is still there
if [ -z "${QT_API:-}" ] && python -c "import PyQt6.QtCore" 2>/dev/null; then export QT_API=pyqt6; fi
if [[ " $* " == *" --headless "* ]]; then
  if [[ " $* " != *" -o "* ]] && [[ " $* " != *" --output "* ]]; then
    set -- "$@" --output out/demo --overwrite
  fi
  # Until trained weights ship (see weights/README.md), run the pipeline with a randomly
  # initialised model, loudly labelled as such in the report, rather than stopping.
  if [[ " $* " != *" --model "* ]] && ! python -c "from napari_rrim_sr.registry.core import get_registry as g; raise SystemExit(0 if g().weights() else 1)"; then
    echo "[run] no trained weights installed: running the demo with --allow-untrained (results are NOT model quality)" >&2
    set -- "$@" --allow-untrained
  fi
fi
exec python -m napari_rrim_sr demo "$@"
