#!/bin/sh
# Slurm Epilog (slurm.conf: Epilog=/path/to/epilog.sh): copy ("scavenge") every committed
# version of the job's node-local cache to persistent storage, verify it, apply retention
# there, and only then remove the cache. Safe to run twice; bounded by epilog_timeout_secs.
# It never deletes the only copy of a committed version: on any failure it keeps the cache
# and exits non-zero (Slurm then drains the node, so that an operator looks).
CKPT=${CKPT_BIN:-/usr/local/bin/ckpt}
LOG=${CKPT_HOOK_LOG:-/var/log/slurm/ckpt-hooks.log}
exec "$CKPT" epilog >>"$LOG" 2>&1
