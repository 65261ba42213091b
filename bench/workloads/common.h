/* Shared by the bench workloads: argument parsing, a monotonic clock and the one-line JSON report.
 * Each workload does a fixed count of one operation and prints {"ops":N,"seconds":S,"rate":R} on stdout. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline long parse_count(const char *arg, const char *what) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || *end || v < 0) {
        fprintf(stderr, "%s: not a non-negative integer: %s\n", what, arg);
        exit(2);
    }
    return v;
}

/* Exit with the failing call named: a workload that silently does less work would skew the ratios. */
#define CHECK(expr)                                                            \
    do {                                                                       \
        if ((expr) < 0) {                                                      \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,     \
                    strerror(errno));                                          \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static inline void report(long ops, double seconds) {
    printf("{\"ops\":%ld,\"seconds\":%.6f,\"rate\":%.1f}\n", ops, seconds, seconds > 0 ? ops / seconds : 0.0);
    fflush(stdout);
}

#endif
