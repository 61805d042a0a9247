"""Synthetic, known-truth studies for the offline demo, tests and benchmarks."""
