#!/usr/bin/env bash
# The whole test suite, from a fresh machine: system packages for a virtual display (napari's
# canvas needs GL; QT_QPA_PLATFORM=offscreen alone fails on it), .venv with the test extras,
# then ruff (lint + format check), then pytest under xvfb-run. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
need_apt=0
command -v xvfb-run >/dev/null 2>&1 || need_apt=1
ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1 || need_apt=1
ls /usr/lib/*/libxkbcommon-x11.so.0 >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[test] installing xvfb and Mesa GL (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libdbus-1-3 >/dev/null
  else
    echo "[test] xvfb-run or Mesa GL missing and not root: GUI tests will be skipped" >&2
  fi
fi
bash "$ROOT/scripts/setup.sh" testing
# shellcheck disable=SC1091
. "${RRIM_VENV:-$ROOT/.venv}/bin/activate"
cd "$ROOT"
# napari's default Qt backend (PyQt6) when installed, even if an older PyQt5 is still there
if [ -z "${QT_API:-}" ] && python -c "import PyQt6.QtCore" 2>/dev/null; then export QT_API=pyqt6; fi
# lint and format first (configured in pyproject.toml): a style break fails CI like a test
echo "[test] ruff check + ruff format --check"
ruff check .
ruff format --check .
if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest "$@"
else
  exec python -m pytest -m "not gui" "$@"
fi
