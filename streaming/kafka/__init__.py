"""Kafka I/O in Python: a splittable-DoFn source and an acknowledged sink (no Java needed)."""
