#!/usr/bin/env bash
# Bring up a real single-node SLURM on this host for flo-run's batch engine and its tests.
#
# Idempotent: when `sinfo` already shows an idle (or busy) node it only prints that and exits 0.
# Otherwise: install Debian's slurm-wlm + munge if missing (one apt-get update), write a
# single-node slurm.conf sized from `slurmd -C`, start munged, slurmctld and slurmd, and wait,
# bounded, until the node is idle. Needs root. It never touches a slurm.conf it did not write.
#
# Environment: SLURM_SETUP_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

TIMEOUT=${SLURM_SETUP_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by flo-backpack .ci/slurm-setup.sh"
STATE=/var/lib/slurm
LOGS=/var/log/slurm
NODE=$(hostname -s)

say() { echo "slurm-setup: $*" >&2; }
die() { say "$*"; exit 1; }

# The node's state as sinfo reports it (idle, mixed, allocated, down*, drained, ...), or "".
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true; }
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

if command -v sinfo >/dev/null && usable; then
    say "SLURM is up (node $NODE $(node_state))"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "SLURM is not running and starting it needs root: run 'sudo bash $0' (or 'make test SLURM=skip' to skip the SLURM tests)"

# --- packages -----------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge from Debian"
    # Keep package scripts from starting daemons against a config that does not exist yet.
    own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    [[ -n $own_policy ]] && rm -f /usr/sbin/policy-rc.d
fi

# --- configuration ------------------------------------------------------------------------
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; start that SLURM yourself (sinfo must show $NODE idle)"
fi
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
# slurmd -C prints the node line (CPUs, sockets, cores, threads, RealMemory) as slurmd sees it.
hw=$(slurmd -C | grep '^NodeName=' | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')
[[ -n $hw ]] || die "'slurmd -C' printed no node line"
# TmpDisk (MB) is what sbatch --tmp is checked against; 90% of /tmp so slurmd never finds less.
tmp_mb=$(( $(df -Pm /tmp | awk 'NR==2 {print $2}') * 9 / 10 ))
new=$(mktemp)
cat > "$new" <<EOF
$MARKER: a single-node test cluster.
ClusterName=flo
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups: processes are tracked through their parents, which works in containers too.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
# Allocate CPUs (not whole cores) and memory, so several small jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
TmpFS=/tmp
NodeName=$NODE NodeAddr=127.0.0.1 $hw TmpDisk=$tmp_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
changed=
if ! cmp -s "$new" "$CONF"; then
    install -m 644 "$new" "$CONF"
    changed=1
    say "wrote $CONF for $NODE: $hw TmpDisk=$tmp_mb"
fi
rm -f "$new"

# --- munge --------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! running /run/munge/munged.pid; then
    # munged refuses to run as root; it daemonizes itself.
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work: see /var/log/munge/munged.log"

# --- daemons ------------------------------------------------------------------------------
if [[ -n $changed ]]; then
    # A new config: restart whatever runs with an old one.
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$pidfile"; then kill "$(cat "$pidfile")"; fi
    done
    for _ in $(seq 100); do
        running /run/slurmd.pid || running /run/slurmctld.pid || break
        sleep 0.1
    done
fi
if ! running /run/slurmctld.pid; then
    # -c: start from a clean state; jobs of a previous boot belong to schedulers long gone.
    slurmctld -c
fi
if ! running /run/slurmd.pid; then
    slurmd
fi

deadline=$(( SECONDS + TIMEOUT ))
while (( SECONDS < deadline )); do
    state=$(node_state)
    case $state in
        idle|mixed|allocated|completing)
            say "SLURM is up (node $NODE $state)"; exit 0 ;;
        down*|drain*|fail*)
            # A node that was down at an earlier start comes back once slurmd answers.
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
say "node $NODE not idle after ${TIMEOUT}s (state '${state:-none}'); last log lines:"
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
