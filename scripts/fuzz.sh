#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECS seconds each (default 60) from a
# copy of its seed corpus (fuzz/corpus), and prints the executions and any crash. Needs the
# nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (installed with `cargo install cargo-fuzz --locked` when missing); exits 3 when the nightly
# toolchain is missing or cargo-fuzz cannot be installed, 1 if a target crashed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-60}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    # A fresh machine: crates.io is reachable, so install it (once, into ~/.cargo/bin).
    echo "fuzz: cargo-fuzz is not installed; installing it (cargo install cargo-fuzz --locked)" >&2
    if ! cargo install cargo-fuzz --locked >&2 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz: cargo-fuzz could not be installed" >&2
        exit 3
    fi
fi
cd "$here/fuzz"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
total=0
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$target"
    cp -r "corpus/$target/." "$work/$target/" 2>/dev/null || true
    log="$work/$target.log"
    if cargo +nightly fuzz run "$target" "$work/$target" -- -max_total_time="$secs" \
        -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        echo "fuzz: $target: ${runs:-?} executions in ${secs} s, no crash"
        total=$(( total + ${runs:-0} ))
    else
        echo "fuzz: $target: CRASH" >&2
        tail -n 40 "$log" >&2
        status=1
    fi
done
echo "fuzz: $total executions in all"
exit "$status"
