#!/usr/bin/env bash
# Runs every stage of one experiment in order, skipping the finished ones.
#
#   tools/run_experiment.sh TASK DATA_DIR WORK_DIR [EXPERIMENTS]
#
# TASK: e.g. iwslt14_de_en; EXPERIMENTS: the folder of its gin files,
# gin/experiments/paper (default: the paper's settings) or gin/experiments
# (the CPU-scale replication). Stages: prepare, teacher, dump, baseline,
# distill, evaluate (baseline and student) and export. A stage that finished
# leaves WORK_DIR/.stages/<stage>.done; an interrupted stage is simply run
# again and resumes from its own checkpoints or shards. Extra gin bindings for
# every stage: BERTKD_BINDINGS="X=1 Y=2".
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0"; exit 2
fi
task=$1 data_dir=$2 work_dir=$3 experiments=${4:-gin/experiments/paper}
root=$(cd "$(dirname "$0")/.." && pwd)
bertkd=${BERTKD:-$root/.venv/bin/bertkd}
cd "$root"
for stage in prepare teacher dump baseline distill evaluate; do
  if [ ! -f "$experiments/${task}_${stage}.gin" ]; then
    echo "run_experiment: missing $experiments/${task}_${stage}.gin" >&2; exit 2
  fi
done
mkdir -p "$work_dir/.stages"

run_stage() {  # name mode gin_file [extra bindings...]
  local name=$1 mode=$2 gin_file=$3; shift 3
  if [ -f "$work_dir/.stages/$name.done" ]; then
    echo "run_experiment: $name already done"; return
  fi
  echo "run_experiment: $name ($mode, $gin_file)"
  local start=$SECONDS
  local bindings=(--gin_bindings="DATA_DIR='$data_dir'" --gin_bindings="WORK_DIR='$work_dir'")
  for b in "$@" ${BERTKD_BINDINGS:-}; do bindings+=(--gin_bindings="$b"); done
  "$bertkd" --mode="$mode" --gin_file="$gin_file" "${bindings[@]}"
  echo "$((SECONDS - start)) s" > "$work_dir/.stages/$name.done"
}

run_stage prepare prepare "$experiments/${task}_prepare.gin"
run_stage teacher train_teacher "$experiments/${task}_teacher.gin"
run_stage dump dump_teacher "$experiments/${task}_dump.gin"
run_stage baseline distill "$experiments/${task}_baseline.gin"
run_stage distill distill "$experiments/${task}_distill.gin"
run_stage evaluate_baseline evaluate "$experiments/${task}_evaluate.gin" "evaluate.run.model_dir='baseline'"
run_stage evaluate_student evaluate "$experiments/${task}_evaluate.gin" "evaluate.run.model_dir='student'"
run_stage export export gin/runs/export.gin
echo "run_experiment: all stages of $task done in $work_dir"
