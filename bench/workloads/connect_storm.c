/* connect storm: TCP connect + close, COUNT times, to a listener this program opens itself.
 * usage: connect_storm COUNT [ADDRESS]
 *   ADDRESS  numeric IPv4 or IPv6 address to listen on and connect to (default 127.0.0.1). A non-loopback
 *            address of a local interface (inside a network namespace) makes connects the sensor reports.
 * The client closes with SO_LINGER 0 (a reset), so no TIME_WAIT builds up and any COUNT can run. */
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s COUNT [ADDRESS]\n", argv[0]);
        return 2;
    }
    long count = parse_count(argv[1], "COUNT");
    const char *address = argc > 2 ? argv[2] : "127.0.0.1";
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    int rc = getaddrinfo(address, "0", &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "connect_storm: bad address %s: %s\n", address, gai_strerror(rc));
        return 2;
    }
    int listener;
    CHECK(listener = socket(ai->ai_family, SOCK_STREAM, 0));
    CHECK(bind(listener, ai->ai_addr, ai->ai_addrlen));
    CHECK(listen(listener, 128));
    struct sockaddr_storage dst;
    socklen_t dst_len = sizeof(dst);
    CHECK(getsockname(listener, (struct sockaddr *)&dst, &dst_len));
    const struct linger reset = {.l_onoff = 1, .l_linger = 0};
    double start = now_s();
    for (long i = 0; i < count; i++) {
        int fd, peer;
        CHECK(fd = socket(ai->ai_family, SOCK_STREAM, 0));
        CHECK(connect(fd, (struct sockaddr *)&dst, dst_len));
        CHECK(peer = accept(listener, NULL, NULL));
        CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)));
        CHECK(close(fd));
        CHECK(close(peer));
    }
    report(count, now_s() - start);
    close(listener);
    freeaddrinfo(ai);
    return 0;
}
