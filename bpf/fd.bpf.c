/* Sockets duplicated onto stdin/stdout/stderr: dup, dup2, dup3 and fcntl(F_DUPFD*); FIFO and pty master opens.
 * The kernel decides from the inode type and the peer: only an inet socket with a (non-loopback) peer
 * onto 0/1/2 reaches userspace. */
#ifndef CHAINWATCH_FD_BPF_C
#define CHAINWATCH_FD_BPF_C

#include "common.h"

#define F_DUPFD_ 0
#define F_DUPFD_CLOEXEC_ 1030

static __always_inline void dup_enter(long oldfd, int syscall) {
    /* Only a socket can become a reverse shell's stdio: a pipe or tty dup (every shell redirection)
     * stops here, before the stash's hash update and the exit probe's lookup and delete. */
    if (!file_is_socket(current_fd_file((int)oldfd)))
        return;
    struct stash s = {};
    s.a = oldfd;
    s.b = syscall;
    stash_put(&s);
}

TRACEPOINT_PROBE(syscalls, sys_enter_dup) { dup_enter(args->fildes, SC_DUP); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_dup2) {
    if (args->newfd <= 2)
        dup_enter(args->oldfd, SC_DUP2);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_dup3) {
    if (args->newfd <= 2)
        dup_enter(args->oldfd, SC_DUP3);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fcntl) {
    /* F_DUPFD returns the lowest free fd >= arg: only arg <= 2 can land on stdio. */
    if ((args->cmd == F_DUPFD_ || args->cmd == F_DUPFD_CLOEXEC_) && args->arg <= 2)
        dup_enter(args->fd, SC_FCNTL);
    return 0;
}

static __always_inline int dup_exit(long ret) {
    struct stash s;
    if (!stash_take(&s))
        return 0;
    if (ret < 0 || ret > 2)
        return 0;
    /* The new fd shares the old fd's file. */
    void *file = current_fd_file((int)ret);
    if (!file_is_socket(file))
        return 0;
    struct dup_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    struct dup_event *e = &ev;
    SOCK_DESCRIBE(file, e);
    /* Only an inet socket with a peer can hand a terminal to someone: an unconnected or unix socket
     * on stdio (a service's journal stream, a listener) is dropped here, before it costs ring space. */
    if ((e->family != AF_INET_ && e->family != AF_INET6_) || e->port == 0)
        return 0;
#if SKIP_LOOPBACK
    if (addr_is_loopback(e->family, e->addr))
        return 0;
#endif
    fill_header(&e->hdr, OP_SOCKET_DUP, sizeof(*e));
    e->oldfd = (s32)s.a;
    e->newfd = (s32)ret;
    e->syscall = (u32)s.b;
    if (events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_RINGBUF);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_dup) { return dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { return dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { return dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_fcntl) { return dup_exit(args->ret); }

/* FIFO and pty master opens: the ends of a relay that are not on anyone's stdio (`cat /tmp/f | sh | nc`
 * reads the FIFO on fd 3; socat and pty.spawn hold the pty master). Decided on the file the kernel opened,
 * so relative paths, dirfds and symlinks do not matter. */
static __always_inline int fd_open_note(void *file, long fd) {
    struct fd_open_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    u16 mode = 0;
    u64 aux = 0;
    file_identity(file, &mode, &ev.dev, &ev.ino, &ev.tty_index, &ev.fflags, &aux);
    u16 fmt = mode & S_IFMT_;
    if (fmt == S_IFIFO_) {
        ev.kind = FD_FIFO;
        ev.tty_index = 0;
    } else if (fmt == S_IFCHR_ && ev.tty_index == PTMX_RDEV) {
        ev.kind = FD_PTMX;
        ev.tty_index = (u32)aux;
    } else {
        return 0;
    }
    fill_header(&ev.hdr, OP_FD_OPEN, sizeof(ev));
    ev.fd = (s32)fd;
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        count_drop(DROP_RINGBUF);
    return 0;
}
/* Called from the open-exit programs in persistence.bpf.c, which look the new fd's file up once for both. */

#endif /* CHAINWATCH_FD_BPF_C */
