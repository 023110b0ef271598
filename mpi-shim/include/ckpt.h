/*
 * ckpt.h: the native C API of ckpt, an incremental delta checkpoint library for HPC jobs.
 *
 * Link with libckpt (pkg-config --cflags --libs ckpt). The C declarations here are checked
 * against the library's code by its test suite (mpi-shim/tests/headers.rs).
 *
 * A session: ckpt_init (or ckpt_init_single), ckpt_protect the memory to save, then
 * ckpt_restart_test / ckpt_restart once at start-up and ckpt_checkpoint at safe points, and
 * ckpt_finalize at the end. In an MPI session, the calls marked "collective" must be made by
 * every rank of the communicator, in the same order; each returns the same result on every
 * rank: a checkpoint is committed on every rank or on none, and a restart restores the newest
 * version committed on all ranks.
 *
 * Every function returns CKPT_SUCCESS (0) or a negative CKPT_ERR_* code; ckpt_strerror
 * describes a code and ckpt_last_error gives the message of the last failure, naming the
 * file or rank and what was wrong. Messages are also logged to stderr (CKPT_LOG=off|error|
 * warn|info|debug sets the level; default warn).
 *
 * Thread safety: any thread may call any function; calls are serialized inside the library.
 * Collective calls use MPI from the calling thread, so MPI must allow it (MPI_THREAD_SERIALIZED
 * when several threads call ckpt, MPI_THREAD_FUNNELED or above when one thread does). While a
 * ckpt call runs, no other thread may write protected memory. No error unwinds into C: an
 * internal failure returns CKPT_ERR_INTERNAL.
 */
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CKPT_SUCCESS 0
#define CKPT_ERR_ARG (-1)       /* an argument is invalid: null pointer, negative id, ...   */
#define CKPT_ERR_STATE (-2)     /* out of order: not initialized, twice, nothing protected */
#define CKPT_ERR_IO (-3)        /* input/output error (the message names the file)          */
#define CKPT_ERR_CORRUPT (-4)   /* a checkpoint file is corrupt or not what its name says   */
#define CKPT_ERR_NOT_FOUND (-5) /* no such version, or no checkpoint at all                 */
#define CKPT_ERR_REGION (-6)    /* the protected regions do not match the checkpoint's      */
#define CKPT_ERR_RANKS (-7)     /* failed on one or more ranks (the message names each)     */
#define CKPT_ERR_CONFIG (-8)    /* the configuration cannot be used                         */
#define CKPT_ERR_INTERNAL (-9)  /* an internal error; the call was abandoned                */

/* Starts an MPI session over (a duplicate of) comm: checkpoints of chain `name` in the job
 * store `dir` (one directory per rank under it, created mode 0700). config_file may be NULL
 * (then the file named by the CKPT_CONFIG variable, if set, is used), or a file of
 * `key = value` lines: tracking (auto|hash|uffd), compression (zstd level, 0 for none),
 * max_chain_depth, page_size, audit_every, snapshot (auto|copy|fork), flush_stall_secs (a
 * forked flush stuck on locks this long is killed; 120 by default, 0 never); CKPT_<KEY>
 * variables override it. A TOML
 * `[storage]` table after those lines gives storage levels instead of `dir`: a node-local
 * cache, partner copies, persistent storage (see the README, "Multi-level storage").
 * MPI must be initialized. Collective. */
int ckpt_init(MPI_Comm comm, const char *dir, const char *name, const char *config_file);

/* ckpt_init for Fortran callers: comm is a Fortran handle (MPI_Fint). Collective. */
int ckpt_init_fortran(int comm, const char *dir, const char *name, const char *config_file);

/* Starts a session for one process, without MPI: chain `name` in directory `dir`. */
int ckpt_init_single(const char *dir, const char *name, const char *config_file);

/* Protects `bytes` bytes at `ptr` as region `id` (id >= 0); protecting a protected id again
 * moves and resizes it. The memory must stay valid until ckpt_unprotect(id) or
 * ckpt_finalize. */
int ckpt_protect(int id, void *ptr, size_t bytes);

/* Stops protecting region `id`; its memory may then be freed. */
int ckpt_unprotect(int id);

/* Writes a checkpoint of the protected regions (a delta: only the pages that changed) and
 * stores its version number in *version (if version is not NULL). Collective: committed on
 * every rank or on none. */
int ckpt_checkpoint(uint64_t *version);

/* Starts a checkpoint and returns once its snapshot is taken: the protected memory may be
 * written at once while the version is hashed, compressed and written in the background.
 * Stores its number in *version (if not NULL). At most one is in flight: the next call
 * waits for the previous one. Collective: in an MPI session the previous asynchronous
 * version is committed here, once every rank's flush is durable (if it could not be, this
 * returns the error and starts nothing). */
int ckpt_checkpoint_async(uint64_t *version);

/* Waits until the asynchronous checkpoint in flight (if any) is durable and committed on
 * every rank, and stores its version in *committed (0 if none was in flight; if not NULL).
 * Collective. ckpt_finalize does this too. */
int ckpt_wait(uint64_t *committed);

/* Stores in *version the newest version committed on every rank whose files check out on
 * every rank, or 0 if there is none. Restores nothing. Collective. */
int ckpt_restart_test(uint64_t *version);

/* Restores `version` (0: the newest committed on every rank) into the protected regions,
 * which must be the regions checkpointed, with the same sizes. Collective. */
int ckpt_restart(uint64_t version);

/* 1 if a checkpoint was requested since the last call (a signal armed by ckpt_catch_signal,
 * on any rank), else 0; negative on error. Collective: every rank gets the same answer, so
 * all checkpoint at the same iteration. */
int ckpt_should_checkpoint(void);

/* 1 if the job should stop now (an operator's `ckpt halt DIR` was honoured at the last
 * checkpoint), else 0; negative on error. The same on every rank. */
int ckpt_should_exit(void);

/* Makes signal `signum` (e.g. SIGUSR1, as Slurm's --signal=B:USR1@60 sends) request a
 * checkpoint. The handler only sets a flag. */
int ckpt_catch_signal(int signum);

/* Commits the asynchronous checkpoint in flight, if any (as ckpt_wait), then ends the
 * session, even if that commit failed (the failure is returned). Never deletes a
 * checkpoint. Collective. */
int ckpt_finalize(void);

/* A static description of an error code. */
const char *ckpt_strerror(int code);

/* The message of this thread's last failure ("" if none), valid until its next ckpt call. */
const char *ckpt_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_H */
