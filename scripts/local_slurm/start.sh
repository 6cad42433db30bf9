#!/bin/bash
# scripts/local_slurm/start.sh - a real single-node Slurm cluster on localhost, for
# torchstrap's tests and CI (based on the shared local-slurm recipe).
# Debian 12 (Slurm 22.05), run as root, no systemd needed. Idempotent: installs
# what is missing, (re)writes /etc/slurm/slurm.conf, starts munged, slurmctld
# and slurmd as plain background daemons, waits until the node is idle.
# Partitions: debug (default, preemptible, 15 s grace) and high (preempts debug).
#
# Knobs (environment variables):
#   LOCAL_SLURM_CPUS=N      CPUs to advertise (default: the real count, at least 4,
#                           so a 2-task job and a second job fit; more than the
#                           real count is allowed, via config_overrides)
#   LOCAL_SLURM_SACCT_SHIM=0  do not install the /usr/local/bin/sacct stand-in
#   LOCAL_SLURM_RESTART=1   restart the daemons even if the cluster is up
# Stop with scripts/local_slurm/stop.sh: it removes what this script added outside Slurm's own
# files (the sacct stand-in, the /etc/hosts line; both carry MARK below). An existing
# /usr/local/bin/sacct that is not ours is never overwritten; /etc/hosts gets at most one line.
set -euo pipefail
now_ms() { date +%s%3N; }
T0=$(now_ms)
elapsed() { local d=$(( $(now_ms) - $1 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
log() { echo "[local-slurm] $*"; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
MARK="added by torchstrap scripts/local_slurm/start.sh"   # stop.sh removes what carries it
SHIM=/usr/local/bin/sacct

# ---------------------------------------------------------------- 1. install
PKGS="slurmctld slurmd slurm-client munge"
missing=""
for p in $PKGS; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
  TI=$(now_ms)
  log "installing:$missing"
  # keep the packages' init scripts from trying to start anything
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "install took $(elapsed "$TI") s"
fi

# --------------------------------------------- already up? then nothing to do
if [ "${LOCAL_SLURM_RESTART:-0}" != 1 ] && [ -f "$CONF" ] \
   && [ "$(timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)" = idle ]; then
  log "cluster already up (node $NODE idle); set LOCAL_SLURM_RESTART=1 to restart"
  exit 0
fi
# stop leftovers from an earlier start (by pid file only)
for pf in /run/slurmctld.pid /run/slurmd.pid; do
  pid=$(cat "$pf" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pf"
done

# ------------------------------------------------------------- 2. config
if ! getent hosts "$NODE" >/dev/null && ! grep -qF "$MARK" /etc/hosts; then   # MASTER_ADDR etc. must resolve
  echo "127.0.0.1 $NODE # $MARK" >> /etc/hosts
fi
REAL_CPUS=$(nproc --all)
DEFAULT_CPUS=$(( REAL_CPUS > 4 ? REAL_CPUS : 4 ))
CPUS=${LOCAL_SLURM_CPUS:-$DEFAULT_CPUS}
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))   # 90% of RAM
OVERRIDES=""
[ "$CPUS" -gt "$REAL_CPUS" ] && OVERRIDES="SlurmdParameters=config_overrides"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF" <<EOF
# single-node CI cluster, written by torchstrap scripts/local_slurm/start.sh
ClusterName=localci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs wait cred_expire+1 s before they may start again (default 120; minimum 5)
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# scheduling: look at pending jobs every second (defaults 60 s / 30 s)
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# requeue / preemption
JobRequeue=1
KillWait=5
MinJobAge=3600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
${OVERRIDES}
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
# jobs in "high" preempt (requeue) jobs in "debug"; these get --signal's signal at once, then 15 s grace
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=15
PartitionName=high  Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
EOF
rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*   # fresh cluster: no old jobs, ids restart at 1

if [ "${LOCAL_SLURM_SACCT_SHIM:-1}" = 1 ] && [ -e "$SHIM" ] && ! grep -qF "$MARK" "$SHIM"; then
  log "$SHIM exists and is not ours: left alone (submitit needs a sacct that works without accounting)"
elif [ "${LOCAL_SLURM_SACCT_SHIM:-1}" = 1 ]; then
  # accounting_storage/none makes the real sacct fail; submitit needs sacct for job states
  cat > "$SHIM" <<'SHIM'
#!/bin/bash
# added by torchstrap scripts/local_slurm/start.sh (stop.sh removes it): a sacct stand-in for
# AccountingStorageType=accounting_storage/none, answering from slurmctld memory via `squeue -t all`
# (jobs that ended less than MinJobAge s ago). Supports -o/--format, -P/-p,
# -n, -j/--jobs; other options are ignored. Unknown fields print empty.
fields="JobID,JobName,Partition,State,ExitCode"; jobs=""; header=1; trail=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--format) fields="$2"; shift ;;
    -o*) fields="${1#-o}" ;;
    --format=*) fields="${1#--format=}" ;;
    -j|--jobs) jobs="${jobs:+$jobs,}$2"; shift ;;
    -j*) jobs="${jobs:+$jobs,}${1#-j}" ;;
    --jobs=*) jobs="${jobs:+$jobs,}${1#--jobs=}" ;;
    -P|--parsable2) trail="" ;;
    -p|--parsable) trail="|" ;;
    -n|--noheader) header=0 ;;
    -[SEMAuMrstuLwWxF]|--starttime|--endtime|--state|--user|--partition|--name) shift ;;
    *) ;;
  esac
  shift
done
fmt=""; hdr=""
IFS=',' read -ra F <<< "$fields"
for f in "${F[@]}"; do
  name="${f%%%*}"
  case "${name,,}" in
    jobid|jobidraw) c="%i" ;; state) c="%T" ;; nodelist) c="%N" ;;
    jobname) c="%j" ;; partition) c="%P" ;; user) c="%u" ;; account) c="%a" ;;
    elapsed) c="%M" ;; timelimit) c="%l" ;; start) c="%S" ;; end) c="%e" ;;
    submit) c="%V" ;; nnodes) c="%D" ;; ncpus|alloccpus) c="%C" ;; reason) c="%r" ;;
    *) c="" ;;
  esac
  fmt="${fmt:+$fmt|}$c"; hdr="${hdr:+$hdr|}$name"
done
[ "$header" = 1 ] && echo "$hdr$trail"
args=(-h -t all -o "$fmt$trail")
[ -n "$jobs" ] && args+=(-j "$jobs")
squeue "${args[@]}" 2>/dev/null
exit 0
SHIM
  chmod 755 "$SHIM"
fi

# ------------------------------------------------------------- 3. daemons
TS=$(now_ms)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
  for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
fi
slurmctld                                         # daemonizes
slurmd -N "$NODE"                                 # daemonizes
state=""
for _ in $(seq 300); do                           # up to 60 s
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 0.2
done
if [ "$state" != idle ]; then
  log "node not idle (state='$state'); logs follow" >&2
  tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
sinfo
log "daemons up in $(elapsed "$TS") s; total $(elapsed "$T0") s"
