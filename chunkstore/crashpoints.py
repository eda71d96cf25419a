"""Named points where the fault suite kills a process, one at a time.

``LANVAULT_CRASH_AT=NAME`` in a process's environment makes it SIGKILL itself the first time it
reaches NAME, as a power cut or the OOM killer would stop it between two steps: each point sits
between two durable steps of a commit (a write and the record that names it, a record and the
message that acts on it). ``tests/faults/test_crash_points.py`` crashes every point in turn and
checks that nothing acknowledged is lost and ``check`` is clean after a restart. Without the
variable, a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

# name -> the step it falls between (each is crashed in turn by the fault suite)
POINTS: dict[str, str] = {
    "store.written": "a holder wrote records to a segment, before the index names them",
    "backup.sent": "a backup's chunks are on the holders, before its version is recorded",
    "backup.recorded": "a backup's version is recorded, before it is marked complete",
    "backup.group": "a group of small files was sent, before its versions are committed",
    "cut.outbox": "a mount cut's chunks are in the outbox, before the catalog names them",
    "cut.committed": "a mount cut is committed, before the daemon is told",
    "repair.copied": "a repair made a copy, before the pass goes on",
    "delete.recorded": "a delete is recorded (tombstones), before any holder is told",
    "delete.sent": "a holder deleted chunks, before the owner cleared its tombstones",
    "prune.recorded": "a prune dropped versions and owes deletes, before any is sent",
    "reclaim.copied": "a reclaim copied chunks elsewhere, before it drops its own",
}

_AT = os.environ.get("LANVAULT_CRASH_AT", "")


def reached(name: str) -> None:
    """Die here if the environment asks for it (see the module's docstring)."""
    if _AT and name == _AT:
        os.kill(os.getpid(), signal.SIGKILL)
