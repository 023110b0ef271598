/* A heat-distribution program on the VeloC API (written for ckpt's tests).
 *
 * usage: heat_veloc CFG ITERS CKPT_EVERY CRASH_AT [split]
 * With `split`, checkpoints use VELOC_Checkpoint_wait + begin/mem/end and restarts
 * begin/Recover_mem/end, as VeloC's own examples do; the grid is heap memory, freed before
 * VELOC_Finalize.
 * Each rank owns ROWS rows of a COLS-wide plate; Jacobi sweeps with halo exchange. It
 * restarts from the newest version complete on every rank, checkpoints every CKPT_EVERY
 * iterations (version = iteration), and, if CRASH_AT > 0, rank 1 (or 0 alone) dies right
 * after the checkpoint of iteration CRASH_AT. Prints "restarted from V" and "checksum X". */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <veloc.h>

#define ROWS 64
#define COLS 256

static double *grid, *next;

int main(int argc, char **argv) {
    int rank, size, i, j, iter = 0;
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: heat_veloc CFG ITERS CKPT_EVERY CRASH_AT [split]\n");
        return 2;
    }
    int iters = atoi(argv[2]), every = atoi(argv[3]), crash_at = atoi(argv[4]);
    int split = argc == 6;
    grid = malloc(sizeof(double) * (ROWS + 2) * COLS);
    next = malloc(sizeof(double) * (ROWS + 2) * COLS);
    if (!grid || !next) return 2;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (VELOC_Init(MPI_COMM_WORLD, argv[1]) != VELOC_SUCCESS) {
        fprintf(stderr, "rank %d: VELOC_Init failed\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    for (i = 0; i < (ROWS + 2) * COLS; i++) grid[i] = 0.0;
    if (rank == 0)
        for (j = 0; j < COLS; j++) grid[COLS + j] = 100.0; /* hot top edge */
    VELOC_Mem_protect(0, &iter, 1, sizeof(int));
    VELOC_Mem_protect(1, grid, (ROWS + 2) * COLS, sizeof(double));
    int v = VELOC_Restart_test("heat", 0);
    if (v >= 0 && split) {
        if (VELOC_Restart_begin("heat", v) != VELOC_SUCCESS || VELOC_Recover_size(1) != (int)(sizeof(double) * (ROWS + 2) * COLS) ||
            VELOC_Recover_mem() != VELOC_SUCCESS || VELOC_Restart_end(1) != VELOC_SUCCESS) {
            fprintf(stderr, "rank %d: restart of %d failed\n", rank, v);
            MPI_Abort(MPI_COMM_WORLD, 4);
        }
    }
    if (v >= 0) {
        if (!split && VELOC_Restart("heat", v) != VELOC_SUCCESS) {
            fprintf(stderr, "rank %d: VELOC_Restart(%d) failed\n", rank, v);
            MPI_Abort(MPI_COMM_WORLD, 4);
        }
        if (rank == 0) printf("restarted from %d\n", v);
        if (iter != v) {
            fprintf(stderr, "rank %d: restored iteration %d, expected %d\n", rank, iter, v);
            MPI_Abort(MPI_COMM_WORLD, 5);
        }
    } else if (rank == 0) {
        printf("fresh start\n");
    }
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;
    while (iter < iters) {
        MPI_Sendrecv(&grid[COLS], COLS, MPI_DOUBLE, up, 0, &grid[(ROWS + 1) * COLS], COLS,
                     MPI_DOUBLE, down, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(&grid[ROWS * COLS], COLS, MPI_DOUBLE, down, 1, &grid[0], COLS, MPI_DOUBLE,
                     up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (i = 1; i <= ROWS; i++)
            for (j = 0; j < COLS; j++) {
                double l = j > 0 ? grid[i * COLS + j - 1] : 0.0;
                double r = j < COLS - 1 ? grid[i * COLS + j + 1] : 0.0;
                next[i * COLS + j] = 0.25 * (grid[(i - 1) * COLS + j] + grid[(i + 1) * COLS + j] + l + r);
            }
        if (rank == 0)
            for (j = 0; j < COLS; j++) next[COLS + j] = 100.0;
        for (i = COLS; i < (ROWS + 1) * COLS; i++) grid[i] = next[i];
        iter++;
        if (iter % every == 0) {
            int rc = split ? (VELOC_Checkpoint_wait() == VELOC_SUCCESS &&
                              VELOC_Checkpoint_begin("heat", iter) == VELOC_SUCCESS &&
                              VELOC_Checkpoint_mem() == VELOC_SUCCESS &&
                              VELOC_Checkpoint_end(1) == VELOC_SUCCESS ? VELOC_SUCCESS : VELOC_FAILURE)
                           : VELOC_Checkpoint("heat", iter);
            if (rc != VELOC_SUCCESS) {
                fprintf(stderr, "rank %d: checkpoint %d failed\n", rank, iter);
                MPI_Abort(MPI_COMM_WORLD, 6);
            }
            if (iter == crash_at && rank == size - 1) {
                fprintf(stderr, "rank %d: crashing after checkpoint %d\n", rank, iter);
                _exit(9);
            }
        }
    }
    double local = 0.0, total = 0.0;
    for (i = COLS; i < (ROWS + 1) * COLS; i++) local += grid[i] * (double)(i % 7 + 1);
    MPI_Reduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("checksum %.17g\n", total);
    free(grid);
    free(next);
    if (VELOC_Finalize(0) != VELOC_SUCCESS) return 7;
    MPI_Finalize();
    return 0;
}
