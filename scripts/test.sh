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
cargo test --workspace --no-fail-fast
