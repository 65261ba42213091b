/* Network: connect (IPv4/IPv6, with result), accept and listen (bind shells). The peer of a connect is read
 * from the socket after the call (what the kernel connected to), so a thread rewriting the caller's sockaddr
 * cannot change it; the sockaddr copied at entry is only the fallback for a failed connect. */
#ifndef CHAINWATCH_NET_BPF_C
#define CHAINWATCH_NET_BPF_C

#include "common.h"

static __always_inline int emit_net_flags(u16 op, int fd, int result, void *file, const u8 *uaddr, u16 flags) {
    /* Built on the stack and filtered before it takes ring space: a full ring must count only the
     * events that would have been sent. */
    struct net_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    struct net_event *e = &ev;
    if (file)
        SOCK_DESCRIBE(file, e);
    if (uaddr && e->port == 0) {
        /* connect failed and the kernel cleared the peer (or the socket is gone), or an unconnected UDP
         * socket's sendto: the destination the caller asked for, from its sockaddr copied at entry. */
        u16 port = 0;
        sockaddr_peer(uaddr, &e->family, &port, e->addr);
        e->port = cw_ntohs(port);
    }
#if SKIP_LOOPBACK
    if (addr_is_loopback(e->family, e->addr) && op != OP_LISTEN)
        return 0;
#endif
    /* The header (a dozen kernel reads and a map lookup) only for what is sent. */
    fill_header(&e->hdr, op, sizeof(*e));
    e->hdr.flags |= flags;
    e->fd = fd;
    e->result = result;
    if (net_events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_NET_RINGBUF);
    return 0;
}

static __always_inline int emit_net(u16 op, int fd, int result, void *file, const u8 *uaddr) {
    return emit_net_flags(op, fd, result, file, uaddr, 0);
}

/* Unconnected UDP: the destinations already reported per socket (sendto names one per datagram; one event
 * per socket and destination is enough, and an LRU keeps a sprayer from filling it). */
struct udp_dest {
    u64 sock_ino;
    u8 addr[16];
    u16 port;
    u16 family;
    u32 _pad;
};
BPF_TABLE("lru_hash", struct udp_dest, u8, udp_dests, 16384);
#define SOCK_DGRAM_ 2

/* sendto with a destination on an inet datagram socket: a UDP shell that never connects. The destination is
 * the caller's sockaddr (an unconnected socket holds none); reported once per socket and destination. Every
 * send() on a TCP socket arrives here with addr NULL and stops at the first test. */
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    if (!args->addr || args->addr_len < 8)
        return 0;
    void *file = current_fd_file((int)args->fd);
    if (!file_is_socket(file))
        return 0;
    if (read_u16(read_ptr(file, FILE_PRIVATE_DATA), SOCKET_TYPE) != SOCK_DGRAM_)
        return 0;
    u8 sa[28] = {};
    u32 n = args->addr_len < sizeof(sa) ? (u32)args->addr_len : sizeof(sa);
    if (bpf_probe_read_user(sa, n & 31, (void *)args->addr) != 0)
        return 0;
    struct udp_dest key = {};
    sockaddr_peer(sa, &key.family, &key.port, key.addr);
    if (key.family != AF_INET_ && key.family != AF_INET6_)
        return 0;
    key.sock_ino = read_u64(file_inode(file), INODE_INO);
    if (udp_dests.lookup(&key))
        return 0;
    u8 one = 1;
    udp_dests.update(&key, &one);
    return emit_net_flags(OP_CONNECT, (int)args->fd, 0, file, sa, EV_SENDTO);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    struct stash s = {};
    if (bpf_probe_read_user(s.addr, sizeof(s.addr), (void *)args->uservaddr) != 0)
        return 0;
    u16 family = 0;
    __builtin_memcpy(&family, s.addr, 2);
    if (family != AF_INET_ && family != AF_INET6_)
        return 0;
    s.a = args->fd;
    stash_put(&s);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    struct stash s;
    if (!stash_take(&s))
        return 0;
    return emit_net(OP_CONNECT, (int)s.a, (int)args->ret, current_fd_file((int)s.a), s.addr);
}

static __always_inline int on_accept_exit(long ret) {
    if (ret < 0)
        return 0;
    void *file = current_fd_file((int)ret);
    if (!file_is_socket(file))
        return 0;
    return emit_net(OP_ACCEPT, (int)ret, 0, file, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return on_accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return on_accept_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_listen) {
    struct stash s = {};
    s.a = args->fd;
    stash_put(&s);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen) {
    struct stash s;
    if (!stash_take(&s))
        return 0;
    void *file = current_fd_file((int)s.a);
    if (!file_is_socket(file))
        return 0;
    return emit_net(OP_LISTEN, (int)s.a, (int)args->ret, file, 0);
}

#endif /* CHAINWATCH_NET_BPF_C */
