"""The benchmark behind `make bench` (bench/run.py), and workloads the live resilience tests reuse."""
