#!/usr/bin/env bash
# A real demo of ckpt's main job on a fresh Debian 12 machine with Rust: checkpoint 256 MiB of
# state six times with 1 % of pages changing, restore the newest and the first version and
# compare them with what was written, then list, inspect, verify and export the chain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ckpt-cli -q
CKPT=target/release/ckpt
DIR=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
echo "== ckpt bench: 256 MiB, 1 % dirty, 6 versions, in $DIR"
$CKPT bench --dir "$DIR" --state-mib 256 --dirty 0.01 --versions 6 --tracking hash
echo
echo "== ckpt ls"
$CKPT ls "$DIR"
echo
echo "== ckpt inspect (newest version)"
newest=$($CKPT ls "$DIR" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["versions"][-1]["file"])' 2>/dev/null || ls "$DIR" | sort -t. -k3 -n | tail -1)
$CKPT inspect "$DIR/$newest"
echo
echo "== ckpt verify"
$CKPT verify "$DIR"
echo
echo "== ckpt restore (newest) to $DIR/out"
$CKPT restore "$DIR" --out "$DIR/out"
ls -l "$DIR/out"
echo
echo "demo store left in $DIR"
