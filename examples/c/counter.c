/* The smallest ckpt program in C: a counter that survives being killed.
 *
 * Build (after `cargo build --release -p ckpt-mpi`, with PKG_CONFIG_PATH=<checkout>/mpi-shim):
 *   mpicc counter.c $(pkg-config --cflags --libs ckpt) -o counter
 * Run it twice; the second run goes on from the first one's last checkpoint:
 *   mpirun -np 2 ./counter /tmp/counter-job 5
 */
#include <stdio.h>
#include <stdlib.h>
#include <ckpt.h>

int main(int argc, char **argv) {
    int rank;
    long counter = 0;
    uint64_t version = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: counter DIR STEPS\n");
        return 2;
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (ckpt_init(MPI_COMM_WORLD, argv[1], "counter", NULL) != CKPT_SUCCESS ||
        ckpt_protect(0, &counter, sizeof counter) != CKPT_SUCCESS ||
        ckpt_restart_test(&version) != CKPT_SUCCESS ||
        (version > 0 && ckpt_restart(version) != CKPT_SUCCESS)) {
        fprintf(stderr, "rank %d: %s\n", rank, ckpt_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (long step = 0; step < atol(argv[2]); step++) {
        counter++;
        if (ckpt_checkpoint(&version) != CKPT_SUCCESS) {
            fprintf(stderr, "rank %d: %s\n", rank, ckpt_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    if (rank == 0) printf("counter %ld (checkpoint version %llu)\n", counter, (unsigned long long)version);
    ckpt_finalize();
    MPI_Finalize();
    return 0;
}
