/*
 * veloc.h: ckpt's VeloC-compatible API. The names, signatures and return codes of VeloC
 * 1.x's memory-based API, so that a VeloC application relinks against libckpt unchanged.
 *
 * Each rank's version V of checkpoint `name` is the file <dir>/<name>-<rank>-<V>.dat, in the
 * configuration's `scratch` directory and again in `persistent`; it holds ckpt's format, a
 * delta against the rank's previous version. VELOC_Restart_test returns the newest version
 * complete on every rank (never the maximum over ranks). Deleting every rank's files of a
 * version makes it, and the versions that are deltas against it, unavailable.
 *
 * Every function returns VELOC_SUCCESS or VELOC_FAILURE (VELOC_Restart_test and
 * VELOC_Recover_size return a value, or VELOC_FAILURE); a failure's message is logged to
 * stderr. Thread safety and the rules for protected memory are those of ckpt.h.
 */
#ifndef VELOC_H
#define VELOC_H

#include <stddef.h>
#include <string.h>
#include <mpi.h>

#include "veloc/defs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Starts a session: reads the configuration (`scratch` and `mode` required). Collective. */
int VELOC_Init(MPI_Comm comm, const char *cfg_file);
/* VELOC_Init with a Fortran communicator handle (MPI_Fint), for Fortran bindings. */
int VELOC_Init_fortran(int comm, const char *cfg_file);
/* VELOC_Init for one process, without MPI. */
int VELOC_Init_single(unsigned int id, const char *cfg_file);
/* Waits for copies to persistent storage in flight. Never deletes a checkpoint. */
int VELOC_Finalize(int cleanup);

/* Protects count * base_size bytes at ptr as region id; again for a protected id moves and
 * resizes it. The memory must stay valid until unprotected or finalized. */
int VELOC_Mem_protect(int id, void *ptr, size_t count, size_t base_size);
int VELOC_Mem_unprotect(int id);

int VELOC_Checkpoint_begin(const char *name, int version);
int VELOC_Checkpoint_mem(void);
int VELOC_Checkpoint_selective(int mode, int *ids, int no_ids);
/* Writes the checkpoint; in sync mode it is durable in scratch and persistent on return.
 * Collective. */
int VELOC_Checkpoint_end(int success);
int VELOC_Checkpoint_wait(void);
int VELOC_Backend_ready(void);
/* Begin, Checkpoint_mem, end. Collective. */
int VELOC_Checkpoint(const char *name, int version);

/* The newest version below `version` (no bound if 0) complete on every rank, or
 * VELOC_FAILURE (-1) if there is none. Collective. */
int VELOC_Restart_test(const char *name, int version);
/* Collective: fails on every rank if any rank has no complete copy (scratch, then
 * persistent). */
int VELOC_Restart_begin(const char *name, int version);
int VELOC_Recover_mem(void);
int VELOC_Recover_selective(int mode, int *ids, int no_ids);
/* The stored size in bytes of region id, after VELOC_Restart_begin; -1 if unknown. */
int VELOC_Recover_size(int id);
int VELOC_Restart_end(int success);
/* Restart_begin, Recover_mem, Restart_end. Collective. */
int VELOC_Restart(const char *name, int version);

/* Writes into `routed` (at least VELOC_MAX_NAME bytes) the path where the file `original`
 * is saved with (during a checkpoint) or restored from (during a restart) the checkpoint. */
int VELOC_Route_file(const char *original, char *routed);

#ifdef __cplusplus
}
#endif

#endif /* VELOC_H */
