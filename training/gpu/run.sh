#!/usr/bin/env bash
# The one command of a lent GPU machine (see training/README.md, "GPU run"):
#   training/gpu/run.sh [--dry-run] [--minutes M] [more gpu_run flags]
# from the repository root or anywhere; outputs go to $OUT (the device tool's output folder), else
# out/gpu-run. Checks the environment, installs what is missing from the wheels carried in
# .gpu-carry/wheels (no network, no index there), then runs napari_rrim_sr.training.gpu_run, whose
# console is also kept as $OUT/run.log. PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-out/gpu-run}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export NAPARI_RRIM_SR_PLUGINS=none              # no third-party plugins on a bare machine
# modules the run imports (our package itself comes from src/, no install needed)
missing=$("$PY" - <<'PYEOF'
import importlib.util
mods = {"numpy": "numpy", "torch": "torch", "PIL": "pillow", "scipy": "scipy", "skimage": "scikit-image",
        "safetensors": "safetensors", "pluggy": "pluggy", "tifffile": "tifffile", "platformdirs": "platformdirs",
        "tqdm": "tqdm", "matplotlib": "matplotlib", "pytest": "pytest"}
print(" ".join(dist for mod, dist in mods.items() if importlib.util.find_spec(mod) is None))
PYEOF
) || { echo "[env] $PY does not run" | tee "$OUT_DIR/run.log"; exit 2; }
{
  echo "[env] $("$PY" --version 2>&1) at $(command -v "$PY"); missing: ${missing:-none}"
  if [ -n "$missing" ]; then
    site=${TMPDIR:-/tmp}/rrim-site
    wheels=()
    for dist in $missing; do
      w=$(ls .gpu-carry/wheels/"${dist//-/_}"-*.whl .gpu-carry/wheels/"$dist"-*.whl 2>/dev/null | head -1)
      if [ -n "$w" ]; then wheels+=("$w"); else echo "[env] no carried wheel for $dist"; fi
    done
    if [ ${#wheels[@]} -gt 0 ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" \
        && echo "[env] installed from carried wheels: ${wheels[*]}"
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -m napari_rrim_sr.training.gpu_run --out "$OUT_DIR" "$@"
} 2>&1 | tee "$OUT_DIR/run.log"
exit "${PIPESTATUS[0]}"
