"""Benchmarks of scanstream: ``python -m benchmarks [--quick] [--json PATH]`` from the project root.

Every figure is the median and the 99th percentile over repeated runs, next to a baseline
measured in the same run on the same private Redis server (raw redis-py, or raw h5py for the
writer). See docs/performance.md for the figures, the machine and how to reproduce them.
"""
