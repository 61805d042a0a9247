"""Delivery machinery shared by every transport: the dedup claims that make outcomes
effectively once, and the identities events and outcomes are claimed and settled by.

Imports only contracts and runtime (a transport hands it the topic readers it needs).
"""
