#!/usr/bin/env bash
# Bring up a real single-node Grid Engine (Debian's gridengine 8.1.9) on this host for flo-run's
# sge engine and its tests.
#
# Idempotent: when `qstat -f` already shows this host's all.q instance without an error or
# disabled state it only says so and exits 0. Otherwise: install gridengine-master, -exec and
# -client if missing (one apt-get update; debconf preseeded so the packages create the cell),
# map this host's name to the name its loopback address resolves to (host_aliases: SGE refuses
# a client whose address resolves to another name), start sge_qmaster, let root submit
# (min_uid 0), schedule every second, add this host as submit and execution host, a parallel
# environment `smp`, a queue all.q with one slot per CPU and no load threshold (a busy 2-core
# machine would otherwise block it), start sge_execd, and wait, bounded, until the queue
# instance is usable. Needs root.
#
# Environment: SGE_SETUP_TIMEOUT (seconds to wait for the queue, default 60).
set -euo pipefail

TIMEOUT=${SGE_SETUP_TIMEOUT:-60}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
HOST=$(hostname)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { echo "sge-setup: $*" >&2; }
die() { say "$*"; exit 1; }

# The state column of this host's all.q instance ("" when fine; a, d, E, u... otherwise), or
# "missing" when qstat cannot show it.
queue_state() {
    local line
    line=$(timeout 10 qstat -f -q "all.q@$HOST" 2>/dev/null | grep "^all.q@" || true)
    [[ -n $line ]] || { echo missing; return; }
    awk '{print $6}' <<<"$line"
}
# qstat shows a queue as fine for a while after its execd died: look for the daemons too.
usable() {
    command -v qstat >/dev/null && pgrep -x sge_qmaster >/dev/null \
        && pgrep -x sge_execd >/dev/null && [[ -z $(queue_state) ]]
}

if usable; then
    say "SGE is up (all.q@$HOST)"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "SGE is not running and starting it needs root: run 'sudo bash $0' (or 'make test SGE=skip' to skip the SGE tests)"

# --- packages -----------------------------------------------------------------------------
if ! command -v sge_qmaster >/dev/null && [[ ! -x /usr/sbin/sge_qmaster ]]; then
    say "installing gridengine-master, gridengine-exec and gridengine-client from Debian"
    for pkg in gridengine-common gridengine-client gridengine-master; do
        debconf-set-selections <<EOF
$pkg shared/gridenginemaster string $HOST
$pkg shared/gridenginecell string $SGE_CELL
$pkg shared/gridengineconfig boolean true
EOF
    done
    # Keep package scripts from starting daemons before the host names are sorted out.
    own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gridengine-master gridengine-exec \
        gridengine-client >/dev/null
    [[ -n $own_policy ]] && rm -f /usr/sbin/policy-rc.d
fi
[[ -f $COMMON/act_qmaster ]] || die "$COMMON/act_qmaster missing: the gridengine-master package did not create the cell"

# --- host names ---------------------------------------------------------------------------
# SGE compares the name a client says it has with the name its address resolves to.
address=$(getent ahostsv4 "$HOST" | awk 'NR==1 {print $1}')
resolved=$(getent hosts "$address" | awk 'NR==1 {print $2}')
if [[ -n $resolved && $resolved != "$HOST" ]]; then
    echo "$HOST $resolved" > "$COMMON/host_aliases"
fi
echo "$HOST" > "$COMMON/act_qmaster"

# --- qmaster ------------------------------------------------------------------------------
if ! pgrep -x sge_qmaster >/dev/null; then
    /usr/sbin/sge_qmaster
fi
for _ in $(seq 100); do timeout 5 qconf -sh >/dev/null 2>&1 && break; sleep 0.2; done
timeout 5 qconf -sh >/dev/null 2>&1 || die "sge_qmaster does not answer: see /var/spool/gridengine/qmaster/messages"

# Root may submit (the tests run as root); schedule at once.
mkdir -p "$WORK/conf"
qconf -sconf global > "$WORK/conf/global"
if ! grep -q '^min_uid *0$' "$WORK/conf/global"; then
    sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' "$WORK/conf/global"
    (cd "$WORK/conf" && qconf -Mconf global >/dev/null)
    pkill -x sge_execd || true  # an execd reads the configuration when it starts
fi
qconf -ssconf > "$WORK/sched"
if ! grep -q '^schedule_interval *0:0:1$' "$WORK/sched"; then
    sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec 1/' "$WORK/sched"
    qconf -Msconf "$WORK/sched" >/dev/null
fi

# --- hosts, parallel environments, queue --------------------------------------------------
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
        "$HOST" > "$WORK/exechost"
    qconf -Ae "$WORK/exechost" >/dev/null
fi
if ! qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
    printf 'group_name @allhosts\nhostlist %s\n' "$HOST" > "$WORK/hostgroup"
    qconf -Ahgrp "$WORK/hostgroup" >/dev/null
fi
# The default queue template names the PEs make, mpi and smp: all three must exist.
for pe in smp mpi make; do
    if ! qconf -spl 2>/dev/null | grep -qx "$pe"; then
        printf 'pe_name %s\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' \
            "$pe" > "$WORK/pe"
        qconf -Ap "$WORK/pe" >/dev/null
    fi
done
if ! qconf -sql 2>/dev/null | grep -qx 'all.q'; then
    EDITOR=true qconf -aq all.q >/dev/null
    qconf -mattr queue hostlist @allhosts all.q >/dev/null
fi
qconf -mattr queue slots "$(nproc)" all.q >/dev/null 2>&1 || true
qconf -rattr queue load_thresholds NONE all.q >/dev/null 2>&1 || true

# --- execd --------------------------------------------------------------------------------
pgrep -x sge_execd >/dev/null || /usr/sbin/sge_execd

deadline=$(( SECONDS + TIMEOUT ))
while (( SECONDS < deadline )); do
    state=$(queue_state)
    case $state in
        "") say "SGE is up (all.q@$HOST)"; exit 0 ;;
        *E*) qmod -c "all.q@$HOST" >/dev/null 2>&1 || true ;;  # an error from an earlier start
        *d*) qmod -e "all.q@$HOST" >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
say "all.q@$HOST not usable after ${TIMEOUT}s (state '${state:-none}'); last qmaster messages:"
tail -n 20 /var/spool/gridengine/qmaster/messages >&2 || true
exit 1
