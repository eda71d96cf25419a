"""``lanvault state``: the original service's STATE report (see the spec's JSON shape): the
files this node backed up with each chunk's degree as the holders answer now, and the chunks it
holds for others with theirs."""

from __future__ import annotations

import stat

import trio

from chunkstore.chunking import CHUNK_SIZE
from node.owner import Owner


async def state_report(owner: Owner) -> dict[str, object]:
    """The original service's STATE report (see the spec's JSON shape)."""
    node = owner.node
    files = [  # a folder's version holds its mode and times, not a file's content
        (v, complete)
        for v, complete in await owner.io.call(owner.catalog.latest_versions, "")
        if not stat.S_ISDIR(v.mode)
    ]
    wanted = sorted({a for v, _ in files for a in v.chunks})
    degrees = await node.replication.degrees(owner.owner_id, wanted) if wanted else {}
    stored = await trio.to_thread.run_sync(node.store.chunks)
    stored_degrees: dict[tuple[int, bytes], int] = {}
    by_owner: dict[int, list[bytes]] = {}
    for chunk in stored:
        by_owner.setdefault(chunk.owner, []).append(chunk.address)
    for owner_id, addresses in by_owner.items():
        found = await node.replication.query_holders(owner_id, addresses)
        for address, holders in found.items():
            stored_degrees[(owner_id, address)] = len(holders | {node.node_id})
    return {
        "node_id": node.node_id,
        "capacity_bytes": node.store.capacity,
        "used_bytes": node.store.used_bytes,
        "files": [
            {
                "path": v.path,
                "file_id": v.file_id.hex(),
                "desired_degree": v.degree,
                "size": v.size,
                "complete": complete,
                "chunks": [
                    {
                        "no": no,
                        "chunk": a.hex(),
                        "size": min(CHUNK_SIZE, v.size - no * CHUNK_SIZE),
                        "degree": degrees.get(a, 0),
                    }
                    for no, a in enumerate(v.chunks)
                ],
            }
            for v, complete in files
        ],
        "stored": [
            {
                "owner": c.owner,
                "chunk": c.address.hex(),
                "size": c.length,
                "degree": stored_degrees.get((c.owner, c.address), 1),
                "desired_degree": c.degree,
            }
            for c in stored
        ],
    }
