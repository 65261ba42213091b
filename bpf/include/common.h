/* Helpers shared by the chainwatch probes.
 *
 * Kernel structs are never dereferenced through header types: the headers bcc compiles against may be
 * from another kernel (6.1 headers on a 6.18 kernel here), so every struct offset arrives as a -D flag
 * taken from the running kernel's BTF (agent/btf.py; see agent/probes/offsets.py for the list).
 */
#ifndef CHAINWATCH_COMMON_H
#define CHAINWATCH_COMMON_H

/* Every option and kernel feature is a -D from agent/probes/source.py render_cflags (the options' defaults
 * are declared once, in agent/config.py SensorConfig); none has a default here, and an #if on a missing one
 * is an error rather than a silent 0. */
#pragma GCC diagnostic error "-Wundef"

/* Without BTF the offset macros are offsetof() over the kernel's own headers (agent/probes/offsets.py),
 * which then come before anything that uses them. */
#if OFFSETS_FROM_HEADERS
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wundef" /* the kernel's headers are not ours to hold to it */
#include <linux/sched.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/mm_types.h>
#include <linux/net.h>
#include <net/sock.h>
#pragma GCC diagnostic pop
#endif

#include "events.gen.h"

#define S_IFMT_ 00170000
#define S_IFSOCK_ 0140000
#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10

/* Network byte order helpers (BPF runs in the host's byte order). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define cw_ntohs(x) __builtin_bswap16(x)
#define cw_htonl(x) __builtin_bswap32(x)
#define cw_htonll(x) __builtin_bswap64(x)
#else
#define cw_ntohs(x) (x)
#define cw_htonl(x) (x)
#define cw_htonll(x) (x)
#endif

/* Ring buffer size in pages (power of two): sensor.ringbuf_pages. */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Connect/accept/listen have a ring of their own: any process can make them by the thousand, and a
 * flood of them must not crowd out the process, fd and file events that most detections stand on. */
BPF_RINGBUF_OUTPUT(net_events, NET_RINGBUF_PAGES);

/* Loss counters, summed per CPU by userspace: a lost event is a possible missed attack. */
#define DROP_RINGBUF 0      /* events ring full: reserve/output failed */
#define DROP_STASH 1        /* syscall enter/exit slot could not be allocated */
#define DROP_NET_RINGBUF 2  /* net_events ring full */
#define DROP_FILE_RINGBUF 3 /* file_events ring full */
#define DROP_UNRESOLVED 4   /* a file event could not be resolved: a kernel read or the tail call failed */
#define DROP_REASONS 5
BPF_PERCPU_ARRAY(drops, u64, DROP_REASONS);

/* Process lifecycle records (fork, exec, exit) are the bulk of a build's events and no detection waits on
 * one of them alone: they are queued without waking the agent, which reads them with the next record that
 * does wake it, at least every LIFECYCLE_WAKEUP_EVERY records per CPU, or at its next poll timeout.
 * Waking the agent per record cost 8-20 us inside each program (bench/RESULTS.md). */
#define LIFECYCLE_WAKEUP_EVERY 64
BPF_PERCPU_ARRAY(lifecycle_unwoken, u32, 1);

static __always_inline u64 lifecycle_wakeup_flag(void) {
    int zero = 0;
    u32 *n = lifecycle_unwoken.lookup(&zero);
    if (!n || ++*n >= LIFECYCLE_WAKEUP_EVERY) {
        if (n)
            *n = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void count_drop(int reason) {
    u64 *n = drops.lookup(&reason);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void *read_ptr(const void *base, unsigned long off) {
    void *v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}
static __always_inline u32 read_u32(const void *base, unsigned long off) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}
static __always_inline u16 read_u16(const void *base, unsigned long off) {
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}
static __always_inline u64 read_u64(const void *base, unsigned long off) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

/* cur_task(): the current task as the kernel's BTF types it (bpf_get_current_task_btf). A load from it, or from
 * a struct pointer loaded from it (task->files->fdt, task->fs, task->mm->exe_file...), is an instruction the
 * verifier checks against BTF (PTR_TO_BTF_ID; a fault reads 0, as for a probe read), not a helper call: ~1 ns
 * against 15-20 ns for bpf_probe_read_kernel here. Only members that point to a struct stay typed; a pointer to
 * pointers or bytes (fdtable.fd, qstr.name) and anything reached from a scalar (the fd array's files, unless
 * as_file below types them) is read with the read_* helpers. */
#define BTF_PTR(base, off) (*(char **)((char *)(base) + (off)))
#define BTF_U16(base, off) (*(u16 *)((char *)(base) + (off)))
#define BTF_U32(base, off) (*(u32 *)((char *)(base) + (off)))
#define BTF_U64(base, off) (*(u64 *)((char *)(base) + (off)))

/* A kernel object reached from a plain pointer (a file from the fd array) is typed with bpf_rdonly_cast(obj,
 * btf_id), a kfunc (6.2+), and then read by loads as well: K_PTR/K_U16/K_U32/K_U64 on a pointer that came from
 * as_file() or from K_PTR. bcc cannot compile a kfunc call, so the source calls helper number
 * KFUNC_RDONLY_CAST_HELPER and the compile makes each such call the kfunc's (agent.probes.artifact.kfunc_calls).
 * Without the kfunc the same macros are probe reads. */
#if HAVE_KFUNC_RDONLY_CAST
#define rdonly_cast(p, btf_id) ((char *)((void *(*)(const void *, u32))KFUNC_RDONLY_CAST_HELPER)((p), (btf_id)))
#define as_file(p) rdonly_cast(p, BTF_ID_FILE)
/* The current task untrusted: the verifier checks a load from a trusted task_struct against its lists of safe
 * members by name (~0.5 ms per load site here: 60 ms over the program), from an untrusted one by offset only.
 * bpf_rdonly_cast is a register move once verified. */
static __always_inline char *cur_task(void) {
    return rdonly_cast(bpf_get_current_task_btf(), BTF_ID_TASK);
}
#define K_PTR(base, off) BTF_PTR(base, off)
#define K_U16(base, off) BTF_U16(base, off)
#define K_U32(base, off) BTF_U32(base, off)
#define K_U64(base, off) BTF_U64(base, off)
#else
#define as_file(p) ((char *)(p))
static __always_inline char *cur_task(void) {
    return (char *)bpf_get_current_task_btf();
}
#define K_PTR(base, off) ((char *)read_ptr(base, off))
#define K_U16(base, off) read_u16(base, off)
#define K_U32(base, off) read_u32(base, off)
#define K_U64(base, off) read_u64(base, off)
#endif

/* Nearby fields of one kernel object in one probe read. Each bpf_probe_read_kernel is a helper call costing
 * about 15-20 ns here (bench/progstats.py), the bytes it copies next to nothing, and the hot paths read
 * several fields of the same struct file, inode, dentry or sock. The offsets are compile-time constants
 * (-D from BTF), so where the fields lie within SPAN_MAX bytes the compiler keeps the one read (into a stack
 * buffer of the span's size), and for another kernel's layout the per-field reads. */
#define CW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CW_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SPAN_MAX 96
#define SPAN_FITS(lo, hi) ((hi) - (lo) <= SPAN_MAX)
#define SPAN_BUF(name, lo, hi) u8 name[SPAN_FITS(lo, hi) ? (hi) - (lo) : 16]
#define SPAN_LOAD(name, base, lo, hi)                                                  \
    do {                                                                               \
        if (SPAN_FITS(lo, hi))                                                         \
            bpf_probe_read_kernel(name, sizeof(name), (const char *)(base) + (lo));    \
    } while (0)
/* kind: ptr, u16, u32 or u64; off: the field's offset in the object. */
#define SPAN_GET(kind, name, base, lo, hi, off) \
    (SPAN_FITS(lo, hi) ? span_##kind(name + (SPAN_FITS(lo, hi) ? (off) - (lo) : 0)) : read_##kind(base, off))
static __always_inline void *span_ptr(const u8 *p) {
    void *v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
}
static __always_inline u16 span_u16(const u8 *p) {
    u16 v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
}
static __always_inline u32 span_u32(const u8 *p) {
    u32 v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
}
static __always_inline u64 span_u64(const u8 *p) {
    u64 v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
}

/* The struct file fields the probes use. inode, mnt and dentry are K_* bases (see as_file); private_data is not
 * (a void pointer is not typed). */
struct file_head {
    char *inode;
    void *private_data;
    char *mnt;
    char *dentry;
    u32 flags; /* f_flags: O_* access mode, O_APPEND... */
    u32 fmode; /* f_mode: FMODE_READ/WRITE... */
};
static __always_inline void file_head(void *file, struct file_head *h) {
    char *f = as_file(file);
    h->inode = K_PTR(f, FILE_INODE);
    h->private_data = K_PTR(f, FILE_PRIVATE_DATA);
    h->mnt = K_PTR(f, FILE_F_PATH_MNT);
    h->dentry = K_PTR(f, FILE_F_PATH_DENTRY);
    h->flags = K_U32(f, FILE_F_FLAGS);
    h->fmode = K_U32(f, FILE_F_MODE);
}

/* The struct inode fields the probes use. */
#define INODE_LO CW_MIN(CW_MIN(CW_MIN(INODE_MODE, INODE_SB), CW_MIN(INODE_INO, INODE_NLINK)), INODE_RDEV)
#define INODE_HI (CW_MAX(CW_MAX(CW_MAX(INODE_MODE, INODE_SB), CW_MAX(INODE_INO, INODE_NLINK)), INODE_RDEV) + 8)
struct inode_head {
    void *sb;
    u64 ino;
    u32 nlink;
    u32 rdev;
    u16 mode;
};
static __always_inline void inode_head(void *inode, struct inode_head *h) {
    SPAN_BUF(b, INODE_LO, INODE_HI);
    SPAN_LOAD(b, inode, INODE_LO, INODE_HI);
    h->sb = SPAN_GET(ptr, b, inode, INODE_LO, INODE_HI, INODE_SB);
    h->ino = SPAN_GET(u64, b, inode, INODE_LO, INODE_HI, INODE_INO);
    h->nlink = SPAN_GET(u32, b, inode, INODE_LO, INODE_HI, INODE_NLINK);
    h->rdev = SPAN_GET(u32, b, inode, INODE_LO, INODE_HI, INODE_RDEV);
    h->mode = SPAN_GET(u16, b, inode, INODE_LO, INODE_HI, INODE_MODE);
}

/* A process's start time is its thread-group leader's (de_thread copies it on exec from a thread). */
static __always_inline u64 task_process_start(const void *task) {
    return read_u64(read_ptr(task, TASK_GROUP_LEADER), TASK_START_BOOTTIME);
}

/* Install/CI contexts (agent/context.py decides them; see shared/design/architecture.md "Contexts").
 * contexts: tgid -> its context, set when a root execs and inherited at fork, so it survives setsid,
 * double forks and re-parenting. Userspace also writes it (roots known only by argv, seeded processes).
 * LRU so that an entry whose exit was missed cannot fill the map; start_time guards pid reuse. */
BPF_TABLE("lru_hash", u32, struct context_tag, contexts, 65536);
/* context_exes: executable basenames whose exec alone starts a context (filled by userspace from
 * rules/lists/contexts.yaml). */
BPF_HASH(context_exes, struct context_exe, u32, 64);

/* Fill the common header for the current task. */
static __always_inline void fill_header(struct event_header *h, u16 op, u32 size) {
    char *task = cur_task();
    u64 id = bpf_get_current_pid_tgid();
    h->op = op;
    h->flags = 0;
    h->size = size;
    h->ktime = bpf_ktime_get_boot_ns();
    h->tgid = id >> 32;
    h->pid = (u32)id;
    h->ppid = BTF_U32(BTF_PTR(task, TASK_REAL_PARENT), TASK_TGID);
    h->uid = (u32)bpf_get_current_uid_gid();
    h->start_time = BTF_U64(BTF_PTR(task, TASK_GROUP_LEADER), TASK_START_BOOTTIME); /* task_process_start() */
    h->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(h->comm, sizeof(h->comm));
    u32 tgid = h->tgid;
    struct context_tag *ctx = contexts.lookup(&tgid);
    if (ctx && ctx->start_time == h->start_time) {
        h->context = ctx->context;
        h->context_root_pid = ctx->root_pid;
        h->context_root_start = ctx->root_start;
    } else {
        h->context = 0;
        h->context_root_pid = 0;
        h->context_root_start = 0;
    }
}

static __always_inline void *file_inode(void *file) {
    return read_ptr(file, FILE_INODE);
}

/* The current task's fd array and its size. */
static __always_inline void *current_fd_array(u32 *max_fds) {
    char *fdt = BTF_PTR(BTF_PTR(cur_task(), TASK_FILES), FILES_FDT);
    *max_fds = BTF_U32(fdt, FDT_MAX_FDS);
    return BTF_PTR(fdt, FDT_FD);
}

/* fd -> struct file * of the current task, or 0. */
static __always_inline void *current_fd_file(int fd) {
    u32 max_fds;
    void *fdarr = current_fd_array(&max_fds);
    if (fd < 0 || (u32)fd >= max_fds)
        return 0;
    return read_ptr(fdarr, (unsigned long)fd * sizeof(void *));
}

/* The files on fds 0, 1 and 2 (0 where none): adjacent entries of the fd array, one read. */
static __always_inline void current_stdio_files(void *files[3]) {
    u32 max_fds;
    void *fdarr = current_fd_array(&max_fds);
    files[0] = files[1] = files[2] = 0;
    if (max_fds >= 3) /* always: the smallest table has BITS_PER_LONG slots */
        bpf_probe_read_kernel(files, 3 * sizeof(void *), fdarr);
}

static __always_inline int file_is_socket(void *file) {
    if (!file)
        return 0;
    u16 mode = K_U16(K_PTR(as_file(file), FILE_INODE), INODE_MODE);
    return (mode & S_IFMT_) == S_IFSOCK_;
}

/* The inode number of a socket's file, reached from its struct sock (sk->sk_socket->file->f_inode). */
static __always_inline u64 sk_inode(void *sk) {
    void *sock = read_ptr(sk, SK_SOCKET);
    if (!sock)
        return 0;
    return read_u64(file_inode(read_ptr(sock, SOCKET_FILE)), INODE_INO);
}

/* The struct socket and sock_common fields SOCK_DESCRIBE uses. */
#define SOCKET_LO CW_MIN(SOCKET_TYPE, SOCKET_SK)
#define SOCKET_HI (CW_MAX(SOCKET_TYPE, SOCKET_SK) + 8)
#define SKC_LO CW_MIN(CW_MIN(CW_MIN(SKC_DADDR, SKC_RCV_SADDR), CW_MIN(SKC_DPORT, SKC_NUM)), \
                      CW_MIN(CW_MIN(SKC_FAMILY, SKC_V6_DADDR), SKC_V6_RCV_SADDR))
#define SKC_HI (CW_MAX(CW_MAX(CW_MAX(SKC_DADDR, SKC_RCV_SADDR), CW_MAX(SKC_DPORT, SKC_NUM)), \
                       CW_MAX(CW_MAX(SKC_FAMILY, SKC_V6_DADDR), SKC_V6_RCV_SADDR)) + 16)
struct sock_peer {
    u64 ino;
    u16 type;
    u16 family;
    u16 lport;
    u16 port; /* host order */
    u8 addr[16];
    u8 laddr[16];
};
/* A socket file's inode, type, family, ports and addresses (file->private_data is the struct socket). The
 * addresses are the kernel's (sock_common after the call), not what the caller passed in. */
static __always_inline void sock_describe(void *file, struct sock_peer *p) {
    struct file_head fh;
    file_head(file, &fh);
    p->ino = read_u64(fh.inode, INODE_INO);
    void *sock = fh.private_data;
    void *sk;
    {
        SPAN_BUF(b, SOCKET_LO, SOCKET_HI);
        SPAN_LOAD(b, sock, SOCKET_LO, SOCKET_HI);
        p->type = SPAN_GET(u16, b, sock, SOCKET_LO, SOCKET_HI, SOCKET_TYPE);
        sk = SPAN_GET(ptr, b, sock, SOCKET_LO, SOCKET_HI, SOCKET_SK);
    }
    p->family = 0;
    p->lport = 0;
    p->port = 0;
    __builtin_memset(p->addr, 0, sizeof(p->addr));
    __builtin_memset(p->laddr, 0, sizeof(p->laddr));
    if (!sk)
        return;
    void *skc = (char *)sk + SOCK_SK_COMMON;
    SPAN_BUF(b, SKC_LO, SKC_HI);
    SPAN_LOAD(b, skc, SKC_LO, SKC_HI);
    p->family = SPAN_GET(u16, b, skc, SKC_LO, SKC_HI, SKC_FAMILY);
    p->lport = SPAN_GET(u16, b, skc, SKC_LO, SKC_HI, SKC_NUM);
    p->port = cw_ntohs(SPAN_GET(u16, b, skc, SKC_LO, SKC_HI, SKC_DPORT));
    if (SPAN_FITS(SKC_LO, SKC_HI)) {
        if (p->family == AF_INET_) {
            __builtin_memcpy(p->addr, b + (SPAN_FITS(SKC_LO, SKC_HI) ? SKC_DADDR - SKC_LO : 0), 4);
            __builtin_memcpy(p->laddr, b + (SPAN_FITS(SKC_LO, SKC_HI) ? SKC_RCV_SADDR - SKC_LO : 0), 4);
        } else if (p->family == AF_INET6_) {
            __builtin_memcpy(p->addr, b + (SPAN_FITS(SKC_LO, SKC_HI) ? SKC_V6_DADDR - SKC_LO : 0), 16);
            __builtin_memcpy(p->laddr, b + (SPAN_FITS(SKC_LO, SKC_HI) ? SKC_V6_RCV_SADDR - SKC_LO : 0), 16);
        }
    } else if (p->family == AF_INET_) {
        bpf_probe_read_kernel(p->addr, 4, (char *)skc + SKC_DADDR);
        bpf_probe_read_kernel(p->laddr, 4, (char *)skc + SKC_RCV_SADDR);
    } else if (p->family == AF_INET6_) {
        bpf_probe_read_kernel(p->addr, 16, (char *)skc + SKC_V6_DADDR);
        bpf_probe_read_kernel(p->laddr, 16, (char *)skc + SKC_V6_RCV_SADDR);
    }
}

/* sock_describe into a record: exec, connect and dup records carry the same field names in different structs. */
#define SOCK_DESCRIBE(file, e)                    \
    do {                                          \
        struct sock_peer p_;                      \
        sock_describe((file), &p_);               \
        (e)->sock_ino = p_.ino;                   \
        (e)->sock_type = p_.type;                 \
        (e)->family = p_.family;                  \
        (e)->lport = p_.lport;                    \
        (e)->port = p_.port;                      \
        __builtin_memcpy((e)->addr, p_.addr, 16); \
        __builtin_memcpy((e)->laddr, p_.laddr, 16); \
    } while (0)

#define S_IFIFO_ 0010000
#define S_IFCHR_ 0020000
/* Device numbers as the kernel keeps them in i_rdev: MKDEV(major, minor) = major << 20 | minor. */
#define CW_MKDEV(ma, mi) (((ma) << 20) | (mi))
#define PTMX_RDEV CW_MKDEV(5, 2)
#define UNIX_AUX_FLAG (1ULL << 63)

/* What one open file is, for the stdio graph: the inode and its filesystem (a pipe, FIFO or socket is
 * the same object in every process that holds it), the char device number (which pty slave), the open
 * flags (which way it is read), and aux: a unix socket's peer inode (the other end of a socketpair, with bit 63 set) or
 * a pty master's index (ptmx_open allocated it; the slave /dev/pts/N has minor N). */
static __always_inline void file_identity(void *file, u16 *mode, u32 *dev, u64 *ino, u32 *rdev, u32 *fflags,
                                          u64 *aux) {
    struct file_head fh;
    struct inode_head ih;
    file_head(file, &fh);
    inode_head(fh.inode, &ih);
    *mode = ih.mode;
    *ino = ih.ino;
    *dev = read_u32(ih.sb, SB_DEV);
    *rdev = ih.rdev;
    *fflags = fh.flags;
    *aux = 0;
    u16 fmt = *mode & S_IFMT_;
    if (fmt == S_IFSOCK_) {
        void *sk = read_ptr(fh.private_data, SOCKET_SK);
        if (sk && read_u16((char *)sk + SOCK_SK_COMMON, SKC_FAMILY) == AF_UNIX_) {
            /* Bit 63 marks a unix socket (peer or not); the rest is the peer's inode. struct unix_sock
             * starts with its struct sock. */
            void *peer = read_ptr(sk, UNIX_PEER);
            *aux = UNIX_AUX_FLAG | (peer ? sk_inode(peer) : 0);
        }
    } else if (fmt == S_IFCHR_ && *rdev == PTMX_RDEV) {
        void *tty = read_ptr(fh.private_data, TTY_FILE_PRIVATE_TTY);
        if (tty)
            *aux = read_u32(tty, TTY_INDEX);
    }
}

/* The peer of a sockaddr_in / sockaddr_in6 as the caller passed it: family, port (network order) and the
 * address (IPv4 in the first 4 bytes). One parser for connect's fallback, sendto and io_uring. */
static __always_inline void sockaddr_peer(const u8 *sa, u16 *family, u16 *port_be, u8 addr[16]) {
    __builtin_memcpy(family, sa, 2);
    __builtin_memcpy(port_be, sa + 2, 2);
    __builtin_memset(addr, 0, 16);
    if (*family == AF_INET_)
        __builtin_memcpy(addr, sa + 4, 4);
    else
        __builtin_memcpy(addr, sa + 8, 16);
}

/* Loopback destinations never count as remote; dropping them here is a compile-time option. */
static __always_inline int addr_is_loopback(u16 family, const u8 addr[16]) {
    if (family == AF_INET_)
        return addr[0] == 127;
    if (family == AF_INET6_) {
        u64 hi = 0, lo = 0;
        __builtin_memcpy(&hi, addr, 8);
        __builtin_memcpy(&lo, addr + 8, 8);
        if (hi == 0 && lo == cw_htonll(1ULL))
            return 1; /* ::1 */
        /* ::ffff:127.0.0.0/104 */
        return hi == 0 && (lo & 0xffffffffULL) == cw_htonl(0xffff) && addr[12] == 127;
    }
    return 0;
}

/* Arguments of a syscall, kept from its enter to its exit tracepoint, in task-local storage: a thread is in
 * one syscall at a time, the slot is found through the task itself (no hash, no bucket lock: the LRU hash
 * this replaces cost ~400 ns per connect here), it is freed with the task (a thread that dies inside a
 * syscall leaves nothing), and no user can exhaust it (each thread has its own). Only a failed allocation
 * loses a call (DROP_STASH). */
struct stash {
    s64 a;
    s64 b;
    u8 addr[28]; /* a sockaddr_in / sockaddr_in6 */
    u32 full;    /* set at enter, cleared when the exit takes it */
};
BPF_TASK_STORAGE(stash_slot, struct stash);

static __always_inline void stash_put(struct stash *s) {
    struct stash *slot = stash_slot.task_storage_get(bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!slot) {
        count_drop(DROP_STASH);
        return;
    }
    __builtin_memcpy(slot, s, sizeof(*slot));
    slot->full = 1;
}

/* Whether the current thread is between a stashing enter and its exit (without taking the stash). */
static __always_inline int stash_held(void) {
    struct stash *slot = stash_slot.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    return slot && slot->full;
}

static __always_inline int stash_take(struct stash *out) {
    struct stash *slot = stash_slot.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!slot || !slot->full)
        return 0;
    __builtin_memcpy(out, slot, sizeof(*out));
    slot->full = 0;
    return 1;
}

#endif /* CHAINWATCH_COMMON_H */
