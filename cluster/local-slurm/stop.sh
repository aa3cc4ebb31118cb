#!/usr/bin/env bash
# Stop what cluster/local-slurm/start.sh started: its jobs, slurmd, slurmctld, and munged when
# start.sh was the one that started it.  Processes are found by their pid files, never by name.
set -euo pipefail

STATE=${XRDCT_SLURM_STATE:-/var/lib/xrdct-local-slurm}
say() { echo "local-slurm: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "local-slurm: needs root" >&2; exit 1; }

stop_pidfile() {  # name pidfile
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

if command -v scancel >/dev/null && [ -s "$STATE/slurmctld.pid" ]; then
    scancel --full --quiet --user=root >/dev/null 2>&1 || true  # dask workers of interrupted tests
fi
stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
if [ -f "$STATE/munged.ours" ]; then
    stop_pidfile munged /run/munge/munged.pid
    rm -f "$STATE/munged.ours"
fi
say "stopped"
