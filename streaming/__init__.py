"""medimg streaming: the long-running job that turns image events into findings.

Also home to what training and serving share (``imaging``: decoding and
preprocessing; ``modeling``: model metadata, registry and loading), because every
streaming worker installs this package and training depends on it.
"""
