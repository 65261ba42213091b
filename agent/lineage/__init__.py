"""Process lineage: process identity, the process table and startup seeding from /proc."""

from agent.lineage.identity import (
    NS_PER_TICK,
    USER_HZ,
    ProcessKey,
    ProcStat,
    entity_id,
    parse_proc_stat,
    process_key,
    read_proc_stat,
    start_ticks_from_proc,
)
from agent.lineage.seed import seed_events
from agent.lineage.table import DEFAULT_GRACE_NS, DEFAULT_MAX_ENTRIES, Process, ProcessTable

__all__ = [
    "DEFAULT_GRACE_NS",
    "DEFAULT_MAX_ENTRIES",
    "NS_PER_TICK",
    "USER_HZ",
    "ProcStat",
    "Process",
    "ProcessKey",
    "ProcessTable",
    "entity_id",
    "parse_proc_stat",
    "process_key",
    "read_proc_stat",
    "seed_events",
    "start_ticks_from_proc",
]
