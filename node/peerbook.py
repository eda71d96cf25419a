"""The peers a node has met, remembered across restarts (``STATE/peers.json``).

Without it a node that restarts knows only its seed addresses: if those are down, it meets
the others only when they dial it or announce themselves on the LAN, and until then it
tells whoever asks (gossip, a ``recover`` in progress) that it knows nobody. Remembered
peers are taken back as hints (``Membership.hint``): where a peer was, never proof that it
is there. Only peers this node has seen itself (an authenticated HELLO or heartbeat) are
written, so an unauthenticated announcement is never remembered.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import trio

from chunkstore.atomic import write_atomic

from .membership import Membership
from .offload import in_thread

log = logging.getLogger(__name__)
MAX_REMEMBERED = 1024  # entries read back, at most
SAVE_INTERVAL = 1.0  # seconds between checks for a change worth writing (a few ids)

Entry = tuple[int, str, str]  # node id, address, computer (host id)


def load_peer_book(path: Path) -> list[Entry]:
    """The entries of ``path``; a missing or damaged file is an empty book (it is a hint)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): starting from the configured peers", path, exc)
        return []
    entries: list[Entry] = []
    for item in data if isinstance(data, list) else []:
        if (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], int)
            and 0 <= item[0] < 2**32
            and isinstance(item[1], str)
            and isinstance(item[2], str)
            and 0 < len(item[1]) <= 300
            and len(item[2]) <= 300
        ):
            entries.append((item[0], item[1], item[2]))
    return entries[:MAX_REMEMBERED]


def save_peer_book(path: Path, entries: list[Entry]) -> None:
    """Replace ``path`` with ``entries`` (write aside, then rename: never half a file)."""
    write_atomic(path, json.dumps([list(e) for e in entries]).encode())


def seen_peers(membership: Membership) -> list[Entry]:
    """The peers worth remembering: seen by this node at least once, with an address."""
    return [
        (p.node_id, p.address, p.host_id or "")
        for p in membership.peers()
        if p.last_seen > 0 and p.address
    ]


def recall(membership: Membership, path: Path) -> int:
    """Hint every remembered peer to ``membership``; returns how many were taken."""
    entries = load_peer_book(path)
    for node_id, address, host in entries:
        if node_id != membership.own_id:
            membership.hint(node_id, address, host or None)
    return len(entries)


async def keep_peer_book(
    membership: Membership,
    path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write the book whenever the peers seen change (checked every SAVE_INTERVAL)."""
    book = {e[0]: e for e in load_peer_book(path)}
    task_status.started()
    while True:
        await trio.sleep(SAVE_INTERVAL)
        updated = dict(book)
        updated.update({e[0]: e for e in seen_peers(membership)})  # a peer not seen stays
        if updated != book:
            try:
                await in_thread(save_peer_book, path, sorted(updated.values()))
                book = updated
            except OSError as exc:
                log.warning("cannot write %s: %s", path, exc)
