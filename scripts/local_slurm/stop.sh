#!/bin/bash
# scripts/local_slurm/stop.sh - stop what start.sh started (by pid file) and remove what it added
# (the /usr/local/bin/sacct stand-in and its /etc/hosts line, both marked; anything else is kept).
# Cancels all jobs first, so no slurmstepd/job processes are left behind. Safe to run twice.
set -u
wait_gone() { for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
if timeout 5 scontrol ping >/dev/null 2>&1; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    scancel $ids
    for _ in $(seq 100); do [ -z "$(squeue -h -t R,CG,S 2>/dev/null)" ] && break; sleep 0.2; done  # KillWait=5
  fi
  scontrol shutdown >/dev/null 2>&1 || true        # asks slurmctld and slurmd to exit
fi
for pf in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    [ "$pf" = /run/munge/munged.pid ] && kill "$pid"
    wait_gone "$pid" || { kill "$pid" 2>/dev/null; wait_gone "$pid" || kill -9 "$pid" 2>/dev/null; }
  fi
  rm -f "$pf"
done
MARK="added by torchstrap scripts/local_slurm/start.sh"
SHIM=/usr/local/bin/sacct
if [ -f "$SHIM" ] && grep -qF "$MARK" "$SHIM"; then rm -f "$SHIM"; fi
if grep -qF "$MARK" /etc/hosts 2>/dev/null; then
  kept=$(grep -vF "$MARK" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts   # rewritten in place: /etc/hosts is often a bind mount
fi
echo "[local-slurm] stopped"
