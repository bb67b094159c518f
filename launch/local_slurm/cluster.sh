#!/usr/bin/env bash
# A throw-away SLURM cluster on this machine: munge, slurmctld and two slurmd (node1, node2).
#
#   launch/local_slurm/cluster.sh up       install (apt, when missing) and start; idempotent
#   launch/local_slurm/cluster.sh status   what runs, and sinfo
#   launch/local_slurm/cluster.sh env      the exports that point sbatch/squeue/sacct at it
#   launch/local_slurm/cluster.sh down     cancel its jobs, stop exactly what `up` started, undo /etc/hosts
#
# Needs root (daemons, /etc/hosts) and Debian/Ubuntu packages. Everything else lives in
# $SISTA_SLURM_STATE (default ${TMPDIR:-/tmp}/sista-local-slurm): config, munge key and socket,
# controller state, spool, pid files and logs. No accounting database: `env` puts a small `sacct`
# stand-in (answering from squeue and the job-completion file) first on PATH for plain submitit.
set -euo pipefail

STATE=${SISTA_SLURM_STATE:-${TMPDIR:-/tmp}/sista-local-slurm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODES=(node1 node2)
NODE_PORTS=(6821 6822)
CTLD_PORT=${SISTA_SLURM_PORT:-6817}
NODE_CPUS=4                      # declared per node (config_overrides): more than the host has is fine
HOSTS_MARK="# sista-local-slurm"
PACKAGES=(slurmctld slurmd slurm-client munge)
CONF=$STATE/etc/slurm.conf
MUNGE_SOCKET=$STATE/munge/munge.socket
export SLURM_CONF=$CONF

say() { echo "local-slurm: $*"; }
die() { echo "local-slurm: $*" >&2; exit 1; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

daemon_pids() {  # every pid file of a daemon this script starts
  local node
  echo "$STATE/run/munged.pid" "$STATE/run/slurmctld.pid"
  for node in "${NODES[@]}"; do echo "$STATE/run/slurmd-$node.pid"; done
}

running() {  # 0 when every daemon is alive
  local f
  for f in $(daemon_pids); do pid_alive "$f" || return 1; done
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (Debian/Ubuntu only)"
  say "installing ${missing[*]} (apt-get, log: $STATE/log/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE/log/apt.log" 2>&1 \
    || { apt-get update -q >>"$STATE/log/apt.log" 2>&1 \
         && apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/log/apt.log" 2>&1; } \
    || die "apt-get install ${missing[*]} failed; see $STATE/log/apt.log"
}

write_config() {
  local host mem
  host=$(hostname -s)
  # A node that reports less memory than configured is drained: declare ~95 % of what slurmd sees.
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem * 95 / 100 ))
  cat >"$CONF" <<CONF
# Written by launch/local_slurm/cluster.sh; rewritten on every start.
ClusterName=sista-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job starts again after ~12 s instead of ~126 s.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# No accounting database, as on many clusters; finished jobs go to a text file instead.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
NodeName=${NODES[0]} NodeAddr=127.0.0.1 NodeHostname=$host Port=${NODE_PORTS[0]} CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=127.0.0.1 NodeHostname=$host Port=${NODE_PORTS[1]} CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP
CONF
}

edit_hosts() {  # the node names must resolve (MASTER_ADDR is node1); in place: /etc/hosts may be a mount
  grep -q "$HOSTS_MARK" /etc/hosts || echo "127.0.0.1 ${NODES[*]} $HOSTS_MARK" >>/etc/hosts
}

restore_hosts() {
  grep -q "$HOSTS_MARK" /etc/hosts || return 0
  local kept
  kept=$(grep -v "$HOSTS_MARK" /etc/hosts)
  printf '%s\n' "$kept" >/etc/hosts
}

start_munge() {
  # munged wants its socket folder traversable by all, its key folder private
  mkdir -p "$STATE/munge/key"
  [[ -s $STATE/munge/key/munge.key ]] || dd if=/dev/urandom of="$STATE/munge/key/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$STATE/munge"
  chmod 0755 "$STATE/munge"
  chmod 0700 "$STATE/munge/key"
  chmod 0400 "$STATE/munge/key/munge.key"
  pid_alive "$STATE/run/munged.pid" && return 0
  setsid runuser -u munge -- munged -F --key-file="$STATE/munge/key/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE/munge/key/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/key/munged.seed" </dev/null >>"$STATE/log/munged.out" 2>&1 &
  echo $! >"$STATE/run/munged.pid"
  wait_for "munge" 10 munge_ok
}

munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>/dev/null; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q UP; }
nodes_ok() { [[ $(sinfo -h -N -t idle,mix,alloc -o %N 2>/dev/null | sort -u | wc -l) -eq ${#NODES[@]} ]]; }

wait_for() {  # wait_for NAME SECONDS CHECK
  local name=$1 seconds=$2 check=$3 i
  for ((i = 0; i < seconds * 5; i++)); do "$check" && return 0; sleep 0.2; done
  die "$name did not come up within ${seconds}s; logs in $STATE/log"
}

start_daemon() {  # start_daemon PIDFILE LOGNAME COMMAND... (foreground daemon, own session)
  local pidfile=$1 logname=$2
  shift 2
  pid_alive "$pidfile" && return 0
  setsid "$@" </dev/null >>"$STATE/log/$logname.out" 2>&1 &
  echo $! >"$pidfile"
}

up() {
  [[ $(id -u) -eq 0 ]] || die "needs root (it starts the SLURM daemons and edits /etc/hosts)"
  mkdir -p "$STATE"/{etc,run,log,ctld,bin} "${NODES[@]/#/$STATE/spool/}"
  if running && ctld_ok && nodes_ok; then
    say "already up"
    status
    return 0
  fi
  stop_daemons  # a half-started cluster: start again from nothing
  install_packages
  write_config
  install -m 0755 "$HERE/sacct" "$STATE/bin/sacct"
  edit_hosts
  if [[ ! -e /etc/slurm/slurm.conf ]]; then  # plain `sbatch` finds the cluster without SLURM_CONF
    mkdir -p /etc/slurm
    ln -s "$CONF" /etc/slurm/slurm.conf
    touch "$STATE/run/linked-etc-slurm-conf"
  fi
  start_munge
  start_daemon "$STATE/run/slurmctld.pid" slurmctld slurmctld -D -i -f "$CONF"
  wait_for slurmctld 20 ctld_ok
  local i
  for i in "${!NODES[@]}"; do
    start_daemon "$STATE/run/slurmd-${NODES[$i]}.pid" "slurmd-${NODES[$i]}" slurmd -D -N "${NODES[$i]}" -f "$CONF"
  done
  wait_for "slurmd ${NODES[*]}" 30 nodes_ok
  say "up: ${NODES[*]} in partition debug"
  env_lines
  say "logs: $STATE/log (slurmctld.log, slurmd-node1.log, slurmd-node2.log, munged.log, jobcomp.txt)"
}

env_lines() {
  echo "export SLURM_CONF=$CONF"
  echo "export PATH=$STATE/bin:\$PATH   # sacct stand-in (no accounting database)"
}

stop_pid() {  # stop_pid PIDFILE: TERM, wait, KILL; the pid file names a process this script started
  local pidfile=$1 pid i
  [[ -s $pidfile ]] || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_daemons() {
  local node
  for node in "${NODES[@]}"; do stop_pid "$STATE/run/slurmd-$node.pid" & done
  wait
  stop_pid "$STATE/run/slurmctld.pid"
  stop_pid "$STATE/run/munged.pid"
  rm -rf "$STATE/ctld"/* "$STATE/spool"/*/*  # the next start begins with no jobs
}

down() {
  if pid_alive "$STATE/run/slurmctld.pid" && ctld_ok; then
    # jobs first, while the daemons can still end their steps
    local jobs i
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -n ${jobs// } ]] && scancel --quiet $jobs 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  stop_daemons
  restore_hosts
  if [[ -e $STATE/run/linked-etc-slurm-conf ]]; then
    [[ $(readlink /etc/slurm/slurm.conf || true) == "$CONF" ]] && rm -f /etc/slurm/slurm.conf
    rm -f "$STATE/run/linked-etc-slurm-conf"
  fi
  say "down; logs kept in $STATE/log"
}

status() {
  local f
  for f in $(daemon_pids); do
    if pid_alive "$f"; then echo "$(basename "$f" .pid): pid $(cat "$f")"; else echo "$(basename "$f" .pid): not running"; fi
  done
  if pid_alive "$STATE/run/slurmctld.pid"; then sinfo -N -o "%N %T %c %m" || true; fi
  say "logs: $STATE/log"
  running
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
