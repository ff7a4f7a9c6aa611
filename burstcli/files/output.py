"""Before OUTPUT is touched: is it writable, is it a file we may keep state beside, is it INPUT,
and is another burstq run writing it.

One writer per OUTPUT is an exclusive `flock` on a small file next to it (OUTPUT.burstq.lock),
held for the whole run and released by the kernel however the process ends, kill -9 included.
The lock is not on OUTPUT itself: OUTPUT may be replaced by a rename (a crash-safe rewrite),
which would leave a lock on its old inode protecting nothing. A non-regular OUTPUT (/dev/null, a
FIFO) is only written to: no lock, no sidecar, no resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError, OutputError, OutputLocked, missing_file

LOCK_SUFFIX = ".burstq.lock"


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + LOCK_SUFFIX)


def check_output(output: Path) -> bool:
    """Refuse an OUTPUT that cannot be written; True when it is (or will be) a regular file,
    which gets a lock and a sidecar, False for a device or FIFO, which is only written to."""
    try:
        st = os.stat(output)
    except FileNotFoundError:
        parent = output.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {output}: no such directory {parent}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {output}: permission denied in {parent}") from None
        return True
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {output}: it is a directory")
    return stat.S_ISREG(st.st_mode)


def check_input(path: Path) -> None:
    """Refuse an INPUT that cannot be read the way a run reads it (more than once)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise missing_file(path) from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"cannot read {path}: it is a directory, not a request file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"cannot read {path}: not a regular file (a device, FIFO or socket), and a run "
            f"reads INPUT more than once; pipe it on stdin instead: burstq run - < {path}"
        )
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: by device and inode, so a hard link, a symlink or
    a bind mount is caught as surely as the same spelling."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold the one-writer lock of OUTPUT for the block; OutputLocked at once if taken."""
    path = lock_path(output)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"another burstq run (pid {holder})" if holder else "another burstq run"
            raise OutputLocked(
                f"{output} is being written by {who}; wait for it to finish or stop it, "
                "or use another -o OUTPUT"
            ) from None
        # The holder before us may have unlinked the file as it finished: a lock on that old
        # inode protects nothing, so take the one the path names now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # a full disk: the lock holds, only the pid is lost
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Unlinked while still held, so no newcomer can lock the old inode after we let go.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
