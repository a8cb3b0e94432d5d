#!/bin/bash
# Re-create every committed leaderboard entry with the committed configs (run from the repository root):
#   bash leaderboard/reproduce.sh && .venv/bin/python -m thermobench.leaderboard render && .venv/bin/python -m thermobench.analysis
# Entries are tied to the embedded dataset's test rows; when thermobench-mini changes, re-run this.
set -u
export THERMOBENCH_MODELS=${THERMOBENCH_MODELS:-../shared/models}
for task in ${TASKS:-anharmonicity freq_shift}; do
  for model in ${MODELS:-mean harmonic descriptor cgcnn schnet m3gnet}; do
    echo "=== $task $model"
    .venv/bin/python train.py model=$model task=$task hydra.run.dir=logs/train/$model-$task/final || continue
    .venv/bin/python evaluate.py ckpt_path=logs/train/$model-$task/final leaderboard_dir=leaderboard overwrite=true hydra.run.dir=logs/evaluate/$model-$task
  done
done
