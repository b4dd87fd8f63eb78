#!/usr/bin/env bash
# The "prove the gain" experiment on Multi30k De-En (docs/RESULTS.md, issue 15):
# every stage in order, each skipped once finished, each resuming from its own
# checkpoints after a kill. Run it from a checkout pinned to a commit (a
# `git worktree add`), at low priority, in one fixed work directory:
#
#   nohup nice -n 10 tools/multi30k_gain.sh DATA_DIR WORK_DIR > WORK_DIR/driver.log 2>&1 &
#
# A second lane may run beside it: `tools/multi30k_gain.sh DATA_DIR WORK_DIR
# second` trains the baselines of seeds 1 and 2 (they do not depend on the
# distillation settings chosen on seed 0), then waits for the main lane's
# choice (polling every $MULTI30K_GAIN_POLL_S seconds, 60 by default) and
# trains seed 2's distilled student and the seed's equal-length step, while
# the main lane does seed 1. A stage runs in one lane at a time
# (WORK_DIR/.stages/<stage>.lock): the other lane waits for it and then
# finds it done. A finished stage leaves WORK_DIR/.stages/<stage>.done with
# its wall time and the commit it ran from.
set -euo pipefail
usage() { sed -n '2,16p' "$0"; exit 2; }
case $# in 2 | 3) ;; *) usage ;; esac
case ${3:-all} in all | second) ;; *) usage ;; esac
data_dir=$(cd "$1" && pwd) work_dir=$2 lane=${3:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
bertkd=${BERTKD:-$root/.venv/bin/bertkd}
G=gin/experiments/multi30k_gain
cd "$root"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
mkdir -p "$work_dir/.stages"

lock_fds=()
lock_stage() {  # name: hold the stage's lock, waiting while another lane
  # runs it (the lock goes with this process and its children; locks nest:
  # unlock_stage releases the last one taken). Its failures stop the
  # driver also where `set -e` does not apply (in claim_stage's `||`).
  local fd
  exec {fd}>"$work_dir/.stages/$1.lock" || exit 1
  lock_fds+=("$fd")
  if ! flock -n "$fd"; then
    echo "multi30k_gain: $1 is running in another lane; waiting for it"
    flock "$fd" || exit 1
  fi
}

unlock_stage() {
  local fd=${lock_fds[-1]}
  unset 'lock_fds[-1]'
  exec {fd}>&-
}

claim_stage() {  # name: lock the stage; false (and unlocked) once it is done
  lock_stage "$1"
  if [ -f "$work_dir/.stages/$1.done" ]; then
    echo "multi30k_gain: $1 already done"; unlock_stage; return 1
  fi
}

run_stage() {  # name mode gin_file [extra bindings...]
  local name=$1 mode=$2 gin_file=$3; shift 3
  claim_stage "$name" || return 0
  echo "multi30k_gain: $name ($mode, $gin_file) from $commit at $(date -u +%FT%TZ)"
  local start=$SECONDS
  local bindings=(--gin_bindings="DATA_DIR='$data_dir'" --gin_bindings="WORK_DIR='$work_dir'")
  for b in "$@"; do bindings+=(--gin_bindings="$b"); done
  "$bertkd" --mode="$mode" --gin_file="$gin_file" "${bindings[@]}"
  echo "$((SECONDS - start)) s, commit $commit, $(date -u +%FT%TZ)" > "$work_dir/.stages/$name.done"
  unlock_stage
}

py=$(dirname "$bertkd")/python
task_gin=gin/tasks/multi30k_de_en.gin

run_tool() {  # name command...: a python step, skipped once done
  local name=$1; shift
  claim_stage "$name" || return 0
  echo "multi30k_gain: $name from $commit at $(date -u +%FT%TZ): $*"
  local start=$SECONDS
  "$@"
  echo "$((SECONDS - start)) s, commit $commit, $(date -u +%FT%TZ)" > "$work_dir/.stages/$name.done"
  unlock_stage
}

json_value() {  # file key
  "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"
}

train() {  # model_dir gin seed [bindings...]: train to the plateau;
  # with $min_steps set, train on (same run, same data order) to at least
  # that step and then to the plateau again
  local name=$1 gin=$2 seed=$3; shift 3
  local stage=$name min=(); if [ -n "${min_steps:-}" ]; then
    stage=${name}_to_$min_steps min=(--min_steps="$min_steps"); fi
  local bindings=(--gin_bindings="distill.run.seed=$seed")
  for b in "$@"; do bindings+=(--gin_bindings="$b"); done
  run_tool "$stage" "$py" tools/converge.py train --work_dir="$work_dir" \
    --data_dir="$data_dir" --task_gin=$task_gin --gin_file="$gin" \
    --model_dir="$name" --bertkd="$bertkd" "${min[@]}" "${bindings[@]}"
}

select_final() {  # model_dir [stage suffix]: <model_dir>_final from valid
  run_tool "$1_select${2:-}" "$py" tools/converge.py select \
    --work_dir="$work_dir" --data_dir="$data_dir" --task_gin=$task_gin \
    --model_dir="$1"
}

last_step() {  # model_dir: the last step `converge.py train` reached
  json_value "$work_dir/$1/converged.json" last_step
}

same_length() {  # seed tag (05) kd_bindings...: both arms of a seed, equally long
  # Each arm trains at least as far as the other stopped (a plateau found
  # early is not a reason for fewer steps than the other arm had), then
  # both are selected on valid.
  local seed=$1 tag=$2; shift 2
  local base=baseline_seed$seed kd_name=distilled_a${tag}_seed$seed
  # Done once: a later step of the baseline (made as long as another
  # candidate) must not send this pair round again on a rerun.
  local name=same_length_seed${seed}_a${tag}
  local done="$work_dir/.stages/$name.done"
  # One lane at a time: two lanes in the loop below could otherwise train
  # the same student towards two different steps at once.
  claim_stage "$name" || return 0
  # Repeated until both stopped at the same step: an arm that finds a new
  # best while catching up trains on to its plateau again, and the other
  # arm then catches up with it in turn.
  local a b steps
  a=$(last_step $base) b=$(last_step $kd_name)
  while :; do
    steps=$(( a > b ? a : b ))
    min_steps=$steps train $base "$G/baseline.gin" "$seed"
    min_steps=$steps train $kd_name "$G/distill.gin" "$seed" "$@"
    a=$(last_step $base) b=$(last_step $kd_name)
    [ "$a" = "$b" ] && break
  done
  steps=$a
  select_final $base "_at_$steps"
  select_final $kd_name "_at_$steps"
  echo "both arms at step $steps, commit $commit, $(date -u +%FT%TZ)" > "$done"
  unlock_stage
}

run_stage prepare prepare gin/experiments/multi30k_de_en_prepare.gin
if [ "$lane" = second ]; then
  for seed in 1 2; do train baseline_seed$seed "$G/baseline.gin" $seed; done
  # The stages up to the choice are the main lane's; they are all done
  # once it has chosen.
  if [ ! -f "$work_dir/.stages/choose_distillation.done" ]; then
    echo "multi30k_gain: waiting for the main lane to choose the distillation settings on seed 0"
    while [ ! -f "$work_dir/.stages/choose_distillation.done" ]; do
      sleep "${MULTI30K_GAIN_POLL_S:-60}"
    done
  fi
fi
run_stage teacher train_teacher "$G/teacher.gin"
run_stage dump dump_teacher "$G/dump.gin"
run_stage dump_valid dump_teacher "$G/dump.gin" "dump_teacher.run.split='valid'" "TOP_K=64"
run_tool stats_valid "$py" tools/target_stats.py --work_dir="$work_dir" \
  --data_dir="$data_dir" --task_gin=$task_gin --targets_dir=targets_valid \
  --split=valid --temperatures=1,1.5,2,3,5,10 --top_ks=4,8,16 \
  --output="$work_dir/target_stats_valid.json" \
  --choose_output="$work_dir/chosen_kd.json"
run_tool stats_train "$py" tools/target_stats.py --work_dir="$work_dir" \
  --data_dir="$data_dir" --task_gin=$task_gin --targets_dir=targets \
  --split=train --max_pairs=3000 --temperatures=1,1.5,2,3,5,10 --top_ks=8,16 \
  --output="$work_dir/target_stats_train.json"
T=$(json_value "$work_dir/chosen_kd.json" temperature)
K=$(json_value "$work_dir/chosen_kd.json" top_k)

# The distillation settings (alpha, T, K) are chosen on seed 0, before any
# other seed runs, among three candidates, each trained to its own plateau
# and selected on valid (beam 5, tokenized BLEU):
#   a05       alpha 0.5 at the T and K of the valid-NLL rule (T 1, K 16);
#             made equally long with the baseline first (it was still
#             improving at step 7,000 where the baseline had stopped at 5,000)
#   a05t10k8  alpha 0.5, T 10, K 8: the paper's IWSLT14 De-En setting
#   a01t5k8   alpha 0.1, T 5, K 8: the paper's IWSLT15 En-Vi / WMT14 setting
# (Session 10: a05 lost to the equally long baseline, 39.97 against 40.63.
# At T 1 this teacher's targets are nearly one-hot (median top-1 0.95) and
# differ from the reference at 23% of the positions, so a lower alpha at T 1
# can only move the student towards the baseline; the paper's two settings
# spread the KD mass over the teacher's candidates instead. They replace
# the alpha 0.3 / 0.1 at T 1 candidates of sessions 8-9.)
declare -A candidate=(
  [05]="DISTILLATION_WEIGHT=0.5 TEMPERATURE=$T TOP_K=$K"
  [05t10k8]="DISTILLATION_WEIGHT=0.5 TEMPERATURE=10.0 TOP_K=8"
  [01t5k8]="DISTILLATION_WEIGHT=0.1 TEMPERATURE=5.0 TOP_K=8"
)

if [ "$lane" = all ]; then
  train baseline_seed0 "$G/baseline.gin" 0
  train distilled_a05_seed0 "$G/distill.gin" 0 ${candidate[05]}
  same_length 0 05 ${candidate[05]}
  for tag in 05t10k8 01t5k8; do
    train distilled_a${tag}_seed0 "$G/distill.gin" 0 ${candidate[$tag]}
    select_final distilled_a${tag}_seed0
  done
  run_tool choose_distillation "$py" tools/choose_distillation.py \
    --work_dir="$work_dir" --output="$work_dir/chosen_distillation.json" \
    --candidate=05:distilled_a05_seed0 --candidate=05t10k8:distilled_a05t10k8_seed0 \
    --candidate=01t5k8:distilled_a01t5k8_seed0
fi
tag=$(json_value "$work_dir/chosen_distillation.json" tag)
kd=(${candidate[$tag]})
if [ "$lane" = second ]; then
  train distilled_a${tag}_seed2 "$G/distill.gin" 2 "${kd[@]}"
  same_length 2 "$tag" "${kd[@]}"
  echo "multi30k_gain: the second lane is done in $work_dir"; exit 0
fi
# Seed 0 at the chosen settings (nothing to do for a05), then seeds 1 and 2
# of both arms, each made equally long.
same_length 0 "$tag" "${kd[@]}"
for seed in 1 2; do
  train baseline_seed$seed "$G/baseline.gin" $seed
  train distilled_a${tag}_seed$seed "$G/distill.gin" $seed "${kd[@]}"
  same_length $seed "$tag" "${kd[@]}"
done
echo "multi30k_gain: all stages of this commit done in $work_dir"
