#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages, for trying the
# Slurm profile: `apt-get install slurm-wlm munge`, then, as root,
#
#   tests/slurm/start_slurm.sh [STATE_DIR]      # default /tmp/balanced-experts-slurm
#   export SLURM_CONF=STATE_DIR/slurm.conf      # what sbatch, squeue, sinfo read
#   ...
#   tests/slurm/stop_slurm.sh [STATE_DIR]
#
# The config, state, logs and pid files live in STATE_DIR; /etc/slurm/slurm.conf links to
# the config (see below).
# Choices that let it run in a container without systemd or cgroups:
#   - proctrack/linuxproc and task/none instead of the cgroup plugins;
#   - no slurmdbd: accounting_storage/none, and every finished job is appended by
#     slurmctld to STATE_DIR/jobcomp.log (jobcomp/filetxt), which is what the test reads;
#     jobs are polled with squeue (the Slurm executor's --slurm-status-command squeue), so
#     MinJobAge keeps finished jobs visible to squeue for an hour;
#   - SlurmdParameters=config_overrides: the node is declared with 16 CPUs, 64 GB and
#     4 GPUs (stand-in device files), so profiles/slurm's requests (gpu=1, mem_mb,
#     cpus_per_task) are accepted as on a GPU node; the jobs still run on this machine's
#     CPUs, and the training stage uses the CPU because torch sees no CUDA device.
set -euo pipefail

STATE_DIR=${1:-/tmp/balanced-experts-slurm}
HOST=$(hostname -s)
mkdir -p "$STATE_DIR"/{state,spool,munge}
STATE_DIR=$(cd "$STATE_DIR" && pwd)

for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "start_slurm.sh: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done

# munge: the authentication Slurm's daemons and clients share. The Debian package
# created /etc/munge/munge.key; the daemon is started here because there is no systemd.
if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

cat > "$STATE_DIR/slurm.conf" <<CONF
ClusterName=balanced-experts-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$HOST CPUs=16 RealMemory=64000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# slurmd counts a GPU only by its device file; these four stand-ins are /dev/null's
# device numbers, so a job's CUDA_VISIBLE_DEVICES is set but torch still finds no GPU.
for i in 0 1 2 3; do
    [ -e "$STATE_DIR/gpu$i" ] || mknod -m 666 "$STATE_DIR/gpu$i" c 1 3
done
cat > "$STATE_DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=$STATE_DIR/gpu[0-3]
CONF

# The Slurm executor's job step removes every SLURM_* variable, SLURM_CONF included,
# before it calls srun inside the job, so srun reads the default /etc/slurm/slurm.conf:
# it is linked to this cluster's config (and unlinked by stop_slurm.sh). A real
# slurm.conf found there is left alone, and this script stops.
DEFAULT_CONF=/etc/slurm/slurm.conf
# A link left by an earlier test cluster (a run killed before stop_slurm.sh) is replaced.
if [ -L "$DEFAULT_CONF" ] && { [ ! -e "$DEFAULT_CONF" ] \
        || grep -qs '^ClusterName=balanced-experts-test$' "$DEFAULT_CONF"; }; then
    rm -f "$DEFAULT_CONF"
fi
if [ -e "$DEFAULT_CONF" ] && [ "$(readlink "$DEFAULT_CONF")" != "$STATE_DIR/slurm.conf" ]; then
    echo "start_slurm.sh: $DEFAULT_CONF exists and is not this test cluster's; not starting" >&2
    exit 1
fi
mkdir -p /etc/slurm
ln -sfn "$STATE_DIR/slurm.conf" "$DEFAULT_CONF"

export SLURM_CONF=$STATE_DIR/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "Slurm is up: export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "start_slurm.sh: the node did not become idle; see $STATE_DIR/slurmctld.log and slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
