#!/usr/bin/env bash
# Runs every stage of one experiment in order, from nothing, skipping the
# finished ones.
#
#   tools/run_experiment.sh TASK DATA_DIR WORK_DIR [EXPERIMENTS]
#
# TASK: e.g. iwslt14_de_en; EXPERIMENTS: the folder of its gin files,
# gin/experiments/paper (default: the paper's settings) or gin/experiments
# (the CPU-scale replication). Stages: fetch (tools/get_data/fetch.py, when
# DATA_DIR is missing or empty or was written by it), prepare, teacher, dump,
# baseline, distill, evaluate (baseline and student) and export. A distill
# gin file with the line `# run_experiment.sh: start_from = baseline` (WMT14)
# starts from the baseline's newest checkpoint. A stage that finished leaves
# WORK_DIR/.stages/<stage>.done; an interrupted stage is simply run again and
# resumes from its own checkpoints or shards. Extra gin bindings: every stage
# that takes them (BERTKD_BINDINGS="X=1 a.b.c=2": a macro goes to the stages
# whose gin files use it, a configurable's binding to those importing its
# module; one no stage takes is refused), or one stage (unfiltered):
# BERTKD_{PREPARE,TEACHER,DUMP,BASELINE,DISTILL,EVALUATE,EXPORT}_BINDINGS.
# BERTKD_FETCH=0 skips the fetch; BERTKD_DATA_MIRROR names a local mirror.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,20p' "$0"; exit 2
fi
task=$1 data_dir=$2 work_dir=$3 experiments=${4:-gin/experiments/paper}
root=$(cd "$(dirname "$0")/.." && pwd)
bertkd=${BERTKD:-$root/.venv/bin/bertkd}
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
cd "$root"
gin_files=()
for stage in prepare teacher dump baseline distill evaluate; do
  if [ ! -f "$experiments/${task}_${stage}.gin" ]; then
    echo "run_experiment: missing $experiments/${task}_${stage}.gin" >&2; exit 2
  fi
  gin_files+=("$experiments/${task}_${stage}.gin")
done
gin_files+=(gin/runs/export.gin)
read -r -a user_bindings <<< "${BERTKD_BINDINGS:-}"
if [ ${#user_bindings[@]} -gt 0 ]; then
  unused=$("$python" tools/gin_stage.py unused "${gin_files[@]}" -- "${user_bindings[@]}")
  if [ -n "$unused" ]; then
    echo "run_experiment: BERTKD_BINDINGS: no stage takes" $unused "(no" \
      "gin file of $task sets or reads that macro, or imports that" \
      "configurable's module): check the spelling against gin/runs/*.gin," \
      "or pass it to one stage with BERTKD_<STAGE>_BINDINGS." >&2
    exit 2
  fi
fi
mkdir -p "$work_dir/.stages"

fetch_data() {  # Downloads and prepares the task's corpus if it is missing.
  if [ "${BERTKD_FETCH:-1}" = 0 ] || [ -f "$work_dir/.stages/fetch.done" ]; then
    return
  fi
  local corpus
  corpus=$("$python" tools/gin_stage.py task "$experiments/${task}_prepare.gin")
  if [ -d "$data_dir" ] && [ -n "$(ls -A "$data_dir")" ] \
      && [ ! -f "$data_dir/prepared.json" ] && [ ! -d "$data_dir/downloads" ]; then
    echo "run_experiment: using the corpus in $data_dir as it is"
  elif [ -n "$corpus" ] && "$python" tools/get_data/fetch.py --list | grep -x "$corpus" > /dev/null; then
    echo "run_experiment: fetch ($corpus into $data_dir)"
    "$python" tools/get_data/fetch.py "$corpus" "$data_dir"
  else
    echo "run_experiment: $data_dir holds no corpus and tools/get_data has" \
      "no recipe for task '${corpus:-?}': put its <split>.<lang> files there" >&2
    exit 2
  fi
  echo "fetched" > "$work_dir/.stages/fetch.done"
}

start_from() {  # name gin_file: copies WORK_DIR/<from>/ newest checkpoint.
  local name=$1 gin_file=$2 from model_dir newest
  from=$("$python" tools/gin_stage.py start_from "$gin_file")
  [ -n "$from" ] || return 0
  model_dir=$work_dir/student
  if [ -f "$work_dir/.stages/$name.done" ] || [ -d "$model_dir/checkpoints" ]; then
    return 0
  fi
  newest=$(ls "$work_dir/$from/checkpoints" 2>/dev/null | sed -n 's/^\(ckpt-[0-9]*\)\.index$/\1/p' | sort -t- -k2 -n | tail -1)
  if [ -z "$newest" ]; then
    echo "run_experiment: $gin_file starts from $work_dir/$from, which has" \
      "no checkpoint: run its stage first" >&2
    exit 2
  fi
  echo "run_experiment: $name starts from $work_dir/$from/checkpoints/$newest"
  local temporary=$model_dir/checkpoints.tmp-$$
  rm -rf "$temporary"; mkdir -p "$temporary"
  cp "$work_dir/$from/checkpoints/$newest".* "$temporary/"
  mv "$temporary" "$model_dir/checkpoints"
}

run_stage() {  # name group mode gin_file [bindings for this stage...]
  local name=$1 group=$2 mode=$3 gin_file=$4; shift 4
  if [ -f "$work_dir/.stages/$name.done" ]; then
    echo "run_experiment: $name already done"; return
  fi
  echo "run_experiment: $name ($mode, $gin_file)"
  local start=$SECONDS stage_var="BERTKD_${group^^}_BINDINGS" b taken_text
  local -a taken=() stage_bindings=()
  read -r -a stage_bindings <<< "${!stage_var:-}"
  taken_text=$("$python" tools/gin_stage.py take "$gin_file" -- \
    "DATA_DIR='$data_dir'" "WORK_DIR='$work_dir'" ${user_bindings[@]+"${user_bindings[@]}"})
  if [ -n "$taken_text" ]; then mapfile -t taken <<< "$taken_text"; fi
  local bindings=()
  for b in ${taken[@]+"${taken[@]}"} "$@" ${stage_bindings[@]+"${stage_bindings[@]}"}; do
    bindings+=(--gin_bindings="$b")
  done
  "$bertkd" --mode="$mode" --gin_file="$gin_file" ${bindings[@]+"${bindings[@]}"}
  echo "$((SECONDS - start)) s" > "$work_dir/.stages/$name.done"
}

fetch_data
run_stage prepare prepare prepare "$experiments/${task}_prepare.gin"
run_stage teacher teacher train_teacher "$experiments/${task}_teacher.gin"
run_stage dump dump dump_teacher "$experiments/${task}_dump.gin"
run_stage baseline baseline distill "$experiments/${task}_baseline.gin"
start_from distill "$experiments/${task}_distill.gin"
run_stage distill distill distill "$experiments/${task}_distill.gin"
run_stage evaluate_baseline evaluate evaluate "$experiments/${task}_evaluate.gin" "evaluate.run.model_dir='baseline'"
run_stage evaluate_student evaluate evaluate "$experiments/${task}_evaluate.gin" "evaluate.run.model_dir='student'"
run_stage export export export gin/runs/export.gin
echo "run_experiment: all stages of $task done in $work_dir"
