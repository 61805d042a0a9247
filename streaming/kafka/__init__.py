"""The Kafka transport in Python (no Java): admin, client configuration, a splittable-DoFn
source with its offset ledger, an acknowledged sink, and topic readers (outcomes, reconcile).

May import contracts, delivery and runtime; never the job, imaging, modeling or tools.
"""
