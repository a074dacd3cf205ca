#!/usr/bin/env bash
# A one-node SLURM on localhost for `make test-slurm` (run as root, as CI is). Idempotent:
# installs Debian's slurm-wlm + munge when missing, writes the config, starts munged, slurmctld
# and slurmd when they are not running, and waits until the node is idle.
#
# The config pins the plugins that work in a container without cgroups or systemd:
# ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres.
# The node claims 4 CPUs whatever the machine has (SlurmdParameters=config_overrides), so a
# job array of 3 one-CPU points, or a 2-task run, can be scheduled on a 2-core box.
set -euo pipefail

if [[ $(id -u) != 0 ]]; then
  echo "error: tests/slurm/start.sh must run as root (it starts system daemons)" >&2
  exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

node_idle() {
  sinfo --noheader -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
conf=$(mktemp)
cat > "$conf" <<CONF
ClusterName=cnnjax
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
KillWait=30
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=20
MinJobAge=300
NodeName=${host} CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

if cmp -s "$conf" /etc/slurm/slurm.conf; then
  rm -f "$conf"
  if node_idle; then
    echo "slurm already up: $(sinfo --noheader -o '%P %a %D %T')"
    exit 0
  fi
else  # New or changed: daemons started with another config stop and start again.
  mv "$conf" /etc/slurm/slurm.conf
  chmod 0644 /etc/slurm/slurm.conf
  for daemon in slurmctld slurmd; do
    pid=$(pgrep -x "$daemon" || true)
    [[ -n $pid ]] || continue
    kill $pid 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 0.5; done
  done
fi

# munge: a key, its directories owned by the munge user, the daemon as that user.
mkdir -p /run/munge /var/lib/munge /var/log/munge
[[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi

if ! pgrep -x slurmctld >/dev/null; then
  /usr/sbin/slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
  /usr/sbin/slurmd
fi

for _ in $(seq 1 120); do
  if node_idle; then
    echo "slurm up: $(sinfo --noheader -o '%P %a %D %T')"
    exit 0
  fi
  # A node left down or drained by an earlier start comes back.
  scontrol update NodeName="${host}" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "error: the SLURM node did not become idle within 120 s; see /var/log/slurm/*.log" >&2
sinfo >&2 || true
exit 1
