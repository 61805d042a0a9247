"""Models for serving and training: metadata, the registry, loading, scoring, hot swap and
the RunInference handler.

May import imaging, contracts and runtime; never a transport, the job, delivery or tools.
"""
