#!/usr/bin/env bash
# A real demo of ckpt's main job, on a fresh Debian 12 machine with Rust:
#  1. `heat`, a 2-D Jacobi solver whose grid lives in ckpt regions, checkpoints every 10
#     iterations; a run is killed at iteration 75 (a simulated node failure); the rerun
#     restarts from the newest committed version and ends with exactly the checksum of an
#     uninterrupted run. It runs as one MPI process (and under mpirun with -np 4 if asked).
#  2. The store is listed, inspected, verified and compacted.
#  3. `ckpt bench` checkpoints 256 MiB six times with 1 % of pages changing and restores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release -q -p ckpt-cli -p ckpt-examples --example heat --bins
BIN=target/release
NP=${NP:-0}
run_heat() {
    if [ "$NP" -gt 0 ]; then mpirun --oversubscribe -np "$NP" $BIN/examples/heat "$@"; else $BIN/examples/heat "$@"; fi
}
DIR=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
ARGS=(--n 512 --iters 100 --ckpt-every 10)

echo "== 1. heat without failures (reference)"
run_heat --store "$DIR/reference" "${ARGS[@]}" --ckpt-every 0 | tee "$DIR/ref.out"
echo
echo "== 2. heat with checkpoints, killed at iteration 75"
run_heat --store "$DIR/job" "${ARGS[@]}" --crash-at 75 2>/dev/null || echo "(the run died, as planned)"
echo
echo "== 3. the rerun restarts from the newest committed version"
run_heat --store "$DIR/job" "${ARGS[@]}" | tee "$DIR/rerun.out"
if [ "$(grep checksum "$DIR/ref.out")" = "$(grep checksum "$DIR/rerun.out")" ]; then
    echo "checksums match: the restarted run computed exactly what the uninterrupted one did"
else
    echo "CHECKSUMS DIFFER" >&2
    exit 1
fi
echo
echo "== 4. rank 0's chain: list, inspect the newest version, verify"
R0="$DIR/job/ranks/0000/0"
$BIN/ckpt ls "$R0"
newest=$(ls "$R0" | grep -E '^heat\.ckpt\.[0-9]+$' | sort -t. -k3 -n | tail -1)
$BIN/ckpt inspect "$R0/$newest"
$BIN/ckpt verify "$R0"
echo
echo "== 5. compact the job store, keeping the 2 newest committed versions"
$BIN/ckpt-compact "$DIR/job" --keep 2
$BIN/ckpt ls "$R0"
echo
echo "== 6. ckpt bench: 256 MiB, 1 % dirty, 6 versions"
$BIN/ckpt bench --dir "$DIR/bench" --state-mib 256 --dirty 0.01 --versions 6
echo
echo "demo files left in $DIR"
