"""Reliability scenarios against the real job, broker and Redis, as importable code.

Shared by the integration tests (run small) and ``make bench-reliability`` (run in full):
``delivery`` (crashes and broker outages), ``hostile`` (a property-based campaign of bad
inputs, whose classes are in ``hostile_inputs``), ``phi`` (patient-identity canaries);
``bad_files`` builds broken image files; ``redis_server`` and ``tls_front`` start real
servers. May import ``streaming``; never tests or benchmarks.
"""
