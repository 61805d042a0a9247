"""Where images may be read from, and reading them safely.

Input: an image event's ``uri`` (an absolute local path, a ``file://`` URI, or a
remote URI such as ``gs://bucket/dicom/x.dcm``) and an ``AccessPolicy``.
Output: the file's bytes, at most ``max_bytes`` of them, or ``ImageRejected``
with ``uri_not_allowed``, ``unreadable_uri`` or ``file_too_large``.

Events come from outside the job, so a URI is untrusted: it may point at
``/proc/self/environ``, at a FIFO that would block the worker forever, or through
a symlink out of the image store. A local file is reached by walking its path from
the allowed root's own descriptor, one component at a time with ``O_NOFOLLOW``
(``openat``): no step follows a symlink, so there is no window between a check and
the open in which a swapped path could redirect the read. Symlinks below a root are
refused; the configured root itself may be one (the operator chose it).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import urllib.parse
from typing import BinaryIO

from streaming.imaging.types import ImageRejected
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)

LOCAL_SCHEME = "file"
# Kernel and device trees are never image stores, whatever a root says.
_SYSTEM_TREES = ("/proc", "/dev", "/sys")
_LOCAL_HOSTS = ("", "localhost")
_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
               | getattr(os, "O_NOCTTY", 0))
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_READ_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """The folders and remote prefixes images may be read from.

    ``allowed_roots`` holds local folders (``/data/dicom``) and remote prefixes
    (``gs://bucket/dicom/``); a remote root allows its scheme by itself.
    ``allowed_schemes`` lists further schemes; ``file`` admits local paths.
    ``refuse_hard_links`` refuses files with more than one link (off by default:
    PACS exports use hard links legitimately).
    """
    allowed_roots: tuple[str, ...]
    allowed_schemes: tuple[str, ...] = (LOCAL_SCHEME,)
    refuse_hard_links: bool = False

    def local_roots(self) -> tuple[str, ...]:
        """Local roots as configured, normalized (symlinks in them are the operator's)."""
        return tuple(os.path.normpath(root) for root in self.allowed_roots
                     if _scheme(root) is None)

    def remote_roots(self) -> tuple[str, ...]:
        """Remote prefixes, each ending in '/' so 'dicom/' does not admit 'dicom2/'."""
        return tuple(root if root.endswith("/") else root + "/"
                     for root in self.allowed_roots if _scheme(root) is not None)

    def schemes(self) -> frozenset[str]:
        return frozenset(s.lower() for s in self.allowed_schemes) | {
            _scheme(root) for root in self.remote_roots()}


def open_image_bytes(uri: str, policy: AccessPolicy, max_bytes: int) -> bytes:
    """Read the whole file at ``uri`` if the policy allows it and it is small enough.

    Messages never repeat the URI: folder names may carry patient identity.
    """
    try:
        scheme = _scheme(uri)
    except ValueError:
        raise _refuse("the URI cannot be parsed") from None
    if scheme is None or scheme == LOCAL_SCHEME:
        return _read_local(_local_path(uri, scheme), policy, max_bytes)
    return _read_remote(uri, scheme, policy, max_bytes)


def _scheme(uri: str) -> str | None:
    """The URI's scheme in lower case, or None for a plain path."""
    parsed = urllib.parse.urlsplit(uri)
    # A one-letter "scheme" is a Windows drive, not a URI; treat it as a path.
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else None


def _refuse(message: str) -> ImageRejected:
    return ImageRejected(Reason.URI_NOT_ALLOWED, message)


def _local_path(uri: str, scheme: str | None) -> str:
    if scheme == LOCAL_SCHEME:
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc.lower() not in _LOCAL_HOSTS:
            raise _refuse("file:// URIs must name this machine (file:///path); "
                          "other hosts are not read")
        path = urllib.parse.unquote(parsed.path)
    else:
        path = uri
    if "\x00" in path:
        raise _refuse("the path contains a NUL character")
    if not os.path.isabs(path):
        raise _refuse("local paths must be absolute (/path/to/image or file:///path)")
    return path


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _root_of(path: str, policy: AccessPolicy) -> tuple[str, list[str]]:
    """The allowed root ``path`` lies in, and the components below it (lexically)."""
    if any(_under(path, tree) for tree in _SYSTEM_TREES):
        raise _refuse("system folders (/proc, /dev, /sys) are never read")
    for root in sorted(policy.local_roots(), key=len, reverse=True):
        if _under(path, root):
            return root, [] if path == root else os.path.relpath(path, root).split(os.sep)
    raise _refuse("the file is outside the allowed roots "
                  f"({_describe_roots(policy.local_roots())}); add its folder to "
                  "--allowed_roots")


def _read_local(path: str, policy: AccessPolicy, max_bytes: int) -> bytes:
    if LOCAL_SCHEME not in policy.schemes():
        raise _refuse("the access policy allows no local files ('file' is not among "
                      "its allowed schemes)")
    # Lexical: '..' is resolved here, and the walk below never follows a symlink, so the
    # name cannot lead anywhere the lexical path does not.
    root, components = _root_of(os.path.normpath(path), policy)
    fd = _open_below(root, components)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(Reason.UNREADABLE_URI,
                                "the local path is not a regular file")
        if policy.refuse_hard_links and info.st_nlink > 1:
            raise _refuse(f"the file has {info.st_nlink} hard links and hard-linked files "
                          "are refused (--refuse_hard_links)")
        _check_size(info.st_size, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return _read_capped(stream, info.st_size, max_bytes)
    except OSError as error:
        raise ImageRejected(Reason.UNREADABLE_URI, f"the local file cannot be read "
                            f"({_os_error_name(error)})") from None
    finally:
        os.close(fd)


def _open_below(root: str, components: list[str]) -> int:
    """Open ``root``/``components`` without following a symlink at any step below root."""
    try:
        directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ImageRejected(Reason.UNREADABLE_URI, f"the allowed root cannot be opened "
                            f"({_os_error_name(error)}); check --allowed_roots") from None
    try:
        for position, name in enumerate(components):
            last = position == len(components) - 1
            try:
                opened = os.open(name, _OPEN_FLAGS if last else _DIRECTORY_FLAGS,
                                 dir_fd=directory)
            except OSError as error:
                raise _walk_error(error, directory, name) from None
            os.close(directory)
            directory = opened
        opened, directory = directory, -1
        return opened
    finally:
        if directory >= 0:
            os.close(directory)


def _walk_error(error: OSError, directory: int, name: str) -> ImageRejected:
    if error.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(directory, name):
        return _refuse("the path goes through a symlink; symlinks below an allowed root "
                       "are not followed: publish the file's real path")
    return ImageRejected(Reason.UNREADABLE_URI, f"the local file cannot be opened "
                         f"({_os_error_name(error)}); check that it exists and is readable "
                         "by the job")


def _is_symlink(directory: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _os_error_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno, type(error).__name__)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageRejected(Reason.FILE_TOO_LARGE,
                            f"the file is {size} bytes, over the limit of {max_bytes}; "
                            "raise max_file_bytes if such files are expected")


def _read_capped(stream: BinaryIO, expected_size: int, max_bytes: int) -> bytes:
    """Read to the end, but never more than max_bytes + 1 bytes (a file may grow)."""
    limit = max_bytes + 1
    chunks = []
    total = 0
    want = min(expected_size + 1, limit)
    while total < limit:
        chunk = stream.read(min(want, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _READ_CHUNK
    if total > max_bytes:
        raise ImageRejected(Reason.FILE_TOO_LARGE,
                            f"the file grew past the limit of {max_bytes} bytes while "
                            "being read")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_remote(uri: str, scheme: str, policy: AccessPolicy, max_bytes: int) -> bytes:
    if scheme not in policy.schemes():
        raise _refuse(f"the URI scheme '{_safe_scheme(scheme)}' is not allowed; "
                      "allowed: " + ", ".join(sorted(policy.schemes())))
    _check_remote_location(uri, scheme, policy)
    # Imported here: Beam is heavy and only remote reads need it.
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        filesystem = FileSystems.get_filesystem(uri)
        size = filesystem.metadata(uri).size_in_bytes
        _check_size(size, max_bytes)
        # UNCOMPRESSED: AUTO would inflate *.gz objects without any size bound.
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            return _read_capped(stream, size, max_bytes)
    except ImageRejected:
        raise
    except Exception as error:  # Beam and cloud clients raise many types.
        logger.info("remote read failed: %s", type(error).__name__)
        raise ImageRejected(Reason.UNREADABLE_URI,
                            f"the {_safe_scheme(scheme)}:// object cannot be read "
                            f"({type(error).__name__}); check that it exists, that the "
                            "job's credentials can read it and that Beam's filesystem "
                            "for this scheme is installed") from None


def _check_remote_location(uri: str, scheme: str, policy: AccessPolicy) -> None:
    after_scheme = uri.split("://", 1)[1] if "://" in uri else ""
    if ".." in urllib.parse.unquote(after_scheme).split("/"):
        raise _refuse("'..' segments are not allowed in remote URIs")
    if any(c in after_scheme for c in "*?[]"):
        raise _refuse("wildcards are not allowed in remote URIs; name one object")
    normalized = f"{scheme}://{after_scheme}"
    if not any(normalized.startswith(_normalize_remote_root(root))
               for root in policy.remote_roots()):
        raise _refuse(f"the {scheme}:// URI is outside the allowed roots "
                      f"({_describe_roots(policy.remote_roots())}); add its prefix to "
                      "--allowed_roots")


def _normalize_remote_root(root: str) -> str:
    scheme, rest = root.split("://", 1)
    return f"{scheme.lower()}://{rest}"


def _safe_scheme(scheme: str) -> str:
    """The scheme as shown in messages: short and plain, never arbitrary text."""
    return scheme if scheme.isalnum() and len(scheme) <= 16 else "(unrecognised)"


def _describe_roots(roots: tuple[str, ...]) -> str:
    """The configured roots for a message, kept short."""
    if not roots:
        return "none configured"
    shown = ", ".join(roots[:3])
    return shown + (f" and {len(roots) - 3} more" if len(roots) > 3 else "")
