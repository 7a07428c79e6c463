#!/usr/bin/env bash
# Fill .gpu-carry/ (git-ignored) with what the GPU run needs beside the working tree:
#   .gpu-carry/train.tar         ../shared/data/train only, lossless (JPEG bytes as they are, others WebP lossless)
#   .gpu-carry/kodak24-val.tar   ../shared/data/val/Kodak24, for validation only
#   .gpu-carry/wheels/*.whl      pure-python wheels of modules the GPU machine lacks (platformdirs)
# within the device tool's 64 MiB for tree + carry. Run here (with network for the wheels), once:
#   training/gpu/pack.sh          (PYTHON picks the interpreter)
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
mkdir -p .gpu-carry/wheels
if ! ls .gpu-carry/wheels/platformdirs-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .gpu-carry/wheels platformdirs==4.3.6
fi
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" -m napari_rrim_sr.training.gpu_pack --repo . --data ../shared/data "$@"
