#!/bin/sh
# Slurm Prolog (slurm.conf: Prolog=/path/to/prolog.sh, PrologFlags=Alloc): create the job's
# node-local checkpoint cache (mode 0700, owned by the job's user) and stage the newest
# committed checkpoint in from persistent storage, for a requeued job.
# Settings: /etc/ckpt/ckpt.toml, or the file CKPT_CONFIG names.
# A non-zero exit makes Slurm drain the node and requeue the job held: the prolog fails only
# when checkpoints exist but none could be staged (the job would otherwise start over).
CKPT=${CKPT_BIN:-/usr/local/bin/ckpt}
LOG=${CKPT_HOOK_LOG:-/var/log/slurm/ckpt-hooks.log}
exec "$CKPT" prolog >>"$LOG" 2>&1
