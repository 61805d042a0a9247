"""Durable, content-addressed storage of received instances under a root the job may read.

An instance is stored as ``<root>/<sha256[:2]>/<sha256>.dcm``: the same bytes always land
at the same place, so a re-sent instance is stored once. On a local root the file is
written beside its final name, flushed with fsync, renamed atomically and its folder
fsynced: after ``store`` returns, a power cut cannot leave a half-written file where the
job will look. A ``gs://`` (or other Beam FileSystems) root gets one object per instance,
which the object store publishes only once the upload is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

T = TypeVar("T")

_CHUNK = 1024 * 1024
# A partial file this old is a crashed gateway's leftover (its sender was never answered
# success and sends again); younger ones may be another gateway's write in progress.
_STALE_S = 3600


class InstanceTooLarge(Exception):
    """More bytes arrived than the gateway accepts for one instance."""


class StorageFailed(Exception):
    """The storage root could not take the instance (full, read-only, unreachable)."""


@dataclasses.dataclass(frozen=True)
class StoredInstance:
    uri: str
    sha256: str
    size: int
    newly_written: bool
    inspected: object = None  # what ``inspect`` returned


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


class InstanceStore:
    def __init__(self, root: str, max_bytes: int):
        self.max_bytes = max_bytes
        self.remote = _is_remote(root)
        if self.remote:
            self.root = root.rstrip("/")
        else:
            self.root = str(Path(root.removeprefix("file://")).resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        for partial in Path(self.root).glob(".incoming-*"):
            try:
                if time.time() - partial.stat().st_mtime > _STALE_S:
                    partial.unlink()
            except OSError:
                pass  # another gateway removed or renamed it meanwhile

    def store(self, source: BinaryIO,
              inspect: Callable[[str], T] | None = None) -> StoredInstance:
        """Copy ``source`` to its content address; raises InstanceTooLarge or StorageFailed.

        ``inspect`` reads the received copy (a local path) before it is committed; what it
        raises leaves nothing stored, and what it returns comes back as ``inspected``.
        """
        inspect = inspect or (lambda _path: None)
        try:
            if self.remote:
                return self._store_remote(source, inspect)
            return self._store_local(source, inspect)
        except OSError as error:
            raise StorageFailed(f"{type(error).__name__} (errno {error.errno})") from None

    def _store_local(self, source: BinaryIO, inspect) -> StoredInstance:
        handle = tempfile.NamedTemporaryFile(dir=self.root, prefix=".incoming-", delete=False)
        try:
            with handle:
                digest, size = _copy_hashed(source, handle, self.max_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            inspected = inspect(handle.name)
            final = Path(self.root) / digest[:2] / f"{digest}.dcm"
            if final.exists():
                os.unlink(handle.name)
                return StoredInstance(str(final), digest, size, False, inspected)
            final.parent.mkdir(exist_ok=True)
            os.replace(handle.name, final)
            _fsync_dir(final.parent)
            _fsync_dir(Path(self.root))
            return StoredInstance(str(final), digest, size, True, inspected)
        except BaseException:
            if os.path.exists(handle.name):
                os.unlink(handle.name)
            raise

    def _store_remote(self, source: BinaryIO, inspect) -> StoredInstance:
        # The content address is known only after reading everything: spool to a local
        # temporary file first (bounded by max_bytes), then upload once under its name.
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 - gs:// only

        with tempfile.NamedTemporaryFile(prefix="medimg-gateway-") as spool:
            digest, size = _copy_hashed(source, spool, self.max_bytes)
            spool.flush()
            inspected = inspect(spool.name)
            uri = f"{self.root}/{digest[:2]}/{digest}.dcm"
            if FileSystems.exists(uri):
                return StoredInstance(uri, digest, size, False, inspected)
            spool.seek(0)
            with FileSystems.create(uri, mime_type="application/dicom") as upload:
                while chunk := spool.read(_CHUNK):
                    upload.write(chunk)
            return StoredInstance(uri, digest, size, True, inspected)


def _copy_hashed(source: BinaryIO, target: BinaryIO, max_bytes: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise InstanceTooLarge(f"the instance exceeds {max_bytes} bytes (--max_file_bytes)")
        digest.update(chunk)
        target.write(chunk)
    return digest.hexdigest(), size


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the folder's entry is data too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
