#!/usr/bin/env bash
# A real, single-node SLURM on this machine for tests: controller and node on 127.0.0.1.
#
#   sudo cluster/local-slurm/start.sh      # installs Debian's slurm-wlm + munge if missing, starts
#                                         # munged, slurmctld, slurmd; returns when the node is idle
#   sudo cluster/local-slurm/stop.sh
#
# What works without cgroups (containers, CI VMs): proctrack/linuxproc, task/none, no accounting.
# The node is `hostname -s` (mapped to 127.0.0.1 in /etc/hosts if it does not resolve), 2 CPUs,
# RealMemory = 90 % of MemTotal, one partition `debug`.  Re-running is harmless: when the node is
# already up and idle the script only says so.
#
# Environment: XRDCT_SLURM_STATE (state, spool, logs; default /var/lib/xrdct-local-slurm),
#              XRDCT_SLURM_CPUS (default 2), XRDCT_SLURM_TIMEOUT (seconds to wait, default 90).
set -euo pipefail

STATE=${XRDCT_SLURM_STATE:-/var/lib/xrdct-local-slurm}
CPUS=${XRDCT_SLURM_CPUS:-2}
TIMEOUT=${XRDCT_SLURM_TIMEOUT:-90}
CONF=/etc/slurm/slurm.conf
MARKER="# written by xrdct_dask cluster/local-slurm/start.sh"

say() { echo "local-slurm: $*"; }
die() { echo "local-slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (installs packages, writes $CONF, starts daemons); run it with sudo"

NODE=$(hostname -s)

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

if command -v sinfo >/dev/null && [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    case "$(node_state)" in
        idle|mixed|allocated) say "already running: node $NODE $(node_state) (partition debug)"; exit 0 ;;
    esac
fi

# --- packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them (Debian/Ubuntu only)"
    say "installing slurm-wlm and munge with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; } \
        || die "apt-get install slurm-wlm munge failed"
fi

# --- the node name must resolve (slurmd looks itself up) -----------------------------------------
if ! getent hosts "$NODE" >/dev/null; then
    echo "127.0.0.1 $NODE" >> /etc/hosts
    say "added '127.0.0.1 $NODE' to /etc/hosts"
fi

# --- munge ------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
mkdir -p "$STATE" /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged.ours"   # stop.sh stops munged only when this script started it
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf ---------------------------------------------------------------------------------
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script: refusing to replace a real SLURM configuration"
fi
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
cat > "$CONF" <<CONF
$MARKER
# A one-node test cluster: do not use for production.
ClusterName=xrdct-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups: track job processes by parent pid, no task affinity/containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust this file over the hardware slurmd sees (CPUs, memory), never drain for it
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

# --- daemons ----------------------------------------------------------------------------------
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive "$STATE/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld -i
else
    scontrol reconfigure >/dev/null 2>&1 || true
fi
if ! alive "$STATE/slurmd.pid"; then
    say "starting slurmd (node $NODE, $CPUS CPUs, RealMemory=${MEM_MB}M)"
    slurmd -N "$NODE"
fi

# --- wait until the node takes jobs -----------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    st=$(node_state || true)
    case "$st" in
        idle) break ;;
        down*|drain*|drng*|fail*)
            if [ $resumed -eq 0 ]; then scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true; resumed=1; fi ;;
    esac
    if [ $SECONDS -ge $deadline ]; then
        echo "--- slurmctld.log" >&2; tail -n 20 "$STATE/slurmctld.log" >&2 || true
        echo "--- slurmd.log" >&2; tail -n 20 "$STATE/slurmd.log" >&2 || true
        die "node $NODE is '${st:-unknown}', not idle, after ${TIMEOUT}s"
    fi
    sleep 1
done
say "ready: node $NODE idle in partition debug ($CPUS CPUs); logs in $STATE"
sinfo
