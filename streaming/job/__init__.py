"""The streaming job: its options, its graph (``pipeline``) and the steps that build findings.

May import contracts, delivery, imaging, modeling, runtime and a transport package. Never
imports training, the CLI, operator tools, the local/demo tooling or tests.
"""
