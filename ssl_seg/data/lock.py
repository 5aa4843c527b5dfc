"""One run per output folder: an advisory lock that a second run meets at once, not after all its work."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from ssl_seg.data.io import output_folder
from ssl_seg.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None

LOCK_NAME = ".pseudo-label.lock"


# A killed run's image-decoding workers (forked, so they share its lock) outlive it by a few seconds.
ORPHAN_WAIT_S = 30.0


def _holder_gone(held_by: str) -> bool:
    """Whether the run named in a lock file ("pid N on HOST") was on this host and has ended."""
    words = held_by.split()
    if len(words) != 4 or words[0] != "pid" or words[2] != "on" or words[3] != socket.gethostname():
        return False
    try:
        os.kill(int(words[1]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def _locked(path: Path, mode: int, folder: Path, holder: str | None = None):
    """``path`` opened and flock-ed with ``mode``; DataError naming the holder when another run has it. A lock
    file is unlinked by the exclusive holder that ends (below), so the file locked must still be ``path``.
    A lock whose recorded holder has ended is held only by its orphaned workers: it is waited for."""
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            held_by = holder or handle.read().strip() or "the shards of a sharded run"
            handle.close()
            if _holder_gone(held_by) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise DataError(f"{folder} is in use by another pseudo-label run ({held_by}); wait for it to end, or "
                            "write to another --out (runs that share a folder split it with --shard i/n)") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # unlinked by its last holder after we opened it: take the new one


def _released(handle, path: Path) -> None:
    """Unlink an exclusively held lock file, then drop the lock: the folder is left as the run found it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    handle.close()


@contextlib.contextmanager
def folder_lock(folder: str | Path, shard: tuple[int, int] = (0, 1)):
    """Hold ``folder`` for one pseudo-label run: a lone run holds it alone, the shards of a sharded run share
    it and each holds its own shard. The kernel drops a lock with its process, so the file a killed run
    left behind is stale and simply taken over.

    >>> with folder_lock(tmp / "pseudo"):  # doctest: +SKIP
    ...     pass  # a second ``folder_lock(tmp / "pseudo")`` here raises DataError naming this process
    """
    folder = output_folder(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    try:
        with _held(folder, shard):
            yield
    except BaseException:
        if created:  # a run refused or failed before any output: leave no empty folder behind
            with contextlib.suppress(OSError):  # not empty: a shard's lock or another run's files stay
                folder.rmdir()
        raise


@contextlib.contextmanager
def _held(folder: Path, shard: tuple[int, int]):
    index, count = shard
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    whole_path, part_path = folder / LOCK_NAME, folder / f".pseudo-label.shard{index}of{count}.lock"
    with contextlib.ExitStack() as held:
        if count == 1:
            whole = _locked(whole_path, fcntl.LOCK_EX, folder)
            held.callback(_released, whole, whole_path)
            whole.truncate(0)
            whole.write(me)
            whole.flush()
        else:  # shards share the folder's lock (left in place: others may hold it) and hold their own
            held.callback(_locked(whole_path, fcntl.LOCK_SH, folder).close)
            part = _locked(part_path, fcntl.LOCK_EX, folder, f"shard {index}/{count}, held by another process")
            held.callback(_released, part, part_path)
        yield
