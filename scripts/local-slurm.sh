#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the cluster tests (tests/test_slurm.py).
#
#   bash scripts/local-slurm.sh up [--no-install]   install (Debian packages) + configure + start; idempotent:
#                                                   a running cluster with the same config is left alone
#   bash scripts/local-slurm.sh down                stop slurmd, slurmctld and munged
#   bash scripts/local-slurm.sh status              show the controller, node and queue (rc 1 when down)
#
# Everything listens on 127.0.0.1, runs as root, keeps no accounting (AccountingStorageType=none, so the
# Snakemake profile must use `slurm-status-command: squeue`), and offers fake GPUs as GRES backed by
# character devices /dev/fakegpuN (same device numbers as /dev/null): Slurm sets CUDA_VISIBLE_DEVICES per job.
# Without cgroups, memory limits are enforced by polling (OverMemoryKill, every second): a job above its
# --mem is killed, as on a production cluster.
# Sizes: LOCAL_SLURM_CPUS (default 8, may exceed the real cores), LOCAL_SLURM_GPUS (2),
# LOCAL_SLURM_MEM_MB (80 % of RAM). Partition `debug` (default) holds the node; tests/test_slurm.py adds a
# smaller partition on the same node at run time (scontrol create/delete; slurm.conf is not changed).
set -euo pipefail

CPUS=${LOCAL_SLURM_CPUS:-8}
GPUS=${LOCAL_SLURM_GPUS:-2}
MEM_MB=${LOCAL_SLURM_MEM_MB:-$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)}
HOST=$(hostname -s)
CONF=/etc/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "local-slurm: $*" >&2; }
die() { say "$*"; exit 1; }

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$1" = 1 ] && die "missing packages (${missing[*]}) and --no-install given"
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

munge_ok() { munge -n | unmunge; }

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  fi
  munge_ok >/dev/null 2>&1 && return 0
  rm -f "$MUNGE_PID" /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munge_ok || die "munged did not start"
}

fake_gpus() {
  for ((i = 0; i < GPUS; i++)); do
    [ -c "/dev/fakegpu$i" ] || mknod -m 666 "/dev/fakegpu$i" c 1 3 || {
      say "mknod failed: /dev/fakegpu$i is a regular file (slurmd warns but still counts it)"
      touch "/dev/fakegpu$i"
    }
  done
}

slurm_conf() {
  local gres="" node_gres=""
  if [ "$GPUS" -gt 0 ]; then gres="GresTypes=gpu"; node_gres="Gres=gpu:fake:$GPUS"; fi
  cat <<EOF
# Written by scripts/local-slurm.sh: single-node test cluster on 127.0.0.1, no accounting.
ClusterName=localcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=/var/spool/slurm/d
StateSaveLocation=/var/spool/slurm/ctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=600
KillWait=5
SlurmdParameters=config_overrides
$gres
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $node_gres State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

gres_conf() {
  echo "AutoDetect=off"
  [ "$GPUS" -gt 0 ] && echo "NodeName=$HOST Name=gpu Type=fake File=/dev/fakegpu[0-$((GPUS - 1))]"
  return 0
}

# write_if_changed PATH: stdin -> PATH; rc 0 when the content changed.
write_if_changed() {
  local tmp; tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  install -m 0644 "$tmp" "$1" && rm -f "$tmp"
}

ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_ready() { sinfo -h -n "$HOST" -o %t | grep -Eq '^(idle|mix|alloc)'; }

stop_daemon() {  # PIDFILE
  local pid
  alive "$1" && pid=$(cat "$1" 2>/dev/null) || { rm -f "$1"; return 0; }
  kill "$pid" 2>/dev/null || true
  wait_for 15 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

stop_slurm() {
  ctld_up && scontrol shutdown >/dev/null 2>&1 || true
  wait_for 15 bash -c "! scontrol ping 2>/dev/null | grep -q 'is UP'" || true
  stop_daemon "$SLURMD_PID"
  stop_daemon "$CTLD_PID"
}

start_slurm() {
  install -d /var/spool/slurm/ctld /var/spool/slurm/d /var/log/slurm /run/slurm
  slurmctld -i
  wait_for 30 ctld_up || die "slurmctld is not UP (see /var/log/slurm/slurmctld.log)"
  slurmd
  wait_for 30 node_ready || {
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    wait_for 15 node_ready || die "node $HOST not ready: $(sinfo -h -o '%t %E')"
  }
}

smoke_test() {
  local out gpu=()
  [ "$GPUS" -gt 0 ] && gpu=(--gpus=1)
  out=$(timeout 60 srun -t 1 --mem=100 -n1 "${gpu[@]}" printenv CUDA_VISIBLE_DEVICES 2>&1) ||
    die "smoke job failed: $out"
  say "smoke job ran (CUDA_VISIBLE_DEVICES=${out:-unset})"
}

up() {
  local no_install=0
  for arg in "$@"; do
    case $arg in --no-install) no_install=1 ;; *) die "unknown option $arg" ;; esac
  done
  [ "$(id -u)" = 0 ] || die "needs root (daemons, /etc/slurm, mknod)"
  install_packages "$no_install"
  start_munge
  fake_gpus
  install -d "$CONF"
  local changed=0
  slurm_conf | write_if_changed "$CONF/slurm.conf" && changed=1
  gres_conf | write_if_changed "$CONF/gres.conf" && changed=1
  if [ "$changed" = 0 ] && ctld_up && alive "$SLURMD_PID" && node_ready; then
    say "already up ($HOST: $CPUS CPUs, $MEM_MB MB, $GPUS fake GPUs)"
    return 0
  fi
  stop_slurm
  start_slurm
  smoke_test
  say "up ($HOST: $CPUS CPUs, $MEM_MB MB, $GPUS fake GPUs, partition debug)"
}

down() {
  command -v scontrol >/dev/null && stop_slurm
  stop_daemon "$MUNGE_PID"
  say "down"
}

status() {
  command -v sinfo >/dev/null || die "Slurm is not installed (run: $0 up)"
  ctld_up || { say "controller is down"; return 1; }
  scontrol ping
  sinfo -N -o "%N %t %c %m %G"
  sinfo -o "%P %a %l %D"   # partitions: name (* = default), state, MaxTime, nodes
  squeue
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up [--no-install] | down | status" ;;
esac
