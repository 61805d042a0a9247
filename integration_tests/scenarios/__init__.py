"""Reliability scenarios against the real job and broker, as importable code.

Each scenario is run small by an integration test and in full by ``make
bench-reliability``: ``delivery`` (crashes and broker outages), ``hostile`` (a
property-based campaign of bad inputs, whose classes are in ``hostile_inputs``) and
``phi`` (patient-identity canaries). ``bad_files`` builds the broken and hostile
image files they use.
"""
