#!/usr/bin/env bash
# Regenerate every figure of README.md's benchmark table in one session, one command after
# the other (never two at once: they would share the two cores), each one's output kept in
# OUT/NAME.log. The table's rows name the command that gave them; this runs those commands.
#
#   bash bench/table.sh [OUT]          # default OUT: bench-logs-YYYYmmdd-HHMMSS
#   BASELINE=/tmp/old bash bench/table.sh   # derive_speed and growth also against that tree
#
# BASELINE: another checkout's tree (`git archive COMMIT | tar -x -C /tmp/old`), for the
# "before" columns (compile it too: `python -m compileall -q /tmp/old`, as make setup compiles
# this tree). About 35 minutes on the 2-core development machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${1:-bench-logs-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
against=()
baseline=()
kernel_against=()
if [[ -n "${BASELINE:-}" ]]; then
    against=(--against "$BASELINE")
    baseline=(--baseline "$BASELINE")
    kernel_against=(--against "$BASELINE/kernels/flo_kernel.py")
fi

step() {  # step NAME COMMAND...: run it, its output to the terminal and OUT/NAME.log
    local name=$1
    shift
    echo "== $name: $*  (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$OUT/$name.log"
    "$@" 2>&1 | tee -a "$OUT/$name.log"
}

step overhead "$PY" bench/overhead.py -n 5
step overhead_parts "$PY" bench/overhead_parts.py -n 3
step tracer_tasks "$PY" bench/tracer_tasks.py
step derive_speed "$PY" bench/derive_speed.py --growth "${baseline[@]}"
step parse_speed "$PY" bench/parse_speed.py
step names_cost "$PY" bench/names_cost.py --rounds 400 "${kernel_against[@]}"
step kernel_cell_cost "$PY" bench/kernel_cell_cost.py "${kernel_against[@]}"
step growth_cells "$PY" bench/growth.py --only cells -n 2 "${against[@]}"
step growth_files "$PY" bench/growth.py --only files -n 3 "${against[@]}"
step growth_imports "$PY" bench/growth.py --only imports -n 3 "${against[@]}"
step growth_workers "$PY" bench/growth.py --only workers -n 2
step env_cache "$PY" bench/env_cache.py
step run_overhead "$PY" bench/run_overhead.py --repeat 2
step run_floor "$PY" bench/run_floor.py -n 5
step verify_cost "$PY" bench/verify_cost.py --repeat 2 --empty-uv-cache
echo "logs in $OUT/"
