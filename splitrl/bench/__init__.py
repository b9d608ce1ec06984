"""Throughput benchmarks beside reference implementations in the same process (`splitrl-bench`)."""
