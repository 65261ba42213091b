"""``python -m agent.abi`` regenerates bpf/include/events.gen.h; ``--check`` fails if it is stale."""

import sys

from agent.abi.cgen import HEADER_PATH, render, write

if "--check" in sys.argv[1:]:
    if HEADER_PATH.read_text() != render():
        sys.exit(f"{HEADER_PATH} is stale: run `python -m agent.abi` (make gen) and commit it")
else:
    print(write())
