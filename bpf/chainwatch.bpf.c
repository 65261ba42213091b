/* The chainwatch sensor: the one BPF program the agent loads (agent/probes/source.py renders it for bcc).
 * Each concern file includes what it uses and stands alone; this file only gathers them, in the order
 * their dependencies already impose (persistence uses fd, io_uring uses persistence).
 */
#include "process.bpf.c"
#include "net.bpf.c"
#include "fd.bpf.c"
#include "persistence.bpf.c"
#include "io_uring.bpf.c"
