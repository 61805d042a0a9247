"""Benchmarks (``make bench*``): ratios measured in one run, written as JSON to ``results/``.

May import the product and ``scenarios``; never the tests.
"""
