/* Response: refuse connects (TCP, connected UDP) and UDP sends from any process of the host to addresses
 * the agent blocked. Loaded on its own (agent/probes/block.py), only when the response config enables
 * blocking, and attached to the root cgroup v2 through BPF links: the links die with the agent, so a
 * crashed agent never leaves a block behind.
 *
 * Each entry carries its own expiry (CLOCK_BOOTTIME ns) and the program checks it, so an entry the agent
 * has not removed yet (it expires them on its 1 s tick) stops blocking on time anyway.
 *
 * Key: the address (IPv4 in the first 4 bytes), the port in host order (0 = every port) and the family.
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d, dual-stack sockets) are looked up as IPv4.
 */

#define BLOCK_AF_INET 2
#define BLOCK_AF_INET6 10

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define block_ntohs(x) __builtin_bswap16(x)
#define block_htonl(x) __builtin_bswap32(x)
#else
#define block_ntohs(x) (x)
#define block_htonl(x) (x)
#endif

struct block_key {
    u8 addr[16];
    u16 port;
    u16 family;
};

struct block_val {
    u64 expires_ns;
    u64 hits;
};

/* BLOCK_MAX_ENTRIES: a -D from agent/probes/block.py (MAX_ENTRIES), declared there only. */
BPF_HASH(blocked, struct block_key, struct block_val, BLOCK_MAX_ENTRIES);

static __always_inline int block_match(struct block_key *key) {
    u64 now = bpf_ktime_get_boot_ns();
    struct block_val *val = blocked.lookup(key);
    if (!val) {
        key->port = 0;  /* a whole-address block */
        val = blocked.lookup(key);
    }
    if (!val || now >= val->expires_ns)
        return 0;
    __sync_fetch_and_add(&val->hits, 1);
    return 1;
}

static __always_inline int verdict4(struct bpf_sock_addr *ctx) {
    struct block_key key = {};
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(key.addr, &ip, 4);
    key.port = block_ntohs((u16)ctx->user_port);
    key.family = BLOCK_AF_INET;
    return block_match(&key) ? 0 : 1;  /* 0: the syscall fails with EPERM */
}

static __always_inline int verdict6(struct bpf_sock_addr *ctx) {
    struct block_key key = {};
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    key.port = block_ntohs((u16)ctx->user_port);
    /* ::ffff:a.b.c.d in network order is 0, 0, htonl(0xffff), addr */
    if (w0 == 0 && w1 == 0 && w2 == block_htonl(0xffff)) {
        __builtin_memcpy(key.addr, &w3, 4);
        key.family = BLOCK_AF_INET;
    } else {
        __builtin_memcpy(key.addr, &w0, 4);
        __builtin_memcpy(key.addr + 4, &w1, 4);
        __builtin_memcpy(key.addr + 8, &w2, 4);
        __builtin_memcpy(key.addr + 12, &w3, 4);
        key.family = BLOCK_AF_INET6;
    }
    return block_match(&key) ? 0 : 1;
}

int block_connect4(struct bpf_sock_addr *ctx) { return verdict4(ctx); }
int block_sendmsg4(struct bpf_sock_addr *ctx) { return verdict4(ctx); }
int block_connect6(struct bpf_sock_addr *ctx) { return verdict6(ctx); }
int block_sendmsg6(struct bpf_sock_addr *ctx) { return verdict6(ctx); }
