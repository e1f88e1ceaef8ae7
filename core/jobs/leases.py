"""Who holds a job's lease, and when a lease is certainly void.

A running job carries ``lease_owner = "<hostname>:<pid>:<random>"``. Normally a lease
only ends by expiry (``OVBOT_JOB_LEASE_S``), because another process may still be
working on the job. But after a crash (kill -9, power cut, OOM killer) the next start
on the same host can do better: a lease whose process is gone can never be renewed, so
its job goes back to the front of the line at once instead of sitting out the lease.

Void means provably dead, never merely "probably":

- another host's lease: unknown here (another machine sharing the database), not void;
- this host, and the pid is not alive: void;
- this host and *our own* pid but an id no live queue of this process holds: a previous
  queue of this very process (or a dead process whose pid we inherited after a reboot):
  void. Queues register their id while they exist (``hold``), so two queues of one
  process sharing a database (tests, several Apps side by side) never void each other;
- this host and a live pid that is not ours: maybe a second ovbot, maybe a reused pid
  -- unknown, not void: the lease expiry decides, as before.

On Windows there is no harmless liveness probe (``os.kill(pid, 0)`` would terminate
the process), so nothing is void there and leases expire as before.
"""

from __future__ import annotations

import os
import socket
import uuid
import weakref

_HOST = socket.gethostname()
#: owner ids of the queues alive in this process (a fact about the process, so module-wide)
_LIVE: set[str] = set()


def new_owner_id() -> str:
    """A lease owner id; the random part tells it from an older queue that had the same pid."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def hold(owner: str, holder: object) -> None:
    """``owner`` is alive in this process for as long as ``holder`` (its queue) exists."""
    _LIVE.add(owner)
    weakref.finalize(holder, _LIVE.discard, owner)


def lease_is_void(owner: str, me: str) -> bool:
    """True when ``owner`` (another queue's id) certainly cannot renew its leases."""
    if owner == me:
        return False
    parsed, mine = _parse(owner), _parse(me)
    if parsed is None or mine is None:
        return False  # not an id we wrote (tests, another implementation): unknown
    host, pid = parsed
    my_host, my_pid = mine
    if host != my_host:
        return False
    if pid == my_pid:
        return owner not in _LIVE
    return not _alive(pid)


def _parse(owner: str) -> tuple[str, int] | None:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (True when we cannot tell)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is someone else's
        return True
    return True
