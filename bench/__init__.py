"""tuner's benchmarks: each measures tuner beside its baselines in one run and prints a table.

Run one with `python -m bench.<name>`, or all with `make bench`.
"""
