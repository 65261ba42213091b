/* io_uring: requests that fire no syscall tracepoint give the same events as the syscalls, flagged
 * EV_IO_URING, with the submitting process. The SQPOLL thread and io-wq workers are threads of the ring
 * creator's process and share its fd table, so the header and the fd lookups are the process's own.
 *
 * - CONNECT: at submission (io_uring:io_uring_submit_req, io_uring_submit_sqe before 6.4), the
 *   destination from the request's sockaddr, like the connect syscall probe.
 * - OPENAT, OPENAT2: at completion (io_uring_complete) with the new fd, through the open-exit path of
 *   persistence.bpf.c: resolved path, successful opens only. Opens into a fixed-file slot have no fd and
 *   are not seen (a known limit).
 * - RENAMEAT, LINKAT, SYMLINKAT: at submission, the kernel's copy of the new name after its resolved dirfd.
 *   The kernel frees the names before completion, so these are reported when submitted, not only when
 *   they succeed (a known limit).
 *
 * And any TCP connect the connect probes did not report (a path we did not think of): a socket entering
 * SYN_SENT (sock:inet_sock_set_state) outside a connect syscall and not announced by an io_uring CONNECT
 * is reported as a connect flagged EV_SOCK_STATE.
 *
 * Plain tracepoints, not raw ones: their req, opcode and res fields stay put across kernels whose
 * TP_PROTO changed (io_uring_complete took the CQE fields one by one before it took the CQE).
 */
#ifndef CHAINWATCH_IO_URING_BPF_C
#define CHAINWATCH_IO_URING_BPF_C

#include "common.h"
#include "persistence.bpf.c" /* file_jobs, finish() and on_open_exit_from(): the open and name paths */

/* Sockets whose connect an io_uring CONNECT already reported: their SYN_SENT is explained. */
BPF_TABLE("lru_hash", u64, u8, uring_connects, 4096);

static __always_inline int net_out(struct net_event *e) {
#if SKIP_LOOPBACK
    if (addr_is_loopback(e->family, e->addr))
        return 0;
#endif
    if (net_events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_NET_RINGBUF);
    return 0;
}

#if HAVE_IO_URING_SUBMIT_REQ || HAVE_IO_URING_SUBMIT_SQE
#define IORING_OP_CONNECT_ 16
#define IORING_OP_OPENAT_ 18
#define IORING_OP_OPENAT2_ 28
#define IORING_OP_RENAMEAT_ 35
#define IORING_OP_UNLINKAT_ 36
#define IORING_OP_SYMLINKAT_ 38
#define IORING_OP_LINKAT_ 39


static __always_inline int uring_connect(void *req) {
    struct net_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    struct net_event *e = &ev;
    u8 sa[28] = {};
    if (bpf_probe_read_user(sa, sizeof(sa), read_ptr(req, IO_CONNECT_ADDR)) != 0)
        return 0;
    u16 family = 0, port = 0;
    __builtin_memcpy(&family, sa, 2);
    if (family != AF_INET_ && family != AF_INET6_)
        return 0;
    fill_header(&e->hdr, OP_CONNECT, sizeof(*e));
    e->hdr.flags |= EV_IO_URING;
    s32 fd = (s32)read_u32(req, IO_KIOCB_CQE_FD);
    e->fd = fd;
    e->result = 0; /* not known at submission */
    void *file = current_fd_file(fd);
    if (file) {
        SOCK_DESCRIBE(file, e);
        u64 sk = (u64)read_ptr(read_ptr(file, FILE_PRIVATE_DATA), SOCKET_SK);
        u8 one = 1;
        if (sk)
            uring_connects.update(&sk, &one);
    }
    sockaddr_peer(sa, &e->family, &port, e->addr);
    e->port = cw_ntohs(port);
    return net_out(e);
}

/* RENAMEAT, LINKAT, SYMLINKAT share a layout (struct io_rename / io_link): the new name's dirfd and
 * struct filename. */
static __always_inline int uring_name(void *ctx, void *req, u32 syscall) {
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    if (!job)
        return 0;
    job->dentry = 0;
    job->vfsmnt = 0;
    job->uname = (u64)read_ptr(read_ptr(req, IO_RENAME_NEWPATH), FILENAME_NAME);
    job->usource = (u64)read_ptr(read_ptr(req, IO_RENAME_OLDPATH), FILENAME_NAME);
    job->dfd = (s32)read_u32(req, IO_RENAME_NEW_DFD);
    job->syscall = syscall;
    job->open_flags = 0;
    job->hdr_flags = EV_IO_URING;
    job->kernel_name = 1;
    if (!job->uname)
        return 0;
    finish(ctx);
    return 0;
}

static __always_inline int on_uring_submit(void *ctx, void *req, u8 opcode) {
    switch (opcode) {
    case IORING_OP_CONNECT_:
        return uring_connect(req);
    case IORING_OP_RENAMEAT_:
        /* Paths move from submission to completion. A request whose completion never shows (a skipped CQE)
         * leaves directory verdicts off: slower opens, nothing missed. */
        paths_change(MOVE_BEGINS);
        return uring_name(ctx, req, SC_RENAMEAT2);
    case IORING_OP_UNLINKAT_:
        paths_change(PATHS_MOVED); /* perhaps a directory's removal (its flags are not read here) */
        return 0;
    case IORING_OP_LINKAT_:
        return uring_name(ctx, req, SC_LINKAT);
    case IORING_OP_SYMLINKAT_:
        return uring_name(ctx, req, SC_SYMLINKAT);
    }
    return 0;
}

#if HAVE_IO_URING_SUBMIT_REQ
TRACEPOINT_PROBE(io_uring, io_uring_submit_req) { return on_uring_submit(args, (void *)args->req, args->opcode); }
#elif HAVE_IO_URING_SUBMIT_SQE
TRACEPOINT_PROBE(io_uring, io_uring_submit_sqe) { return on_uring_submit(args, (void *)args->req, args->opcode); }
#endif

/* An OPENAT's result is the new fd. */
TRACEPOINT_PROBE(io_uring, io_uring_complete) {
    void *req = (void *)args->req;
    u8 opcode = 0;
    bpf_probe_read_kernel(&opcode, 1, (char *)req + IO_KIOCB_OPCODE);
    if (opcode == IORING_OP_RENAMEAT_) {
        paths_change(MOVE_ENDS); /* begun at submission */
        return 0;
    }
    if (opcode != IORING_OP_OPENAT_ && opcode != IORING_OP_OPENAT2_)
        return 0;
    if (read_u32(req, IO_OPEN_FILE_SLOT) != 0)
        return 0; /* into a fixed-file slot: no fd */
    return on_open_exit_from(args, args->res, opcode == IORING_OP_OPENAT_ ? SC_OPENAT : SC_OPENAT2, EV_IO_URING);
}
#endif /* io_uring */

#if HAVE_SOCK_STATE
#define TCP_SYN_SENT_ 2
#define IPPROTO_TCP_ 6
#define SOCK_STREAM_ 1

/* A socket entering SYN_SENT that no connect event explains. Inside a connect syscall the connect probe
 * holds this thread's stash (and reports the call); an io_uring CONNECT left the socket in uring_connects. */
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->newstate != TCP_SYN_SENT_ || args->protocol != IPPROTO_TCP_)
        return 0;
    if (stash_held())
        return 0;
    u64 sk = (u64)args->skaddr;
    if (uring_connects.lookup(&sk)) {
        uring_connects.delete(&sk);
        return 0;
    }
    struct net_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    struct net_event *e = &ev;
    fill_header(&e->hdr, OP_CONNECT, sizeof(*e));
    e->hdr.flags |= EV_SOCK_STATE;
    e->fd = -1;
    e->result = 0;
    e->family = args->family;
    e->sock_type = SOCK_STREAM_;
    e->port = args->dport;
    e->lport = args->sport;
    if (args->family == AF_INET_)
        __builtin_memcpy(e->addr, args->daddr, 4);
    else
        __builtin_memcpy(e->addr, args->daddr_v6, 16);
    return net_out(e);
}
#endif

#endif /* CHAINWATCH_IO_URING_BPF_C */
