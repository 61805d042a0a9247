"""Which consumed offsets are settled, and so may be committed.

The reader tells the ledger each offset it hands to the pipeline; the sink tells it
when that record's finding or dead letter is acknowledged by the broker. The
committable position of a partition is one past the longest run of settled offsets
from the start: an unsettled record holds back every later commit, so a restart
replays it rather than losing it. Commits never move backwards.

One ledger per consumer group, shared by the reader and the sinks of the same
worker process: the job's hot path is one fused stage, so a record is read and
published in the same process. On a runner that moves a partition between processes
each process only knows what it read itself: ``resume_at`` forgets what a restriction
start says is behind, and the reader commits only forward of the group's offset.
"""

from __future__ import annotations

import collections
import threading

from streaming.contracts.records import SourcePosition


class _PartitionLedger:
    __slots__ = ("outstanding", "settled", "committable", "committed")

    def __init__(self):
        self.outstanding: collections.deque[int] = collections.deque()  # read order
        self.settled: set[int] = set()
        self.committable: int | None = None  # next offset to read after a restart
        self.committed: int | None = None


def _advance(ledger: _PartitionLedger) -> None:
    while ledger.outstanding and ledger.outstanding[0] in ledger.settled:
        offset = ledger.outstanding.popleft()
        ledger.settled.discard(offset)
        ledger.committable = max(offset + 1, ledger.committable or 0)


class OffsetLedger:
    def __init__(self):
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int], _PartitionLedger] = {}

    def _ledger(self, topic: str, partition: int) -> _PartitionLedger:
        return self._partitions.setdefault((topic, partition), _PartitionLedger())

    def read(self, position: SourcePosition) -> None:
        """The reader handed this record to the pipeline; it is outstanding until settled."""
        with self._lock:
            ledger = self._ledger(position.topic, position.partition)
            floor = ledger.committable if ledger.committable is not None else -1
            if position.offset < floor:
                return  # a replay of something already settled and committable
            if not ledger.outstanding or position.offset > ledger.outstanding[-1]:
                ledger.outstanding.append(position.offset)
            elif position.offset not in ledger.outstanding:
                # A retried bundle re-reads from an earlier checkpoint: keep read order.
                ordered = sorted({*ledger.outstanding, position.offset})
                ledger.outstanding = collections.deque(ordered)

    def resume_at(self, topic: str, partition: int, start: int) -> None:
        """A new restriction of this partition starts at ``start`` in this process.

        The runner only hands out a restriction starting at ``start`` once the bundles
        that claimed the offsets before it have completed, their outcomes flushed,
        somewhere. Offsets below it still outstanding here belong to a bundle that failed
        in this process and was retried elsewhere: they would never settle, and would
        hold back this process's commits of the partition forever.
        """
        with self._lock:
            ledger = self._ledger(topic, partition)
            while ledger.outstanding and ledger.outstanding[0] < start:
                ledger.outstanding.popleft()
            ledger.settled = {offset for offset in ledger.settled if offset >= start}
            _advance(ledger)

    def settle(self, position: SourcePosition) -> None:
        """This record's outcome is acknowledged by the broker."""
        with self._lock:
            ledger = self._ledger(position.topic, position.partition)
            if ledger.committable is not None and position.offset < ledger.committable:
                return  # a replay that read() did not track: nothing would ever clear it
            ledger.settled.add(position.offset)
            _advance(ledger)

    def to_commit(self, topic: str, partition: int) -> int | None:
        """The offset to commit now, or None when nothing new is settled."""
        with self._lock:
            ledger = self._ledger(topic, partition)
            if ledger.committable is None:
                return None
            if ledger.committed is not None and ledger.committable <= ledger.committed:
                return None
            return ledger.committable

    def committed(self, topic: str, partition: int, offset: int) -> None:
        """The broker accepted a commit of ``offset``."""
        with self._lock:
            ledger = self._ledger(topic, partition)
            ledger.committed = max(offset, ledger.committed or 0)

    def outstanding(self, topic: str, partition: int) -> int:
        with self._lock:
            return len(self._ledger(topic, partition).outstanding)


_LEDGERS: dict[str, OffsetLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def ledger_for(group_id: str) -> OffsetLedger:
    """The process-wide ledger of one consumer group."""
    with _LEDGERS_LOCK:
        return _LEDGERS.setdefault(group_id, OffsetLedger())
