"""Tests with real processes: the embedded broker, the streaming job, Redis, Airflow.

Scenarios they share with the benchmarks live in ``scenarios``; nothing imports the tests.
"""
