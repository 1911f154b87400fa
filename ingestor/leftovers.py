"""Shared memory a dead predecessor left behind: recorded at start, removed by the next start.

The supervisor owns named shared-memory blocks (the ring, the counters, the
ack table: ``/dev/shm/psm_*``) and the ring's named POSIX semaphores
(``/dev/shm/sem.mp-*``), and unlinks them when it exits. A SIGKILL of the
whole tree (the OOM killer, ``kill -9``, a power-cycled container) unlinks
nothing: with the defaults ~24 MB of RAM stay behind per start, and under
``Restart=on-failure`` a crash loop would fill the memory.

So the supervisor writes what it created to ``DATA_DIR/shared-memory.json``
(with its pid and that process's start time, so a reused pid is not taken
for it), and the next start with the same data directory unlinks whatever
a dead predecessor listed there. The file is removed at a clean exit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

RECORD = "shared-memory.json"


class Owned(msgspec.Struct):
    """What one supervisor created: its pid, its start time (clock ticks since boot), the names."""

    pid: int
    started: int
    shared_memory: list[str]
    semaphores: list[str]


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def remove_stale(data_dir: str | os.PathLike[str]) -> int:
    """Unlink what a dead predecessor of ``data_dir`` left; return how many names were removed.

    A predecessor still alive (same pid and start time) is left alone, with a warning.
    """
    path = Path(data_dir) / RECORD
    try:
        owned = msgspec.json.decode(path.read_bytes(), type=Owned)
    except FileNotFoundError:
        return 0
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
        log.warning("Ignoring %s: %s", path, e)
        return 0
    if _start_time(owned.pid) == owned.started:
        log.warning("%s names a live ingestor (pid %d): two services share this data directory", path, owned.pid)
        return 0
    import _posixshmem
    from _multiprocessing import sem_unlink

    removed = 0
    for name, unlink in [(n, _posixshmem.shm_unlink) for n in owned.shared_memory] + \
                        [(n, sem_unlink) for n in owned.semaphores]:
        try:
            unlink(name if name.startswith("/") else "/" + name)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("Could not remove %s left by a dead ingestor (pid %d): %s", name, owned.pid, e)
    if removed:
        log.warning("Removed %d shared-memory block(s) and semaphore(s) left by a dead ingestor (pid %d)",
                    removed, owned.pid)
    path.unlink(missing_ok=True)
    return removed


def record(data_dir: str | os.PathLike[str], shared_memory: list[str], semaphores: list[str]) -> None:
    """Write what this process created to ``DATA_DIR/shared-memory.json`` (atomically)."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    owned = Owned(os.getpid(), _start_time(os.getpid()) or 0, shared_memory, semaphores)
    tmp = directory / (RECORD + ".tmp")
    tmp.write_bytes(msgspec.json.encode(owned))
    os.replace(tmp, directory / RECORD)


def forget(data_dir: str | os.PathLike[str]) -> None:
    """Remove the record at a clean exit (everything in it was unlinked)."""
    (Path(data_dir) / RECORD).unlink(missing_ok=True)
