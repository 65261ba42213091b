"""Live tests: root, bcc, real probes and network namespaces (every test here is marked live)."""
