"""Unit tests: pure Python, no kernel or BPF needed."""
