/* Compiles both public headers together (C99 and, renamed .cpp, C++17), with every
 * warning an error. */
#include <ckpt.h>
#include <veloc.h>
#include "veloc/defs.h"
#include "include/veloc.h"

int main(void) {
    const char *s = ckpt_strerror(CKPT_ERR_IO);
    return (s != 0 && VELOC_SUCCESS == 0 && VELOC_FAILURE == -1 && VELOC_CKPT_REST == 2 &&
            VELOC_RECOVER_SOME == 1) ? 0 : 1;
}
