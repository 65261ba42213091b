/* Network: connect (IPv4/IPv6, with result), accept and listen (bind shells). The peer of a connect is read
 * from the socket after the call (what the kernel connected to), so a thread rewriting the caller's sockaddr
 * cannot change it; the sockaddr copied at entry is only the fallback for a failed connect. */

static __always_inline int emit_net(u16 op, int fd, int result, void *file, const u8 *uaddr) {
    /* Built on the stack and filtered before it takes ring space: a full ring must count only the
     * events that would have been sent. */
    struct net_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    struct net_event *e = &ev;
    fill_header(&e->hdr, op, sizeof(*e));
    e->fd = fd;
    e->result = result;
    if (file)
        SOCK_DESCRIBE(file, e);
    if (uaddr && e->port == 0) {
        /* connect failed and the kernel cleared the peer (or the socket is gone): fall back to the
         * destination the caller asked for, from its sockaddr copied at entry. */
        u16 family = 0;
        __builtin_memcpy(&family, uaddr, 2);
        e->family = family;
        u16 port = 0;
        __builtin_memcpy(&port, uaddr + 2, 2);
        e->port = cw_ntohs(port);
        __builtin_memset(e->addr, 0, sizeof(e->addr));
        if (family == AF_INET_)
            __builtin_memcpy(e->addr, uaddr + 4, 4);
        else
            __builtin_memcpy(e->addr, uaddr + 8, 16);
    }
#if SKIP_LOOPBACK
    if (addr_is_loopback(e->family, e->addr) && op != OP_LISTEN)
        return 0;
#endif
    if (net_events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_NET_RINGBUF);
    return 0;
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
