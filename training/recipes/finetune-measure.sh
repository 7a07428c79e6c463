#!/bin/bash
# Fine-tune measurement of docs/models.md (issue 18): two lanes at a time, one thread each (the
# CPU was shared with other work). Table: python -m napari_rrim_sr.training finetune-report runs/measure/*.json
cd "$(dirname "$0")/../.." || exit 1  # the repository root
mkdir -p runs/measure
export PYTHONPATH=src OMP_NUM_THREADS=1 NAPARI_RRIM_SR_WEIGHTS_DIR=$PWD/runs/measure/weights
PY=${PYTHON:-python}
EM=../shared/data/microscopy/em_isbi2012/train
EMDATA=$(for i in $(seq 0 14); do echo $EM/$i.png; done)   # 15 of the 30 slices
FLUO=../shared/data/microscopy/bioimage_notebooks/cancer_cell_migration_crop.tif
ft() { # name minutes data...
  local name=$1 min=$2; shift 2
  $PY -m napari_rrim_sr.training finetune --data "$@" --init rrim-x4-gray --minutes $min --out runs/measure/$name \
    --name $name --threads 1 --compare rrim-x4-gray-real --heldout-crops 8 --heldout-side 256 \
    --json runs/measure/$name.json > runs/measure/$name.log 2>&1
}
( ft em-30min 30 $EMDATA; ft fluo-10min 10 $FLUO ) &
( ft fluo-30min 30 $FLUO; ft em-10min 10 $EMDATA ) &
wait
echo done > runs/measure/DONE
