/* Calls every VeloC function with bad arguments, out of order, and before initialization;
 * each must return VELOC_FAILURE (with a message on stderr) and none may crash or hang.
 * usage: veloc_bad_args GOOD_CFG   (run under mpirun; prints "bad-args: N checks passed") */
#include <stdio.h>
#include <stdlib.h>
#include <veloc.h>

static int checks = 0, failed = 0;

#define EXPECT_FAIL(call)                                                           \
    do {                                                                            \
        int rc_ = (call);                                                           \
        checks++;                                                                   \
        if (rc_ != VELOC_FAILURE) {                                                 \
            fprintf(stderr, "line %d: %s returned %d, not VELOC_FAILURE\n", __LINE__, #call, rc_); \
            failed++;                                                               \
        }                                                                           \
    } while (0)

#define EXPECT_OK(call)                                                             \
    do {                                                                            \
        int rc_ = (call);                                                           \
        checks++;                                                                   \
        if (rc_ != VELOC_SUCCESS) {                                                 \
            fprintf(stderr, "line %d: %s returned %d, not VELOC_SUCCESS\n", __LINE__, #call, rc_); \
            failed++;                                                               \
        }                                                                           \
    } while (0)

int main(int argc, char **argv) {
    int ids[2] = {0, 77}, data[16] = {0}, rank;
    char routed[VELOC_MAX_NAME];
    if (argc != 2) return 2;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);

    /* Before VELOC_Init: everything fails. */
    EXPECT_FAIL(VELOC_Mem_protect(0, data, 16, sizeof(int)));
    EXPECT_FAIL(VELOC_Mem_unprotect(0));
    EXPECT_FAIL(VELOC_Checkpoint_begin("x", 0));
    EXPECT_FAIL(VELOC_Checkpoint_mem());
    EXPECT_FAIL(VELOC_Checkpoint_selective(VELOC_CKPT_ALL, ids, 1));
    EXPECT_FAIL(VELOC_Checkpoint_end(1));
    EXPECT_FAIL(VELOC_Checkpoint_wait());
    EXPECT_FAIL(VELOC_Checkpoint("x", 0));
    EXPECT_FAIL(VELOC_Restart_test("x", 0));
    EXPECT_FAIL(VELOC_Restart_begin("x", 0));
    EXPECT_FAIL(VELOC_Recover_mem());
    EXPECT_FAIL(VELOC_Recover_selective(VELOC_RECOVER_ALL, ids, 1));
    EXPECT_FAIL(VELOC_Recover_size(0));
    EXPECT_FAIL(VELOC_Restart_end(1));
    EXPECT_FAIL(VELOC_Restart("x", 0));
    EXPECT_FAIL(VELOC_Route_file("a.txt", routed));
    EXPECT_FAIL(VELOC_Finalize(0));

    /* Bad configurations. */
    EXPECT_FAIL(VELOC_Init(MPI_COMM_WORLD, NULL));
    EXPECT_FAIL(VELOC_Init(MPI_COMM_WORLD, "/nonexistent/veloc.cfg"));
    EXPECT_FAIL(VELOC_Init_single(0, NULL));

    EXPECT_OK(VELOC_Init(MPI_COMM_WORLD, argv[1]));
    EXPECT_FAIL(VELOC_Init(MPI_COMM_WORLD, argv[1])); /* twice */

    /* Bad arguments. */
    EXPECT_FAIL(VELOC_Mem_protect(-1, data, 16, sizeof(int)));
    EXPECT_FAIL(VELOC_Mem_protect(0, NULL, 16, sizeof(int)));
    EXPECT_FAIL(VELOC_Mem_protect(0, data, 0, sizeof(int)));
    EXPECT_FAIL(VELOC_Mem_protect(0, data, (size_t)-1, 16));
    EXPECT_FAIL(VELOC_Mem_unprotect(42));
    EXPECT_FAIL(VELOC_Checkpoint_begin(NULL, 0));
    EXPECT_FAIL(VELOC_Checkpoint_begin("x", -1));
    EXPECT_FAIL(VELOC_Checkpoint_begin("a/b", 0));
    EXPECT_FAIL(VELOC_Checkpoint_mem());          /* no begin */
    EXPECT_FAIL(VELOC_Checkpoint_end(1));         /* no begin: collective, fails everywhere */
    EXPECT_FAIL(VELOC_Checkpoint(NULL, 1));       /* collective */
    EXPECT_FAIL(VELOC_Checkpoint("x", 1));        /* nothing protected */
    EXPECT_OK(VELOC_Mem_protect(0, data, 16, sizeof(int)));
    EXPECT_OK(VELOC_Checkpoint_begin("x", 1));
    EXPECT_FAIL(VELOC_Checkpoint_begin("x", 2));  /* already open */
    EXPECT_FAIL(VELOC_Checkpoint_selective(7, ids, 1));
    EXPECT_FAIL(VELOC_Checkpoint_selective(VELOC_CKPT_SOME, ids, 2)); /* 77 not protected */
    EXPECT_FAIL(VELOC_Checkpoint_selective(VELOC_CKPT_SOME, NULL, 1));
    EXPECT_FAIL(VELOC_Checkpoint_selective(VELOC_CKPT_SOME, ids, -3));
    EXPECT_FAIL(VELOC_Route_file(NULL, routed));
    EXPECT_FAIL(VELOC_Route_file("a.txt", NULL));
    EXPECT_FAIL(VELOC_Checkpoint_end(0));         /* the application says it failed */
    EXPECT_FAIL(VELOC_Restart_test(NULL, 0));
    EXPECT_FAIL(VELOC_Restart_test("x", -5));
    EXPECT_FAIL(VELOC_Restart_test("never-written", 0));
    EXPECT_FAIL(VELOC_Restart_begin(NULL, 0));
    EXPECT_FAIL(VELOC_Restart_begin("x", -1));
    EXPECT_FAIL(VELOC_Restart_begin("never-written", 3));
    EXPECT_FAIL(VELOC_Recover_mem());             /* no restart open */
    EXPECT_FAIL(VELOC_Recover_selective(VELOC_RECOVER_SOME, ids, 1));
    EXPECT_FAIL(VELOC_Recover_size(0));
    EXPECT_FAIL(VELOC_Restart_end(1));            /* collective */
    EXPECT_FAIL(VELOC_Restart("never-written", 5));

    /* A real checkpoint, then misuse around it. */
    EXPECT_OK(VELOC_Checkpoint("x", 0));
    EXPECT_FAIL(VELOC_Checkpoint("x", 0));        /* committed versions are never replaced */
    int v = VELOC_Restart_test("x", 0);
    checks++;
    if (v != 0) { fprintf(stderr, "Restart_test gave %d, not 0\n", v); failed++; }
    EXPECT_FAIL(VELOC_Restart_test("x", 0 + 0 * v) == 0 ? VELOC_FAILURE : VELOC_SUCCESS);
    EXPECT_FAIL(VELOC_Restart_begin("x", 9));      /* no such version */
    EXPECT_OK(VELOC_Restart_begin("x", 0));
    EXPECT_FAIL(VELOC_Recover_size(77));
    checks++;
    if (VELOC_Recover_size(0) != (int)sizeof data) { fprintf(stderr, "Recover_size wrong\n"); failed++; }
    EXPECT_FAIL(VELOC_Recover_selective(VELOC_RECOVER_SOME, ids, 2)); /* 77 unknown */
    EXPECT_FAIL(VELOC_Recover_selective(9, ids, 1));
    EXPECT_FAIL(VELOC_Checkpoint_begin("x", 5));   /* a restart is open */
    EXPECT_OK(VELOC_Recover_mem());
    EXPECT_OK(VELOC_Restart_end(1));
    EXPECT_OK(VELOC_Mem_unprotect(0));
    EXPECT_FAIL(VELOC_Mem_unprotect(0));

    EXPECT_OK(VELOC_Finalize(0));
    EXPECT_FAIL(VELOC_Finalize(0));
    if (rank == 0) printf("bad-args: %d checks, %d failed\n", checks, failed);
    MPI_Finalize();
    return failed ? 1 : 0;
}
