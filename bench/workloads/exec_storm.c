/* exec storm: fork + execve("/bin/true"), COUNT times.
 * usage: exec_storm COUNT [RATE_PER_S [JOBS]]
 *   RATE_PER_S  0 or absent: as fast as possible; else start execs on a fixed schedule (catching up if late)
 *   JOBS        children in flight at once (default 1: fork, exec, wait); more lets a paced run reach
 *               rates that one fork-exec-wait round trip at a time cannot */
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

extern char **environ;

static void reap_one(void) {
    int status;
    CHECK(wait(&status));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "exec_storm: /bin/true failed (status %d)\n", status);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s COUNT [RATE_PER_S [JOBS]]\n", argv[0]);
        return 2;
    }
    long count = parse_count(argv[1], "COUNT");
    long rate = argc > 2 ? parse_count(argv[2], "RATE_PER_S") : 0;
    long jobs = argc > 3 ? parse_count(argv[3], "JOBS") : 1;
    if (jobs < 1)
        jobs = 1;
    char *const child_argv[] = {"/bin/true", NULL};
    long running = 0;
    double start = now_s();
    for (long i = 0; i < count; i++) {
        if (rate > 0) {
            double due = start + (double)i / (double)rate;
            double wait_s = due - now_s();
            if (wait_s > 0) {
                struct timespec ts = {(time_t)wait_s, (long)((wait_s - (double)(time_t)wait_s) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        if (running == jobs) {
            reap_one();
            running--;
        }
        pid_t pid;
        CHECK(pid = fork());
        if (pid == 0) {
            execve(child_argv[0], child_argv, environ);  /* the real env: its capture is part of the cost */
            _exit(127);
        }
        running++;
    }
    while (running-- > 0)
        reap_one();
    report(count, now_s() - start);
    return 0;
}
