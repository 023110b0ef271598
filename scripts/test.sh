#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust. Installs what the tests need.
# This is the command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_pkgs[@]}"
fi

# Build everything, benches included, so that nothing rots unbuilt.
cargo build --workspace --all-targets
# Every test: unit, property, integration (crash, corruption, DragonFly), CLI, doc tests.
cargo test --workspace
