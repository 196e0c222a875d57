#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_slurm.sh started (by their pid files); munged is
# left running, as other programs on the machine may use it. The /etc/slurm/slurm.conf
# link to this cluster's config is removed.
set -uo pipefail
STATE_DIR=${1:-/tmp/balanced-experts-slurm}
for daemon in slurmd slurmctld; do
    pidfile=$STATE_DIR/$daemon.pid
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
if [ "$(readlink /etc/slurm/slurm.conf)" = "$(cd "$STATE_DIR" 2>/dev/null && pwd)/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
