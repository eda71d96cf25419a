"""An in-process cluster of real nodes (real chunk stores on disk) over a ``MemoryHub``."""

from __future__ import annotations

import contextlib
import inspect
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore
from node.node import Node, NodeConfig
from node.offload import inline_work
from node.owner import Owner
from node.pending import UNSENT_BYTES

from .memnet import FaultPlan, MemoryHub


@dataclass
class Member:
    node: Node
    owner: Owner
    store: ChunkStore
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class Cluster:
    hub: MemoryHub
    members: dict[int, Member]
    root: Path
    nursery: trio.Nursery
    capacity: int

    def address(self, node_id: int) -> str:
        return f"mem:{node_id}"

    async def start(self, node_id: int, host: str | None = None, **overrides: object) -> Member:
        store = ChunkStore.open(self.root / f"n{node_id}" / "store", capacity=self.capacity)
        config = NodeConfig(
            node_id=node_id,
            host_id=host or f"host-{node_id}",
            listen=self.address(node_id),
            seeds=[self.address(n) for n in sorted(self.members) if n != node_id][:2]
            or [self.address(1)],
            heartbeat_interval=1.0,
            down_after=4.0,
            gone_after=20.0,
            request_timeout=5.0,
            repair_interval=3.0,
            scrub_interval=math.inf,
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        node = Node(config, store, self.hub.network_for(node_id))
        catalog = CatalogDB(self.root / f"n{node_id}" / "catalog.sqlite3")
        unsent = ChunkStore.open(self.root / f"n{node_id}" / "unsent", capacity=UNSENT_BYTES)
        keys = KeyRing.from_master(node_id.to_bytes(32, "big"))
        owner = Owner(node, keys, catalog, unsent=unsent)
        member = Member(node, owner, store)
        self.members[node_id] = member

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with member.scope:
                async with trio.open_nursery() as inner:
                    await inner.start(node.run)
                    await inner.start(owner.run)
                    task_status.started()
            store.close()
            unsent.close()
            catalog.close()

        await self.nursery.start(run)
        return member

    def kill(self, node_id: int) -> None:
        self.members[node_id].scope.cancel()

    async def wait_connected(self, timeout: float = 60) -> None:
        def linked() -> bool:
            live = [m for m in self.members.values() if not m.scope.cancel_called]
            return all(len(m.node.membership.up_ids()) >= len(live) - 1 for m in live)

        await eventually(linked, timeout)


async def eventually(
    predicate: Callable[[], object], timeout: float, interval: float = 0.5
) -> None:
    """Wait until ``predicate()`` is true, looking every ``interval`` seconds; after
    ``timeout`` seconds fail with the predicate's own source as the message."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return
    try:
        said = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        said = repr(predicate)
    raise AssertionError(f"not so within {timeout} s: {said}")


def seed_everything(seed: int) -> None:
    """Make a cluster run on virtual time repeat exactly from ``seed``: the nodes' own random
    choices (boot ids, dial jitter) and trio's order of running ready tasks. Trio shuffles
    that order with its module's ``_r``, deterministically once Hypothesis's plugin is loaded
    (it is, here) and ``_r`` is seeded, as Hypothesis does for its own runs."""
    import trio._core._run as trio_run

    random.seed(seed)
    trio_run._r.seed(seed)


SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 5 * CHUNK_SIZE + 17]


def write_files(folder: Path, rng: random.Random) -> dict[Path, bytes]:
    """Files of the sizes a chunker gets wrong first (empty, one byte, around one and two
    chunks, several), of random bytes from ``rng``; returns their contents."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for n, size in enumerate(SIZES):
        data = rng.randbytes(size)
        path = folder / f"file{n}.bin"
        path.write_bytes(data)
        files[path] = data
    return files


def busiest_holder(cluster: Cluster, among: Iterable[int], owner_id: int = 1) -> int:
    """Of ``among``, the node holding the most of ``owner_id``'s chunks."""
    return max(among, key=lambda n: len(cluster.members[n].store.chunks(owner_id)))


@asynccontextmanager
async def backed_up(
    tmp_path: Path, count: int, seed: int, degree: int = 2
) -> AsyncIterator[tuple[Cluster, Owner]]:
    """A cluster of ``count`` nodes (in ``tmp_path/c``) whose node 1 has backed up
    ``write_files(tmp_path/src, Random(seed))`` at ``degree``: (the cluster, node 1's owner)."""
    async with open_cluster(tmp_path / "c", count) as cluster:
        write_files(tmp_path / "src", random.Random(seed))
        owner = cluster.members[1].owner
        await owner.backup_path(tmp_path / "src", degree=degree)
        yield cluster, owner


@asynccontextmanager
async def open_cluster(
    root: Path, count: int, faults: FaultPlan | None = None, capacity: int = 10**9
) -> AsyncIterator[Cluster]:
    # On a MockClock (the ``autojump_clock`` fixture) the nodes' blocking work runs inline, so
    # that time jumps only when every task is blocked: virtual time, reproducible.
    virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    if virtual:  # and the same run from the same seed: see seed_everything
        seed_everything(faults.seed if faults else 0)
    with inline_work() if virtual else contextlib.nullcontext():
        async with trio.open_nursery() as nursery:
            hub = MemoryHub(nursery, faults)
            cluster = Cluster(hub, {}, root, nursery, capacity)
            for node_id in range(1, count + 1):
                await cluster.start(node_id)
            await cluster.wait_connected()
            yield cluster
            nursery.cancel_scope.cancel()
