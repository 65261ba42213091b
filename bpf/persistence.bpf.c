/* Writes to persistence locations: opens for write/create/truncate/append, renames and links whose
 * target matches the persistence list (rules/lists/persistence_paths.yaml, compiled into
 * persist_path_match() by agent/probes/source.py), and kernel module loads where the kernel has
 * their tracepoints. Relative paths are not resolved here (a known limit; see docs). */

#define O_WRONLY_ 01
#define O_RDWR_ 02
#define O_CREAT_ 0100
#define O_TRUNC_ 01000
#define O_APPEND_ 02000
#define O_WRITE_MASK (O_WRONLY_ | O_RDWR_ | O_CREAT_ | O_TRUNC_ | O_APPEND_)

BPF_PERCPU_ARRAY(file_scratch, struct file_event, 1);

static __always_inline int emit_file(int syscall, u32 open_flags, const char *upath, const char *usource) {
    int zero = 0;
    struct file_event *e = file_scratch.lookup(&zero);
    if (!e)
        return 0;
    int n = bpf_probe_read_user_str(e->path, sizeof(e->path), upath);
    if (n <= 1 || e->path[0] != '/')
        return 0;
    u32 len = (u32)(n - 1);
    if (!persist_path_match(e->path, len))
        return 0;
    fill_header(&e->hdr, OP_FILE_WRITE, sizeof(*e));
    if (n == sizeof(e->path))
        e->hdr.flags |= EV_FILENAME_TRUNCATED;
    e->syscall = syscall;
    e->open_flags = open_flags;
    e->result = 0;
    e->path_len = len;
    e->source_len = 0;
    e->_pad = 0;
    e->source[0] = 0;
    if (usource) {
        n = bpf_probe_read_user_str(e->source, sizeof(e->source), usource);
        e->source_len = n > 0 ? n - 1 : 0;
    }
    if (events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_RINGBUF);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    if (!(args->flags & O_WRITE_MASK))
        return 0;
    return emit_file(SC_OPENAT, args->flags, args->filename, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2) {
    u64 flags = 0; /* struct open_how starts with u64 flags */
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);
    if (!(flags & O_WRITE_MASK))
        return 0;
    return emit_file(SC_OPENAT2, (u32)flags, args->filename, 0);
}

#if HAVE_SYS_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open) {
    if (!(args->flags & O_WRITE_MASK))
        return 0;
    return emit_file(SC_OPEN, args->flags, args->filename, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_creat) {
    return emit_file(SC_CREAT, O_CREAT_ | O_WRONLY_ | O_TRUNC_, args->pathname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_rename) {
    return emit_file(SC_RENAME, 0, args->newname, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_enter_link) {
    return emit_file(SC_LINK, 0, args->newname, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_enter_symlink) {
    return emit_file(SC_SYMLINK, 0, args->newname, args->oldname);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_renameat) {
    return emit_file(SC_RENAMEAT, 0, args->newname, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2) {
    return emit_file(SC_RENAMEAT2, 0, args->newname, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_enter_linkat) {
    return emit_file(SC_LINKAT, 0, args->newname, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat) {
    return emit_file(SC_SYMLINKAT, 0, args->newname, args->oldname);
}

#if HAVE_MODULE_TRACEPOINTS
static __always_inline int emit_module(int syscall, int fd) {
    struct module_event *e = events.ringbuf_reserve(sizeof(struct module_event));
    if (!e) {
        count_drop(DROP_RINGBUF);
        return 0;
    }
    fill_header(&e->hdr, OP_MODULE_LOAD, sizeof(*e));
    e->syscall = syscall;
    e->fd = fd;
    events.ringbuf_submit(e, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_init_module) { return emit_module(SC_INIT_MODULE, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_finit_module) { return emit_module(SC_FINIT_MODULE, args->fd); }
#endif
