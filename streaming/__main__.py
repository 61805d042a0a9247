"""``python -m streaming [options]``: the streaming job, as Dataflow and Flink launchers expect.

Same options as ``medimg stream``.
"""

import sys

from streaming.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
