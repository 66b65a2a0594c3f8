#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (slurmctld + slurmd, CPUs as the resource),
# so the sbatch templates and the Slurm executor are tested against the real scheduler.
#   slurm/local-cluster.sh start|stop|status
# Installs Debian's slurm-wlm and munge when missing (needs root).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/megagpt-slurm
LOGS=/var/log/megagpt-slurm

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
  # Two stand-in GPUs (tty devices nothing here uses), so that tests see how Slurm hands GPUs to the tasks
  # of a step (CUDA_VISIBLE_DEVICES, SLURM_GPUS_ON_NODE); there is no CUDA behind them.
  local gres_types="" node_gres=""
  if [ -c /dev/tty10 ] && [ -c /dev/tty11 ]; then
    gres_types="GresTypes=gpu"
    node_gres=" Gres=gpu:2"
    echo "Name=gpu File=/dev/tty[10-11]" > "$CONF_DIR/gres.conf"
  else
    rm -f "$CONF_DIR/gres.conf"
  fi
  cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=megagpt-local
$gres_types
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/megagpt-slurmctld.pid
SlurmdPidFile=/run/megagpt-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmUser=root
MpiDefault=none
KillWait=10
MinJobAge=60
# A requeued job waits the step credential's lifetime before it may start again (default 120 s)
AuthInfo=cred_expire=20
NodeName=$host CPUs=$cpus RealMemory=$mem$node_gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
}

wait_idle() {
  for _ in $(seq 1 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
    case "$state" in idle|mixed|allocated) echo "slurm: node $state"; return 0 ;; esac
    sleep 1
  done
  echo "slurm: node did not come up; see $LOGS" >&2
  tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  return 1
}

case "${1:-}" in
  start)
    install
    write_conf
    start_munge
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_idle
    ;;
  stop)
    scancel --user=root >/dev/null 2>&1 || true
    pkill -x slurmd || true
    pkill -x slurmctld || true
    for _ in $(seq 1 30); do  # a start right after must not find them still exiting
      pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
      sleep 0.5
    done
    echo "slurm: stopped"
    ;;
  status)
    sinfo && squeue
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
