"""``python -m agent.abi`` regenerates bpf/include/events.gen.h."""

from agent.abi.cgen import write

print(write())
