"""What every long-running process needs: structured logs, metrics, signal handling
(drain on SIGTERM) and reading secrets from the environment or files.

A leaf: imports nothing else from ``streaming``.
"""
