/* Process lifecycle: exec (with argv and the environment block), fork of processes, exit of thread groups. */
#ifndef CHAINWATCH_PROCESS_BPF_C
#define CHAINWATCH_PROCESS_BPF_C

#include "common.h"

/* An exec record is ~12 KiB, too big for the BPF stack: build it in a per-CPU scratch slot. */
BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);

/* A root recognisable by its executable's name alone starts its context here, at exec. A package
 * install may start inside a CI job; otherwise an existing context is kept. */
static __always_inline void context_on_exec(struct exec_event *e) {
    if (e->hdr.context != 0 && e->hdr.context < CONTEXT_CI_BASE)
        return;
    /* exec has just set comm to the basename of the path it ran (cut to 15 bytes), so it names the
     * executable here without a loop over the path. Userspace checks the full path and argv against
     * rules/lists/contexts.yaml and corrects the tag if this was wrong. */
    struct context_exe key;
    __builtin_memset(&key, 0, sizeof(key));
    __builtin_memcpy(key.name, e->hdr.comm, COMM_LEN);
    u32 *tag = context_exes.lookup(&key);
    if (!tag || (e->hdr.context != 0 && *tag >= CONTEXT_CI_BASE))
        return;
    struct context_tag ctx = {.context = *tag, .root_pid = e->hdr.tgid, .root_start = e->hdr.start_time,
                              .start_time = e->hdr.start_time};
    contexts.update(&e->hdr.tgid, &ctx);
    e->hdr.context = ctx.context;
    e->hdr.context_root_pid = ctx.root_pid;
    e->hdr.context_root_start = ctx.root_start;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    int zero = 0;
    struct exec_event *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, OP_EXEC, 0);

    /* The tracepoint's filename is the path the kernel resolved for the new image. */
    int n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
                                      (void *)args + (args->data_loc_filename & 0xFFFF));
    e->filename_len = n > 0 ? n - 1 : 0;
    if (n == sizeof(e->filename))
        e->hdr.flags |= EV_FILENAME_TRUNCATED;
    context_on_exec(e);

    /* What stdin/stdout/stderr are, as identities the stdio graph joins in userspace: a shell started on a
     * socket is a reverse shell; a relay has pipes, FIFOs, socketpairs or a pty between shell and socket. */
    e->stdio_sock_fd = -1;
    e->sock_ino = 0;
    e->family = 0;
    e->sock_type = 0;
    e->port = 0;
    e->lport = 0;
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    __builtin_memset(e->laddr, 0, sizeof(e->laddr));
    e->_pad2 = 0;
    void *stdio[3];
    current_stdio_files(stdio);
    void *prev = 0;
#pragma unroll
    for (int fd = 0; fd < 3; fd++) {
        void *file = stdio[fd];
        if (file && file == prev) {
            /* A terminal or pipe on several of 0-2 (2>&1) is one struct file: its identity is the one
             * just read. Its socket, if any, was described for the first fd. */
            e->stdio_mode[fd] = e->stdio_mode[fd - 1];
            e->stdio_dev[fd] = e->stdio_dev[fd - 1];
            e->stdio_ino[fd] = e->stdio_ino[fd - 1];
            e->stdio_rdev[fd] = e->stdio_rdev[fd - 1];
            e->stdio_fflags[fd] = e->stdio_fflags[fd - 1];
            e->stdio_aux[fd] = e->stdio_aux[fd - 1];
            continue;
        }
        prev = file;
        if (!file) {
            e->stdio_mode[fd] = 0;
            e->stdio_dev[fd] = 0;
            e->stdio_ino[fd] = 0;
            e->stdio_rdev[fd] = 0;
            e->stdio_fflags[fd] = 0;
            e->stdio_aux[fd] = 0;
            continue;
        }
        file_identity(file, &e->stdio_mode[fd], &e->stdio_dev[fd], &e->stdio_ino[fd], &e->stdio_rdev[fd],
                      &e->stdio_fflags[fd], &e->stdio_aux[fd]);
        if (e->stdio_sock_fd < 0 && (e->stdio_mode[fd] & S_IFMT_) == S_IFSOCK_ && e->stdio_aux[fd] == 0) {
            SOCK_DESCRIBE(file, e);
            if (e->family == AF_INET_ || e->family == AF_INET6_)
                e->stdio_sock_fd = fd;
            else
                e->family = 0;
        }
    }
    e->_pad = 0;

    /* The file actually executed: a copy, a memfd or a deleted file is told by its inode, not its name. */
    char *mm = BTF_PTR(cur_task(), TASK_MM);
    char *exe = BTF_PTR(mm, MM_EXE_FILE);
    struct file_head xf;
    struct inode_head xi;
    file_head(exe, &xf);
    inode_head(xf.inode, &xi);
    e->exe_ino = xi.ino;
    e->exe_dev = read_u32(xi.sb, SB_DEV);
    e->exe_nlink = xi.nlink;
    e->exe_size = read_u64(xf.inode, INODE_SIZE); /* i_size: a size no known program has needs no look */
    char exe_name[8] = {};
    bpf_probe_read_kernel_str(exe_name, sizeof(exe_name), read_ptr(xf.dentry, DENTRY_D_NAME_NAME));
    /* memfd_create names its file "memfd:<name>" (mm/memfd.c). */
    if (exe_name[0] == 'm' && exe_name[1] == 'e' && exe_name[2] == 'm' && exe_name[3] == 'f' && exe_name[4] == 'd'
        && exe_name[5] == ':')
        e->hdr.flags |= EV_EXE_MEMFD;
    else if (exe && e->exe_nlink == 0)
        e->hdr.flags |= EV_EXE_DELETED;

    /* argv and envp are contiguous NUL-separated blocks in the new mm; one bounded read each. */
    u64 arg_start = read_u64(mm, MM_ARG_START), arg_end = read_u64(mm, MM_ARG_END);
    u64 env_start = read_u64(mm, MM_ENV_START), env_end = read_u64(mm, MM_ENV_END);

    u64 len = arg_end > arg_start ? arg_end - arg_start : 0;
    if (len > ARGS_MAX - 1) {
        len = ARGS_MAX - 1;
        e->hdr.flags |= EV_ARGS_TRUNCATED;
    }
    len &= ARGS_MAX - 1;
    if (bpf_probe_read_user(e->args, len, (void *)arg_start) != 0)
        len = 0;
    e->args_len = len;

    len = 0;
#if CAPTURE_ENV
    len = env_end > env_start ? env_end - env_start : 0;
    if (len > ENV_MAX - 1) {
        len = ENV_MAX - 1;
        e->hdr.flags |= EV_ENV_TRUNCATED;
    }
    len &= ENV_MAX - 1;
    if (bpf_probe_read_user(e->env, len, (void *)env_start) != 0)
        len = 0;
#endif
    e->env_len = len;

    /* Send only what was used of the environment area. */
    u32 size = offsetof(struct exec_event, env) + (u32)len;
    e->hdr.size = size;
    if (size > sizeof(*e)) /* never true; tells the verifier the bound */
        size = sizeof(*e);
    /* A shell started on a socket is itself a reverse shell, and a memfd or deleted executable is read by
     * content from /proc/PID/exe while it still runs: those wake the agent at once. */
    u64 wake = e->stdio_sock_fd >= 0 || (e->hdr.flags & (EV_EXE_MEMFD | EV_EXE_DELETED)) ? BPF_RB_FORCE_WAKEUP
                                                                                     : lifecycle_wakeup_flag();
    if (events.ringbuf_output(e, size, wake) != 0)
        count_drop(DROP_RINGBUF);
    return 0;
}

/* A raw tracepoint, because only the task pointers tell a new process from a new thread. */
RAW_TRACEPOINT_PROBE(sched_process_fork) {
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 child_pid = read_u32(child, TASK_PID);
    u32 child_tgid = read_u32(child, TASK_TGID);
    if (child_pid != child_tgid)
        return 0; /* a thread */

    /* The child inherits the forking process's context, even when its event cannot be sent. */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct context_tag *pctx = contexts.lookup(&tgid);
    if (pctx && pctx->start_time == task_process_start(parent)) {
        struct context_tag inherited = {.context = pctx->context, .root_pid = pctx->root_pid,
                                  .root_start = pctx->root_start,
                                  .start_time = read_u64(child, TASK_START_BOOTTIME)};
        contexts.update(&child_tgid, &inherited);
    }

    struct fork_event *e = events.ringbuf_reserve(sizeof(struct fork_event));
    if (!e) {
        count_drop(DROP_RINGBUF);
        return 0;
    }
    fill_header(&e->hdr, OP_FORK, sizeof(*e));
    /* The header describes the child; the parent is the child's real parent (CLONE_PARENT aware). */
    void *real_parent = read_ptr(child, TASK_REAL_PARENT);
    e->hdr.tgid = child_tgid;
    e->hdr.pid = child_pid;
    e->hdr.ppid = read_u32(real_parent, TASK_TGID);
    e->hdr.start_time = read_u64(child, TASK_START_BOOTTIME);
    e->parent_start_time = task_process_start(real_parent);
    events.ringbuf_submit(e, lifecycle_wakeup_flag());
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
#if HAVE_EXIT_GROUP_DEAD
    /* 6.16+: the tracepoint says whether this was the last thread of the group. */
    if (!args->group_dead)
        return 0;
#else
    /* Older kernels: approximate with the leader's exit. */
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (id >> 32))
        return 0;
#endif
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    /* Most processes have no context: a lookup (lock-free) spares them the delete's bucket lock. */
    if (contexts.lookup(&tgid))
        contexts.delete(&tgid);
    struct exit_event *e = events.ringbuf_reserve(sizeof(struct exit_event));
    if (!e) {
        count_drop(DROP_RINGBUF);
        return 0;
    }
    fill_header(&e->hdr, OP_EXIT, sizeof(*e));
    e->exit_code = (s32)BTF_U32(cur_task(), TASK_EXIT_CODE);
    e->_pad = 0;
    events.ringbuf_submit(e, lifecycle_wakeup_flag());
    return 0;
}

#endif /* CHAINWATCH_PROCESS_BPF_C */
