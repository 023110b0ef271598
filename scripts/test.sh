#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust. Installs what the tests need
# (OpenMPI, libclang) from Debian's packages first. This is the command README.md gives and
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

# Build everything, benches included, so that nothing rots unbuilt.
cargo build --workspace --all-targets
# Every test: unit, property, integration (crash, corruption, DragonFly, uffd, compaction),
# CLI, MPI (heat under mpirun at np = 1, 2, 4), doc tests.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# The engine alone, as a production build has it (without the test crates' fault-injection
# feature): its unit tests include one proving that CKPT_FAULT_* then do nothing.
cargo test -p ckpt-engine --lib --no-fail-fast 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "ckpt: %d passed, %d failed\n", p, f }' "$log"
exit $status
