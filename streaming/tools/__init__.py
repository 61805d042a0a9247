"""Operator tools that run outside the job: reconcile, dead-letter listing and replay, the
live findings viewer, the model registry view and the simulated modality (``publish``).

May import contracts, delivery, transports, modeling and runtime; never the job's graph.
"""
