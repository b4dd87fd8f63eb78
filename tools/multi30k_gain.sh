#!/usr/bin/env bash
# The "prove the gain" experiment on Multi30k De-En (docs/RESULTS.md, issue 15):
# every stage in order, each skipped once finished, each resuming from its own
# checkpoints after a kill. Run it from a checkout pinned to a commit (a
# `git worktree add`), at low priority, in one fixed work directory:
#
#   nohup nice -n 10 tools/multi30k_gain.sh DATA_DIR WORK_DIR > WORK_DIR/driver.log 2>&1 &
#
# A finished stage leaves WORK_DIR/.stages/<stage>.done with its wall time and
# the commit it ran from.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,10p' "$0"; exit 2; fi
data_dir=$(cd "$1" && pwd) work_dir=$2
root=$(cd "$(dirname "$0")/.." && pwd)
bertkd=${BERTKD:-$root/.venv/bin/bertkd}
G=gin/experiments/multi30k_gain
cd "$root"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
mkdir -p "$work_dir/.stages"

run_stage() {  # name mode gin_file [extra bindings...]
  local name=$1 mode=$2 gin_file=$3; shift 3
  if [ -f "$work_dir/.stages/$name.done" ]; then
    echo "multi30k_gain: $name already done"; return
  fi
  echo "multi30k_gain: $name ($mode, $gin_file) from $commit at $(date -u +%FT%TZ)"
  local start=$SECONDS
  local bindings=(--gin_bindings="DATA_DIR='$data_dir'" --gin_bindings="WORK_DIR='$work_dir'")
  for b in "$@"; do bindings+=(--gin_bindings="$b"); done
  "$bertkd" --mode="$mode" --gin_file="$gin_file" "${bindings[@]}"
  echo "$((SECONDS - start)) s, commit $commit, $(date -u +%FT%TZ)" > "$work_dir/.stages/$name.done"
}

run_stage prepare prepare gin/experiments/multi30k_de_en_prepare.gin
run_stage teacher train_teacher "$G/teacher.gin"
echo "multi30k_gain: all stages of this commit done in $work_dir"
