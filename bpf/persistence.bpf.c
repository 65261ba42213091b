/* Writes to persistence locations, decided on the path of the file the kernel actually opened, created,
 * renamed or linked: the resolved, absolute path within the process's root (cwd, dirfd, "/./", "//" and
 * symlinked directories resolved), and only for calls that succeeded.
 *
 * - open, openat, openat2, creat: at syscall exit, the new fd's struct file; when it is open for writing and
 *   a regular file, its f_path is walked up (dentry->d_parent, crossing mounts through struct mount) to the
 *   task's root.
 * - rename*, link*, symlink*: the new name is only known as typed. At exit (success only) a relative name
 *   is put after the resolved path of its directory (the dirfd's file, or the task's cwd); userspace
 *   normalises what is left ("..", "."), and such a name is always sent since the kernel cannot fold it.
 *   A symlinked directory inside a typed new name is not resolved (see README "Known limits").
 *
 * The exit probes only gather what to resolve into file_jobs and tail-call persist_finish, which walks,
 * matches (persist_path_match, generated from the persistence list by agent/probes/source.py) and emits:
 * one program with the verifier's whole instruction budget instead of a copy of the matcher in each probe.
 *
 * Most files written are in no place, and walking a path costs more than the open itself. An open's file is
 * first tested by its name (persist_name_hot) and its directory: a directory that no place can name a file
 * in (persist_dir_hot, decided once, when a file written there was resolved) is remembered in cold_dirs, and
 * the paths of files written there are not resolved again (agent.ruleset.persistence.OpenFilter is the rule).
 * File events have a ring of their own (file_events), so a flood of them cannot crowd out process events.
 */
#ifndef CHAINWATCH_PERSISTENCE_BPF_C
#define CHAINWATCH_PERSISTENCE_BPF_C

#include "common.h"
#include "persist_match.gen.h" /* persist_path_match(): generated at load from the persistence list in use */
#include "fd.bpf.c"            /* fd_open_note(): the open-exit probes report FIFO and pty master opens too */

#define FMODE_WRITE_ 0x2
#define S_IFREG_ 0100000
#define AT_FDCWD_ -100
#define WALK_BUF 768 /* 512 + 256: a name of up to 255 bytes may be copied to any offset below 512 */
#define WALK_END 511
#define WALK_DEPTH 48 /* path components plus mount crossings */
/* cw_opaque(v) (from persist_match.gen.h) hides a value's known range from clang, so the "& mask" the
 * verifier needs on a size or offset is not folded away. */

BPF_RINGBUF_OUTPUT(file_events, FILE_RINGBUF_PAGES);

/* A directory's path is fixed by its dentry, its mount and the task's root, until something moves it: a
 * rename (of it or of any directory above it) or a mount change. Each of those counts itself in
 * path_state.moving for its duration (syscall enter to exit, io_uring submission to completion) and bumps
 * path_state.gen at both ends: no verdict is used or kept while anything moves, and none from an older
 * generation is used. The key holds the directory's inode number, and a directory's removal bumps gen too, so
 * a dentry freed and reallocated to another directory (the same slab slot) does not inherit a verdict; and
 * each verdict lapses after COLD_DIR_TTL_JIFFIES. Jiffies: bpf_jiffies64() is a load where bpf_ktime_get_ns()
 * costs 50 ns here, and tracing programs may not use the coarse clock. */
struct cold_dir_key {
    u64 dentry;
    u64 mnt;
    u64 root_dentry;
    u64 root_mnt;
    u64 ino; /* the directory's inode number: unique on its filesystem while it exists */
};
struct cold_dir {
    u64 gen;
    u64 expires; /* bpf_jiffies64() */
};
#define COLD_DIR_TTL_JIFFIES 1000ULL /* 1 s at HZ=1000, 4 s at 250, 10 s at 100 */
BPF_TABLE("lru_hash", struct cold_dir_key, struct cold_dir, cold_dirs, 4096);
struct path_state {
    u64 gen;
    s64 moving; /* renames and mount changes in flight (a missed exit leaves the memo off: the safe side) */
};
BPF_ARRAY(path_state, struct path_state, 1);

/* Every change of paths voids the verdicts; moving: +1 as a move begins, -1 as it ends, 0 for a one-off (a
 * directory's removal). An end whose beginning came before the probes were attached finds nothing to take back. */
static __always_inline void paths_change(int moving) {
    int zero = 0;
    struct path_state *ps = path_state.lookup(&zero);
    if (!ps)
        return;
    if (moving > 0 || (moving < 0 && *(volatile s64 *)&ps->moving > 0))
        __sync_fetch_and_add(&ps->moving, moving);
    __sync_fetch_and_add(&ps->gen, 1);
}
#define MOVE_BEGINS 1
#define MOVE_ENDS (-1)
#define PATHS_MOVED 0

/* This CPU's last cold directory: a run of writes into one directory (a build's output) skips the hash. */
struct last_cold_dir {
    struct cold_dir_key key;
    struct cold_dir dir;
};
BPF_PERCPU_ARRAY(last_cold, struct last_cold_dir, 1);

static __always_inline int cold_dir_known(struct cold_dir_key *key, u64 gen) {
    int zero = 0;
    u64 now = bpf_jiffies64();
    struct last_cold_dir *last = last_cold.lookup(&zero);
    if (!last)
        return 0;
    if (last->key.dentry == key->dentry && last->key.mnt == key->mnt && last->key.root_dentry == key->root_dentry &&
        last->key.root_mnt == key->root_mnt && last->key.ino == key->ino && last->dir.gen == gen &&
        last->dir.expires > now)
        return 1;
    struct cold_dir *cold = cold_dirs.lookup(key);
    if (!cold || cold->gen != gen || cold->expires <= now)
        return 0;
    last->key = *key;
    last->dir = *cold;
    return 1;
}

/* What persist_finish resolves, filled by the exit probe on this CPU just before the tail call. */
struct file_job {
    u64 dentry;  /* open: the opened file's dentry and vfsmount */
    u64 vfsmnt;
    u64 uname;   /* rename/link/symlink: the new name as typed (user pointer), and its dirfd */
    u64 usource; /* the old name or link target as typed */
    s32 dfd;
    u32 syscall;
    u32 open_flags;
    u16 hdr_flags;   /* header flags to add (EV_IO_URING) */
    u16 kernel_name; /* uname is a kernel string (io_uring's struct filename), not a user pointer */
    /* open: the opened file's directory, its name's length, path_state.gen when it was read, and whether
     * cold_dirs already holds the directory's verdict (or none may be taken): persist_dir decides it otherwise */
    struct cold_dir_key dir;
    u64 gen;
    u32 name_len;
    u32 dir_known;
};
BPF_PERCPU_ARRAY(file_jobs, struct file_job, 1);

struct file_scratch {
    struct file_event ev; /* path[] is followed by source[]: a name appended past path[] stays in the value */
    char name[PATH_MAX_LEN];
    char walk[WALK_BUF];
    u32 len;   /* of ev.path, from persist_finish to persist_emit */
    u16 flags; /* header flags found while resolving */
    u16 fold;  /* the path needs folding in userspace: the kernel filter cannot judge it */
    u32 home;  /* persist_home_offset(), read back through memory: see persist_emit */
    u32 pos;   /* walk_path's write position in walk[] */
};
BPF_PERCPU_ARRAY(file_scratch, struct file_scratch, 1);
/* 0: persist_finish (resolve), 1: persist_emit (match and send), 2: persist_dir (remember a cold directory).
 * Separate programs, because the verifier would otherwise follow every way through the path walk into every
 * branch of the matchers. */
#define TAIL_FINISH 0
#define TAIL_EMIT 1
#define TAIL_DIR 2
BPF_PROG_ARRAY(file_tail, 3);

/* The path of (dentry, vfsmount) within the current task's root, into sc->ev.path (NUL-terminated); returns
 * its length. Built backwards in sc->walk, one component per step; a mount's root steps to its mountpoint.
 * The write position lives in the map and is read back with volatile loads: the verifier then sees one
 * state per iteration, not one per mix of components and mount crossings so far. */
static __always_inline u32 walk_path(void *dentry, void *vfsmnt, struct file_scratch *sc, struct file_job *job) {
    /* An open's exit read the task's root for its directory key: the walk uses that same root (a chroot in
     * between must not give the key another root's path). A new name's walk reads it here. */
    void *root_dentry = (void *)job->dir.root_dentry, *root_mnt = (void *)job->dir.root_mnt;
    if (!job->dentry) {
        /* Probe reads, not typed loads: the walk's pointers must be scalars in every way into the loop, or the
         * verifier follows the loop once per mix of typed and untyped (persist_finish: 11 -> 85 ms to load). */
        char *fs = BTF_PTR(cur_task(), TASK_FS);
        root_dentry = read_ptr(fs, FS_ROOT_DENTRY);
        root_mnt = read_ptr(fs, FS_ROOT_MNT);
    }
    void *mnt = (char *)vfsmnt - MOUNT_MNT;
    volatile u32 *vpos = &sc->pos;
    char *buf = sc->walk;
    int done = 0;
    *vpos = WALK_END;
    buf[WALK_END] = 0;
    /* A mount's root changes only when the walk crosses to the parent mount. */
    void *mnt_root = read_ptr(vfsmnt, VFSMOUNT_MNT_ROOT);
#define DENTRY_LO CW_MIN(CW_MIN(DENTRY_D_PARENT, DENTRY_D_NAME_LEN), DENTRY_D_NAME_NAME)
#define DENTRY_HI (CW_MAX(CW_MAX(DENTRY_D_PARENT, DENTRY_D_NAME_LEN), DENTRY_D_NAME_NAME) + 8)
#pragma clang loop unroll(disable)
    for (int i = 0; i < WALK_DEPTH; i++) {
        if (!dentry || (dentry == root_dentry && vfsmnt == root_mnt)) {
            done = 1;
            break;
        }
        /* d_parent and d_name (its length and name pointer) sit together in struct dentry: one read. */
        SPAN_BUF(d, DENTRY_LO, DENTRY_HI);
        SPAN_LOAD(d, dentry, DENTRY_LO, DENTRY_HI);
        void *parent = SPAN_GET(ptr, d, dentry, DENTRY_LO, DENTRY_HI, DENTRY_D_PARENT);
        if (dentry == mnt_root || dentry == parent) {
            void *mparent = read_ptr(mnt, MOUNT_MNT_PARENT);
            if (dentry != mnt_root || !mparent || mparent == mnt) {
                done = 1; /* the top of the mount tree */
                break;
            }
            dentry = read_ptr(mnt, MOUNT_MNT_MOUNTPOINT);
            mnt = mparent;
            vfsmnt = (char *)mnt + MOUNT_MNT;
            mnt_root = read_ptr(vfsmnt, VFSMOUNT_MNT_ROOT);
            continue;
        }
        u32 len = SPAN_GET(u32, d, dentry, DENTRY_LO, DENTRY_HI, DENTRY_D_NAME_LEN);
        const void *name = SPAN_GET(ptr, d, dentry, DENTRY_LO, DENTRY_HI, DENTRY_D_NAME_NAME);
        u32 pos = *vpos;
        if (len == 0 || len >= PATH_MAX_LEN || len + 1 > pos)
            break; /* too long for the record: keep the part nearest the file */
        pos -= len;
        cw_opaque(len);
        if (bpf_probe_read_kernel(buf + (pos & WALK_END), len & (PATH_MAX_LEN - 1), name) != 0) {
            count_drop(DROP_UNRESOLVED);
            break;
        }
        pos -= 1;
        buf[pos & WALK_END] = '/';
        *vpos = pos;
        dentry = parent;
    }
    if (!done)
        sc->flags |= EV_FILENAME_TRUNCATED;
    u32 pos = *vpos & WALK_END;
    u32 n = WALK_END - pos;
    char *out = sc->ev.path;
    if (n == 0) {
        out[0] = '/';
        out[1] = 0;
        return 1;
    }
    if (n > PATH_MAX_LEN - 1) {
        n = PATH_MAX_LEN - 1;
        sc->flags |= EV_FILENAME_TRUNCATED;
    }
    cw_opaque(n);
    bpf_probe_read_kernel(out, n & (PATH_MAX_LEN - 1), buf + pos);
    out[n & (PATH_MAX_LEN - 1)] = 0;
    return n;
}

/* A typed name with "//", "/./" or "/../" (or ending in "/." or "/..") that the kernel filter cannot judge. */
static __always_inline int needs_folding(const char *p) {
#pragma clang loop unroll(disable)
    for (int i = 0; i < PATH_MAX_LEN - 1; i++) {
        char c = p[i];
        if (c == 0)
            return 0;
        if (c != '/')
            continue;
        char c1 = p[i + 1], c2 = p[i + 2];
        if (c1 == '/')
            return 1;
        if (c1 == '.' && (c2 == '/' || c2 == 0 || (c2 == '.' && (p[i + 3] == '/' || p[i + 3] == 0))))
            return 1;
    }
    return 0;
}

int persist_finish(void *ctx) {
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    struct file_scratch *sc = file_scratch.lookup(&zero);
    if (!job || !sc)
        return 0;
    struct file_event *e = &sc->ev;
    void *dentry = (void *)job->dentry, *vfsmnt = (void *)job->vfsmnt;
    int n = 0;
    sc->flags = 0;
    if (job->uname) {
        if (job->kernel_name)
            n = bpf_probe_read_kernel_str(sc->name, sizeof(sc->name), (const void *)job->uname);
        else
            n = bpf_probe_read_user_str(sc->name, sizeof(sc->name), (const void *)job->uname);
        if (n <= 1)
            return 0;
        if (n == sizeof(sc->name))
            sc->flags |= EV_FILENAME_TRUNCATED;
        cw_opaque(n);
        if (sc->name[0] == '/') {
            bpf_probe_read_kernel(e->path, n & (PATH_MAX_LEN - 1), sc->name);
            sc->len = (u32)(n - 1) & (PATH_MAX_LEN - 1);
            goto emit;
        }
        /* Relative: after the directory it is relative to. */
        char *fs = BTF_PTR(cur_task(), TASK_FS);
        dentry = read_ptr(fs, FS_PWD_DENTRY); /* probe reads: scalars for the walk (see walk_path) */
        vfsmnt = read_ptr(fs, FS_PWD_MNT);
        if (job->dfd != AT_FDCWD_) {
            void *dir = current_fd_file(job->dfd);
            dentry = read_ptr(dir, FILE_F_PATH_DENTRY); /* probe reads, as above (file_head's are typed) */
            vfsmnt = read_ptr(dir, FILE_F_PATH_MNT);
        }
    }
    u32 len = walk_path(dentry, vfsmnt, sc, job);
    if (n > 1) {
        if (len > 1) /* not the root: "/etc" + "/" + name */
            e->path[len++ & (PATH_MAX_LEN - 1)] = '/';
        else
            len = 1;
        bpf_probe_read_kernel(e->path + (len & (PATH_MAX_LEN - 1)), n & (PATH_MAX_LEN - 1), sc->name);
        len += (u32)(n - 1);
        if (len > PATH_MAX_LEN - 1) {
            len = PATH_MAX_LEN - 1;
            sc->flags |= EV_FILENAME_TRUNCATED;
        }
        cw_opaque(len);
        e->path[len & (PATH_MAX_LEN - 1)] = 0;
    }
    sc->len = len;
emit:
    file_tail.call(ctx, TAIL_EMIT);
    count_drop(DROP_UNRESOLVED); /* only reached when the tail call failed */
    return 0;
}

int persist_emit(void *ctx) {
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    struct file_scratch *sc = file_scratch.lookup(&zero);
    if (!job || !sc)
        return 0;
    struct file_event *e = &sc->ev;
    u32 len = sc->len;
    if (len > PATH_MAX_LEN - 1)
        return 0;
    /* Results go through the map and are read back with volatile loads: the verifier then knows nothing
     * of their values and follows one state into the matcher instead of one per possible result. */
    sc->fold = job->uname ? needs_folding(e->path) : 0;
    sc->home = persist_home_offset(e->path, len);
    if (!*(volatile u16 *)&sc->fold && !persist_path_match(e->path, len, *(volatile u32 *)&sc->home))
        goto verdict;
    fill_header(&e->hdr, OP_FILE_WRITE, sizeof(*e));
    e->hdr.flags |= sc->flags | job->hdr_flags;
    e->syscall = job->syscall;
    e->open_flags = job->open_flags;
    e->result = 0;
    e->path_len = len;
    e->source_len = 0;
    e->_pad = 0;
    e->source[0] = 0;
    if (job->usource) {
        int n = job->kernel_name
                    ? bpf_probe_read_kernel_str(e->source, sizeof(e->source), (const void *)job->usource)
                    : bpf_probe_read_user_str(e->source, sizeof(e->source), (const void *)job->usource);
        e->source_len = n > 0 ? n - 1 : 0;
    }
    if (file_events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_drop(DROP_FILE_RINGBUF);
verdict:
    if (job->dentry && !job->dir_known)
        file_tail.call(ctx, TAIL_DIR);
    return 0;
}

/* The opened file's directory is the resolved path minus the name: remember it in cold_dirs when no place
 * can name a file in it. */
int persist_dir(void *ctx) {
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    struct file_scratch *sc = file_scratch.lookup(&zero);
    if (!job || !sc || !job->dentry || job->dir_known || (sc->flags & EV_FILENAME_TRUNCATED))
        return 0;
    u32 len = sc->len, nl = job->name_len;
    if (nl == 0 || nl >= len || len > PATH_MAX_LEN - 1)
        return 0;
    u32 dlen = len - nl;
    cw_opaque(dlen);
    dlen &= PATH_MAX_LEN - 1;
    if (dlen == 0 || sc->ev.path[(dlen - 1) & (PATH_MAX_LEN - 1)] != '/')
        return 0; /* the name is not the path's last part: no verdict */
    /* The path's last part must be the file's own name: a file bind-mounted onto another name (its dentry is a
     * mount root) is reached under the mountpoint's name, and its directory key would not be that path's. */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < PATH_MAX_LEN - 1; i++) {
        if (i >= nl)
            break;
        if (sc->ev.path[(dlen + i) & (PATH_MAX_LEN - 1)] != sc->name[i & (PATH_MAX_LEN - 1)])
            return 0;
    }
    bpf_probe_read_kernel(sc->walk, dlen, sc->ev.path);
    sc->walk[dlen] = 0;
    if (persist_dir_hot(sc->walk, *(volatile u32 *)&sc->home))
        return 0;
    /* Kept only if nothing moved since the open's exit read the generation, and nothing is moving now. */
    struct path_state *ps = path_state.lookup(&zero);
    if (!ps || *(volatile u64 *)&ps->gen != job->gen || *(volatile s64 *)&ps->moving > 0)
        return 0;
    struct cold_dir verdict = {.gen = job->gen, .expires = bpf_jiffies64() + COLD_DIR_TTL_JIFFIES};
    cold_dirs.update(&job->dir, &verdict);
    return 0;
}

static __always_inline void finish(void *ctx) {
    file_tail.call(ctx, TAIL_FINISH);
    count_drop(DROP_UNRESOLVED); /* only reached when the tail call failed */
}

/* After a successful open (ret: the new fd) in the current task: resolve and match its file if it is a
 * regular file open for writing. hdr_flags: header flags to add (EV_IO_URING for io_uring completions). */
static __always_inline int on_open_exit_from(void *ctx, long ret, u32 syscall, u16 hdr_flags) {
    if (ret < 0)
        return 0;
    void *file = current_fd_file((int)ret);
    if (!file)
        return 0;
    struct file_head fh;
    file_head(file, &fh);
    /* Regular files only: writes to /dev/null, ttys and fifos (every shell redirection) stop here; a FIFO or
     * a pty master is an end of the stdio graph (fd.bpf.c). */
    if ((K_U16(fh.inode, INODE_MODE) & S_IFMT_) != S_IFREG_)
        return fd_open_note(file, ret);
    if (!(fh.fmode & FMODE_WRITE_))
        return 0;
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    struct file_scratch *sc = file_scratch.lookup(&zero);
    struct path_state *ps = path_state.lookup(&zero);
    if (!job || !sc || !ps)
        return 0;
    /* The generation before anything it guards: a move landing after this read voids what is read below. */
    job->gen = *(volatile u64 *)&ps->gen;
    int memo = *(volatile s64 *)&ps->moving <= 0;
    /* The file's name and directory, and the task's root. */
    char *fs = BTF_PTR(cur_task(), TASK_FS);
    char *parent = K_PTR(fh.dentry, DENTRY_D_PARENT);
    job->dir.dentry = (u64)parent;
    job->dir.mnt = (u64)fh.mnt;
    job->dir.root_dentry = (u64)BTF_PTR(fs, FS_ROOT_DENTRY);
    job->dir.root_mnt = (u64)BTF_PTR(fs, FS_ROOT_MNT);
    job->dir.ino = 0;
    if (memo)
        job->dir.ino = K_U64(K_PTR(parent, DENTRY_D_INODE), INODE_INO);
    job->dir_known = 1;
    job->name_len = 0;
    u32 nl = K_U32(fh.dentry, DENTRY_D_NAME_LEN);
    if (nl > 0 && nl < PATH_MAX_LEN) {
        cw_opaque(nl);
        nl &= PATH_MAX_LEN - 1;
        const void *name = K_PTR(fh.dentry, DENTRY_D_NAME_NAME);
        if (bpf_probe_read_kernel(sc->name, nl, name) == 0) {
            sc->name[nl] = 0;
            int known = memo && cold_dir_known(&job->dir, job->gen);
            if (known && !persist_name_hot(sc->name, nl))
                return 0; /* a cold directory, and a name no place has */
            job->dir_known = known || !memo; /* while something moves, no verdict is taken */
            job->name_len = nl;
        }
    }
    job->dentry = (u64)fh.dentry;
    job->vfsmnt = (u64)fh.mnt;
    job->uname = 0;
    job->usource = 0;
    job->dfd = 0;
    job->syscall = syscall;
    job->hdr_flags = hdr_flags;
    job->kernel_name = 0;
    /* The kernel keeps the access mode and O_APPEND in f_flags; O_CREAT and O_TRUNC are gone by now. */
    job->open_flags = fh.flags;
    finish(ctx);
    return 0;
}

static __always_inline int on_open_exit(void *ctx, long ret, u32 syscall) {
    return on_open_exit_from(ctx, ret, syscall, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return on_open_exit(args, args->ret, SC_OPENAT); }
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return on_open_exit(args, args->ret, SC_OPENAT2); }

/* rename/link/symlink: the typed names and the new name's dirfd, kept from enter to exit. */
/* moves: the call is a rename, which moves every path below the name when it is a directory. */
static __always_inline void name_enter(long newdfd, const char *newname, const char *source, u32 syscall, int moves) {
    if (moves)
        paths_change(MOVE_BEGINS);
    struct stash s = {};
    s.a = newdfd;
    s.b = syscall;
    u64 ptrs[2] = {(u64)newname, (u64)source};
    __builtin_memcpy(s.addr, ptrs, sizeof(ptrs));
    stash_put(&s);
}

static __always_inline int name_exit(void *ctx, long ret, int moves) {
    if (moves)
        paths_change(MOVE_ENDS);
    struct stash s;
    if (!stash_take(&s) || ret != 0)
        return 0;
    int zero = 0;
    struct file_job *job = file_jobs.lookup(&zero);
    if (!job)
        return 0;
    u64 ptrs[2];
    __builtin_memcpy(ptrs, s.addr, sizeof(ptrs));
    job->dentry = 0;
    job->vfsmnt = 0;
    job->uname = ptrs[0];
    job->usource = ptrs[1];
    job->dfd = (s32)s.a;
    job->syscall = (u32)s.b;
    job->open_flags = 0;
    job->hdr_flags = 0;
    job->kernel_name = 0;
    finish(ctx);
    return 0;
}

#if HAVE_SYS_OPEN
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return on_open_exit(args, args->ret, SC_OPEN); }
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return on_open_exit(args, args->ret, SC_CREAT); }
TRACEPOINT_PROBE(syscalls, sys_enter_rename) {
    name_enter(AT_FDCWD_, args->newname, args->oldname, SC_RENAME, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return name_exit(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_link) {
    name_enter(AT_FDCWD_, args->newname, args->oldname, SC_LINK, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_link) { return name_exit(args, args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_symlink) {
    name_enter(AT_FDCWD_, args->newname, args->oldname, SC_SYMLINK, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlink) { return name_exit(args, args->ret, 0); }
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_renameat) {
    name_enter(args->newdfd, args->newname, args->oldname, SC_RENAMEAT, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return name_exit(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2) {
    name_enter(args->newdfd, args->newname, args->oldname, SC_RENAMEAT2, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return name_exit(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_linkat) {
    name_enter(args->newdfd, args->newname, args->oldname, SC_LINKAT, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_linkat) { return name_exit(args, args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat) {
    name_enter(args->newdfd, args->newname, args->oldname, SC_SYMLINKAT, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlinkat) { return name_exit(args, args->ret, 0); }

/* Mount changes move the paths below a mount (a moved or detached mount, a new root); removing a directory
 * frees its dentry and inode number for another directory. */
#define MOVE_PROBES(call)                                                                                  \
    TRACEPOINT_PROBE(syscalls, sys_enter_##call) {                                                         \
        paths_change(MOVE_BEGINS);                                                                         \
        return 0;                                                                                          \
    }                                                                                                      \
    TRACEPOINT_PROBE(syscalls, sys_exit_##call) {                                                          \
        paths_change(MOVE_ENDS);                                                                           \
        return 0;                                                                                          \
    }
MOVE_PROBES(mount)
MOVE_PROBES(umount)
MOVE_PROBES(move_mount)
MOVE_PROBES(pivot_root)
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) {
    if (args->ret == 0)
        paths_change(PATHS_MOVED);
    return 0;
}
#define AT_REMOVEDIR_ 0x200
/* unlinkat's exit does not say whether it removed a directory: the bump comes at entry, before the removal. A
 * verdict taken between the two would have to be for that directory while it was being emptied. */
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat) {
    if (args->flag & AT_REMOVEDIR_)
        paths_change(PATHS_MOVED);
    return 0;
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

#endif /* CHAINWATCH_PERSISTENCE_BPF_C */
