"""Files the pipeline writes: atomic replacement, modes that follow the umask, and locks.

Every durable file goes through :func:`atomic_write`: the content is written to a hidden
temporary file in the same folder, flushed to disk, given the mode a plain ``open`` would give
it, then renamed over the target, so a reader sees the old file or the new one, never a mix.
Locks are advisory ``filelock`` locks: one writer at a time per store partition or per
registered model, across threads and processes. :func:`check_writable` tells, before any work,
whether a place can be written at all.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["atomic_write", "check_writable", "file_lock", "file_mode", "fsync_dir"]


@functools.cache
def _umask() -> int:
    # /proc tells without changing anything; os.umask() can only be read by setting it, which
    # another thread creating a file at that moment would see.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0644 under 022)."""
    return 0o666 & ~_umask()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path, content: bytes | Callable[[Path], object], *, fsync: bool = True
) -> None:
    """Replace ``path`` with ``content`` (bytes, or a function writing the file it is given).

    On any failure the target is left as it was and the temporary file is removed.
    ``fsync=False`` skips the flushes (for files whose loss in a power cut is harmless).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if isinstance(content, bytes | bytearray | memoryview):
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        else:
            os.close(fd)
            content(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


@contextlib.contextmanager
def file_lock(path: str | Path, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, parents too) for the block.

    ``waiting``: a progress line logged when another holder makes this one wait. The lock is
    the kernel's (``flock``): a holder that dies, even by SIGKILL, releases it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting:
            logging.getLogger("pipelines").info("%s", waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def check_writable(path: str | Path) -> None:
    """Raise the OSError that writing ``path`` would meet (naming what refused); changes
    nothing.

    An existing file is opened for writing; a folder (or, for a missing path, the nearest
    existing folder above it, where the missing ones would be made) must take a new file.
    """
    path = Path(path)
    if path.is_file():
        os.close(os.open(path, os.O_WRONLY))  # no truncation, no change
        return
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    effective = os.access in os.supports_effective_ids  # setuid: the rights used to write
    if os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        return
    # access() says no without saying why: a real attempt gives the system's words
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    os.close(fd)
    os.unlink(name)
