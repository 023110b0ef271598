#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECS seconds each (default 60) from a
# copy of its seed corpus (fuzz/corpus), and prints the executions and any crash. Needs the
# nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`); exits 3 when either is missing, 1 if a target crashed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-60}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 3
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
