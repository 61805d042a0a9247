"""medimg streaming: the long-running job that turns image events into findings, and its tools.

Packages by role (each ``__init__`` says what it may import; ``.importlinter`` enforces it):
``job`` the graph and its steps; ``contracts`` the schemas as code and the values that
flow; ``delivery`` dedup claims; ``kafka`` a transport; ``imaging`` and ``modeling`` what
training shares with serving; ``runtime`` logs, metrics, signals, secrets; ``cli`` and
``tools`` the operator commands; ``local`` the embedded broker, local job and demo.
"""
