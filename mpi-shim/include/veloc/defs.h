/*
 * veloc/defs.h: VeloC 1.x constants, as ckpt's VeloC-compatible API defines them.
 */
#ifndef VELOC_DEFS_H
#define VELOC_DEFS_H

#define VELOC_SUCCESS (0)
#define VELOC_FAILURE (-1)

#define VELOC_MAX_NAME (1024)

#define VELOC_CKPT_ALL 0
#define VELOC_CKPT_SOME 1
#define VELOC_CKPT_REST 2

#define VELOC_RECOVER_ALL 0
#define VELOC_RECOVER_SOME 1
#define VELOC_RECOVER_REST 2

#endif /* VELOC_DEFS_H */
