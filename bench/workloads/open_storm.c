/* open storm: open(DIR/f<i % 16>, O_WRONLY | O_CREAT | O_TRUNC) + close, COUNT times.
 * usage: open_storm COUNT DIR
 *   DIR  an existing scratch directory outside the persistence paths; given as an absolute path so the
 *        kernel's path matcher runs over the whole name, as it would for a real write. */
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include "common.h"

#define FILES 16

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s COUNT DIR\n", argv[0]);
        return 2;
    }
    long count = parse_count(argv[1], "COUNT");
    char paths[FILES][PATH_MAX];
    for (int f = 0; f < FILES; f++) {
        if (snprintf(paths[f], PATH_MAX, "%s/f%d", argv[2], f) >= PATH_MAX) {
            fprintf(stderr, "open_storm: DIR is too long\n");
            return 2;
        }
    }
    double start = now_s();
    for (long i = 0; i < count; i++) {
        int fd;
        CHECK(fd = open(paths[i % FILES], O_WRONLY | O_CREAT | O_TRUNC, 0600));
        CHECK(close(fd));
    }
    report(count, now_s() - start);
    for (int f = 0; f < FILES && f < count; f++)
        unlink(paths[f]);
    return 0;
}
