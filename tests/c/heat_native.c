/* A heat program on ckpt's native C API (ckpt's tests).
 *
 * usage: heat_native DIR ITERS CKPT_EVERY CRASH_AT [async]
 * As heat_veloc.c: rows split over the ranks, Jacobi sweeps with halo exchange, restart from
 * the newest version committed on every rank, a checkpoint every CKPT_EVERY iterations, and
 * the last rank dies after the checkpoint of iteration CRASH_AT (if > 0). With `async`,
 * checkpoints are ckpt_checkpoint_async (each commits at the next one, or at ckpt_wait). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <ckpt.h>

#define ROWS 64
#define COLS 256

static double grid[(ROWS + 2) * COLS], next[(ROWS + 2) * COLS];

static void check(int rc, const char *what, int rank) {
    if (rc != CKPT_SUCCESS) {
        fprintf(stderr, "rank %d: %s failed: %s: %s\n", rank, what, ckpt_strerror(rc), ckpt_last_error());
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
}

int main(int argc, char **argv) {
    int rank, size, i, j;
    long long iter = 0;
    uint64_t v = 0;
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: heat_native DIR ITERS CKPT_EVERY CRASH_AT [async]\n");
        return 2;
    }
    int nonblocking = argc == 6;
    long long iters = atoll(argv[2]), every = atoll(argv[3]), crash_at = atoll(argv[4]);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    check(ckpt_init(MPI_COMM_WORLD, argv[1], "heat", NULL), "ckpt_init", rank);
    for (i = 0; i < (ROWS + 2) * COLS; i++) grid[i] = 0.0;
    if (rank == 0)
        for (j = 0; j < COLS; j++) grid[COLS + j] = 100.0;
    check(ckpt_protect(0, &iter, sizeof iter), "ckpt_protect", rank);
    check(ckpt_protect(1, grid, sizeof grid), "ckpt_protect", rank);
    check(ckpt_restart_test(&v), "ckpt_restart_test", rank);
    if (v > 0) {
        check(ckpt_restart(v), "ckpt_restart", rank);
        if (rank == 0) printf("restarted from version %llu at iteration %lld\n", (unsigned long long)v, iter);
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
            if (nonblocking)
                check(ckpt_checkpoint_async(&v), "ckpt_checkpoint_async", rank);
            else
                check(ckpt_checkpoint(&v), "ckpt_checkpoint", rank);
            if (iter == crash_at && rank == size - 1) {
                fprintf(stderr, "rank %d: crashing after checkpoint version %llu\n", rank, (unsigned long long)v);
                _exit(9);
            }
        }
    }
    if (nonblocking) {
        uint64_t committed = 0;
        check(ckpt_wait(&committed), "ckpt_wait", rank);
        if (rank == 0) printf("committed %llu\n", (unsigned long long)committed);
    }
    double local = 0.0, total = 0.0;
    for (i = COLS; i < (ROWS + 1) * COLS; i++) local += grid[i] * (double)(i % 7 + 1);
    MPI_Reduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("checksum %.17g\n", total);
    check(ckpt_finalize(), "ckpt_finalize", rank);
    MPI_Finalize();
    return 0;
}
