/* dup storm: COUNT rounds of dup2(socket, SOCKET_FD), then dup2(pipe, 1) and dup2(saved stdout, 1).
 * usage: dup_storm COUNT [SOCKET_FD]
 *   SOCKET_FD  where the socket is duplicated (default 10, a spare fd the kernel filter drops). 0, 1 or 2
 *              makes every round a socket-onto-stdio event (a flood of what the sensor reports); the fd
 *              is restored from a saved copy after each round.
 * The report goes to stdout only after stdout is restored. */
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s COUNT [SOCKET_FD]\n", argv[0]);
        return 2;
    }
    long count = parse_count(argv[1], "COUNT");
    long target = argc > 2 ? parse_count(argv[2], "SOCKET_FD") : 10;
    if (target >= 64) {
        fprintf(stderr, "dup_storm: SOCKET_FD must be below 64\n");
        return 2;
    }
    int sock;
    CHECK(sock = socket(AF_INET, SOCK_STREAM, 0));
    int pipefd[2];
    CHECK(pipe(pipefd));
    /* Saved copies sit at fd 64 and up, so that no dup2 in the loop clobbers them. */
    int saved_stdout, saved_target = -1;
    CHECK(saved_stdout = fcntl(1, F_DUPFD, 64));
    if (target <= 2)
        CHECK(saved_target = fcntl((int)target, F_DUPFD, 64));
    double start = now_s();
    for (long i = 0; i < count; i++) {
        CHECK(dup2(sock, (int)target));
        if (saved_target >= 0)
            CHECK(dup2(saved_target, (int)target));
        CHECK(dup2(pipefd[1], 1));
        CHECK(dup2(saved_stdout, 1));
    }
    report(count, now_s() - start);
    return 0;
}
