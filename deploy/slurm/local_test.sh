#!/usr/bin/env bash
# A real Slurm on this machine, for deploy/slurm/sweep.sbatch: installs Debian's slurm-wlm and
# munge when missing, starts munged, slurmctld and slurmd by hand (no systemd) with a generated
# slurm.conf in a temporary folder (one node, localhost, free ports), submits the sbatch array
# of a tiny stability sweep (4 cells, 2 tasks at once), waits for it, merges, runs the same grid
# in one process and checks that the two tables (report.md) and charts are the same. Stops the
# daemons it started and removes the folder (ULP_KEEP=1 keeps it) on the way out.
#
#   deploy/slurm/local_test.sh            # prints the steps; last line "slurm: ok" or "slurm: FAILED ..."
#
# Needs root or sudo (apt-get, and slurmd runs the tasks as the submitting user). Environment:
# ULP_DENO (the deno command, default `deno`; `npx -y deno@2.9.6` works), DENO_WEBGPU_BACKEND
# (default vulkan), ULP_SLURM_TIMEOUT (seconds for the array, default 600).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT="$(pwd)"
DENO="${ULP_DENO:-deno}"
TIMEOUT="${ULP_SLURM_TIMEOUT:-600}"
export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
t0=$SECONDS

fail() { echo "slurm: FAILED: $*"; exit 1; }
step() { echo "== [$((SECONDS - t0))s] $*"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  step "installing slurm-wlm and munge"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends slurm-wlm munge >/dev/null ||
    { $SUDO apt-get update -qq >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurm-wlm munge \
      >/dev/null; } || fail "apt-get install slurm-wlm munge"
fi
PATH="$PATH:/usr/sbin:/sbin"

D="$(mktemp -d /tmp/ulp-slurm.XXXXXX)"
chmod 711 "$D"   # munged wants its socket's folder searchable by all, writable by none
mkdir -p "$D/state" "$D/spool" "$D/xdg"
chmod 700 "$D/xdg"
export XDG_RUNTIME_DIR="$D/xdg"
pids=()
cleanup() {
  if [ -f "$D/slurm.conf" ]; then
    SLURM_CONF="$D/slurm.conf" scancel --quiet --user "$(id -un)" 2>/dev/null || true
  fi
  for p in "${pids[@]}"; do $SUDO kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do $SUDO kill -9 "$p" 2>/dev/null || true; done
  if [ "${ULP_KEEP:-0}" = 1 ]; then echo "kept $D"; else $SUDO rm -rf "$D"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

step "munged"
$SUDO sh -c "dd if=/dev/urandom of='$D/munge.key' bs=1024 count=1 2>/dev/null && chmod 400 '$D/munge.key'"
$SUDO munged -F -f --socket="$D/munge.sock" --key-file="$D/munge.key" --pid-file="$D/munged.pid" \
  --log-file="$D/munged.log" --seed-file="$D/munged.seed" >"$D/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$D/munge.sock" ] && break; sleep 0.2; done
munge -S "$D/munge.sock" -n | unmunge -S "$D/munge.sock" >/dev/null ||
  { cat "$D/munged.out"; fail "munged does not answer"; }

# Two free ports next to each other, away from Slurm's defaults.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 20); do
  P=$((20000 + RANDOM % 20000))
  port_free "$P" && port_free "$((P + 1))" && break
done
HOST="$(hostname -s)"
MEM=$(($(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) / 2))
CPUS="$(nproc)"
cat >"$D/slurm.conf" <<EOF
ClusterName=ulptest
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${P}
SlurmdPort=$((P + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${D}/munge.sock
CredType=cred/munge
StateSaveLocation=${D}/state
SlurmdSpoolDir=${D}/spool
SlurmctldPidFile=${D}/slurmctld.pid
SlurmdPidFile=${D}/slurmd.pid
SlurmctldLogFile=${D}/slurmctld.log
SlurmdLogFile=${D}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=ulpnode NodeAddr=127.0.0.1 NodeHostname=${HOST} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=ulp Nodes=ulpnode Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$D/slurm.conf"

step "slurmctld and slurmd on ports ${P} and $((P + 1))"
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -D -i >"$D/slurmctld.out" 2>&1 &
pids+=($!)
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd -D -N ulpnode >"$D/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 120); do
  state="$(sinfo -h -n ulpnode -o %t 2>/dev/null)"
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  tail -n 20 "$D/slurmctld.log" "$D/slurmd.log" 2>/dev/null
  fail "the node is '${state}', not idle, after 60 s"
fi
sinfo

step "a tiny stability sweep as an array job"
DATA="$D/data.txt"
words=(the loss of a tiny model falls slowly and "then")
for i in $(seq 0 399); do printf '%s ' "${words[$(((i * 7) % 10))]}"; done >"$DATA"
GRID=(--formats "bf16,e8m3" --lrs 3e-3 --seeds 2 --steps 6 --warmup 2 --layers 1 --heads 1
  --width 8 --block 4 --batch 2 --eval-batches 2 --sharpness-every 2 --data "$DATA")
ARRAY="$D/array" ONE="$D/one"
# shellcheck disable=SC2086 # DENO may be several words
N=$($DENO run --allow-read="$ROOT,$D" --allow-write="$ARRAY" examples/stability_sweep.ts \
  "${GRID[@]}" --out "$ARRAY" --list | wc -l)
[ "$N" = 4 ] || fail "--list gave ${N} cells, not 4"
export ULP_DENO="$DENO"
timeout "$TIMEOUT" sbatch --wait --array="0-$((N - 1))%2" --cpus-per-task=1 --mem=512M \
  --output="$D/task-%a.out" --chdir="$ROOT" deploy/slurm/sweep.sbatch \
  examples/stability_sweep.ts "${GRID[@]}" --out "$ARRAY"
rc=$?
for f in "$D"/task-*.out; do echo "--- $(basename "$f")"; cat "$f"; done
[ "$rc" != 124 ] || fail "the array job was still running after ${TIMEOUT} s"
[ "$rc" = 0 ] || fail "the array job ended with code ${rc} (the tasks' output is above)"
files=$(find "$ARRAY/cells" -name '*.json' | wc -l)
[ "$files" = "$N" ] || fail "${files} cell files for ${N} cells"

step "merge"
# shellcheck disable=SC2086
$DENO run --allow-read="$ROOT,$D" --allow-write="$ARRAY" examples/stability_sweep.ts \
  "${GRID[@]}" --out "$ARRAY" --merge || fail "--merge"

step "the same grid in one process"
# shellcheck disable=SC2086
$DENO run --allow-read="$ROOT,$D" --allow-write="$ONE" examples/stability_sweep.ts \
  "${GRID[@]}" --out "$ONE" >"$D/one.out" 2>&1 || { cat "$D/one.out"; fail "the one-process run"; }
cmp "$ARRAY/report.md" "$ONE/report.md" || {
  diff "$ARRAY/report.md" "$ONE/report.md"
  fail "the merged table differs from the one-process run's"
}
cmp "$ARRAY/loss.svg" "$ONE/loss.svg" || fail "the merged chart differs from the one-process run's"
cat "$ARRAY/report.md"
echo "slurm: ok (${N} array tasks; merged report.md and loss.svg equal the one-process run's; $((SECONDS - t0)) s)"
