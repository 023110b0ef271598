#!/usr/bin/env bash
# ckpt under a real single-node Slurm: ckpt's prolog and epilog configured, `heat` (np = 2
# under mpirun) submitted with a one-minute limit, `--signal=B:USR1@30` and `--requeue`
# (examples/slurm/heat.sbatch). Exits 0 only when all of this held:
#   - the USR1 checkpoint was taken before the time limit;
#   - the job requeued itself, and its next run printed `restarted-from V`;
#   - the prolog staged the checkpoint in from persistent storage;
#   - the final checksum equals an uninterrupted run's;
#   - the epilog flushed every committed version (they verify) and removed the cache.
# The daemons (munged, slurmctld, slurmd) run from a temporary directory without systemd and
# are stopped by their saved PIDs, also on failure. Needs root (slurmd runs jobs as users).
#
# What Slurm 22.05 needs here (measured on this machine kind, see docs/SLURM.md):
# slurmd -N localhost (the node's name is not the host's); AuthInfo cred_expire=10 (else a
# requeued job waits ~120 s for its old credential to expire); ProctrackType=proctrack/pgid;
# SelectType=select/cons_tres; JobRequeue=1; PrologFlags=Alloc.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
t0=$(date +%s)
say() { printf 'slurm-test [%3ds]: %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    echo "tests/slurm/run.sh must run as root (it starts slurmd)" >&2
    exit 1
fi
source "$here/scripts/deps.sh"
need=()
for p in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -n "${CKPT_BIN_DIR:-}" ] && [ -x "$CKPT_BIN_DIR/ckpt" ] && [ -x "$CKPT_BIN_DIR/heat" ]; then
    # .ci/run hands over the binaries that the fresh-system test just built from this tree.
    say "using ckpt and heat from $CKPT_BIN_DIR"
    CKPT="$CKPT_BIN_DIR/ckpt"
    HEAT="$CKPT_BIN_DIR/heat"
else
    say "building ckpt and heat"
    (cd "$here" && cargo build -q -p ckpt-cli --bin ckpt -p ckpt-examples --example heat)
    CKPT="$here/target/debug/ckpt"
    HEAT="$here/target/debug/examples/heat"
fi

ok=0
work=$(mktemp -d /tmp/ckpt-slurm.XXXXXX)
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ "$ok" != 1 ] && [ -d "$work/log" ]; then
        for f in "$work"/log/*.log; do echo "--- $f (last lines)"; tail -n 15 "$f"; done
    fi
    if [ -n "${KEEP_SLURM_TEST:-}" ]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

mkdir -p "$work"/{munge,state,spool,log,local,persistent,submit}
# munge: its own key, socket and pid file.
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$work/munge/munge.key"
chmod 0700 "$work/munge"
munged -F --force --key-file="$work/munge/munge.key" --socket="$work/munge/munge.socket" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
    --seed-file="$work/munge/munge.seed" >"$work/log/munged.out" 2>&1 &
pids+=($!)

cat >"$work/ckpt.toml" <<EOF
local_root = "$work/local"
persistent_root = "$work/persistent"
keep = 0
epilog_timeout_secs = 120
EOF
# Slurm runs hooks with an almost empty environment: wrappers say where things are.
for hook in prolog epilog; do
    cat >"$work/$hook.sh" <<EOF
#!/bin/sh
export CKPT_CONFIG=$work/ckpt.toml CKPT_BIN=$CKPT CKPT_HOOK_LOG=$work/log/ckpt-hooks.log
echo "\$(date +%T) $hook job \$SLURM_JOB_ID" >>$work/log/ckpt-hooks.log
exec $here/examples/slurm/$hook.sh
EOF
    chmod 0755 "$work/$hook.sh"
done

cpus=$(nproc)
cat >"$work/slurm.conf" <<EOF
ClusterName=ckpt
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobRequeue=1
PrologFlags=Alloc
Prolog=$work/prolog.sh
Epilog=$work/epilog.sh
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF="$work/slurm.conf"
for i in $(seq 50); do [ -S "$work/munge/munge.socket" ] && break; sleep 0.1; done
slurmctld -D -i -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$work/log/slurmd.out" 2>&1 &
pids+=($!)
for i in $(seq 100); do
    sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)' && break
    sleep 0.2
done
sinfo -h -o '%T' | grep -qE '^(idle|mixed)' || { tail -20 "$work"/log/*.log; fail "the node did not come up"; }
say "slurm is up: $(sinfo -h -o '%N %T %c')"

# The run must outlast the USR1 (14-28 s after the start here): size it from a short
# calibration run to about 60 s of computing on this machine today.
t_a=$(date +%s.%N)
mpirun --oversubscribe -np 2 "$HEAT" --store "$work/calibration" --n 512 --iters 2000 \
    --ckpt-every 0 >/dev/null
t_b=$(date +%s.%N)
iters=${HEAT_ITERS:-$(awk -v a="$t_a" -v b="$t_b" 'BEGIN {
    n = int(2000 * 60 / (b - a) / 2000) * 2000; if (n < 12000) n = 12000; if (n > 400000) n = 400000; print n }')}
say "submitting heat ($iters iterations, np = 2, 1-minute limit, USR1 at 30 s before it)"
job=$(cd "$work/submit" && sbatch --parsable --chdir="$work/submit" --output="$work/submit/job-%j.out" \
    --export=ALL,HEAT="$HEAT",CKPT_LOCAL_ROOT="$work/local",HEAT_ITERS="$iters" \
    "$here/examples/slurm/heat.sbatch")
say "job $job"

deadline=$(( $(date +%s) + 270 ))
while :; do
    state=$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    [ "$state" = COMPLETED ] && break
    case "$state" in FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) cat "$work/submit/job-$job.out" || true; fail "job $job ended $state";; esac
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$work/submit/job-$job.out" || true; fail "job $job still $state after 4.5 minutes"; }
    sleep 2
done
restarts=$(scontrol show job "$job" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
say "job $job completed after $restarts requeue(s)"
# The uninterrupted reference, outside Slurm, in its own store (after the job: no contention).
ref_out=$(mpirun --oversubscribe -np 2 "$HEAT" --store "$work/reference" --n 512 \
    --iters "$iters" --ckpt-every 2000)
ref=$(grep '^checksum' <<<"$ref_out" | awk '{print $2}')
say "uninterrupted checksum $ref"
out="$work/submit/job-$job.out"
cat "$out"

# Let the last epilog finish.
for i in $(seq 60); do [ -e "$work/local/$job" ] || break; sleep 0.5; done
echo "--- ckpt hooks log"; cat "$work/log/ckpt-hooks.log"

grep -q '^signal-checkpoint [0-9]* at iteration' "$out" || fail "no USR1 checkpoint in the job's output"
[ "${restarts:-0}" -ge 1 ] || fail "the job was not requeued"
grep -q '^restarted-from [0-9]' "$out" || fail "no run restarted from a checkpoint"
grep -q 'ckpt prolog: job '"$job"': staged version [0-9]' "$work/log/ckpt-hooks.log" \
    || fail "the prolog staged nothing in"
final=$(grep '^checksum' "$out" | tail -n 1 | awk '{print $2}')
[ "$final" = "$ref" ] || fail "final checksum $final differs from the uninterrupted $ref"
grep -q 'ckpt epilog: job '"$job"': flushed' "$work/log/ckpt-hooks.log" || fail "no epilog flush logged"
[ ! -e "$work/local/$job" ] || fail "the epilog left the cache $work/local/$job"
"$CKPT" verify "$work/persistent/$job" >/dev/null || fail "persistent storage does not verify"
"$CKPT" ls "$work/persistent/$job"
elapsed=$(( $(date +%s) - t0 ))
ok=1
say "all held (in ${elapsed} s)"
