#!/bin/bash
# Wall time of one `moegate eval` command at an older commit (before) and in this checkout (after), ABBA order,
# each with a fresh request cache (the test bed linked in), model load and fingerprint included.
#   benchmarks/eval_abba.sh REV testbed --suite mmlu_pro_mc --limit 10
# Needs MOEGATE_DATA_DIR and the test bed at ~/.cache/moegate/testbed; run under the heavy lock.
# Last line: `ratio after/before = X`.
set -euo pipefail
rev=$1; shift
here=$(git rev-parse --show-toplevel)
before=$(mktemp -d); trap 'rm -rf "$before"' EXIT
git -C "$here" archive "$rev" | tar -x -C "$before"
declare -A total=([before]=0 [after]=0)
for side in before after after before; do
  cache=$(mktemp -d); ln -sfn "${HOME}/.cache/moegate/testbed" "$cache/testbed"
  root=$before; [ "$side" = after ] && root=$here
  start=$(date +%s.%N)
  # python -m puts the working folder first on sys.path: each side runs its own harness/
  (cd "$root" && PYTHONPATH=$root MOEGATE_CACHE_DIR=$cache python -m harness eval "$@" > "$cache/out" 2>&1) \
    || { cat "$cache/out"; exit 1; }
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  total[$side]=$(echo "${total[$side]} + $seconds" | bc)
  echo "$side: $seconds s; $(grep -E '^│' "$cache/out" | head -1 | tr -s ' ')"
  rm -rf "$cache"
done
echo "ratio after/before = $(echo "scale=3; ${total[after]} / ${total[before]}" | bc)"
