"""The event layout shared by the BPF programs and the decoder (see :mod:`agent.abi.layout`)."""
