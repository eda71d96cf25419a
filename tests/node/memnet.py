"""An in-process network for node tests: memory streams, optionally lossy at the frame level.

Each node gets a ``MemoryNetwork`` view of one ``MemoryHub``. Connections are
``trio.testing.memory_stream_pair`` ends; the identity a real node would prove with TLS is given
directly. A seeded ``FaultPlan`` drops, duplicates, delays (and so reorders) whole frames and
resets connections, as the trio DTLS test does for datagrams.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass

import trio
import trio.lowlevel
import trio.testing

from node.transport import Authenticated, Handler, PeerUnavailable


@dataclass
class FaultPlan:
    seed: int
    drop: float = 0.03
    dupe: float = 0.03
    delay: float = 0.06
    reset: float = 0.005
    max_delay: float = 1.5

    def choose(self, rng: random.Random) -> str:
        roll = rng.random()
        for name, p in (
            ("drop", self.drop),
            ("dupe", self.dupe),
            ("delay", self.delay),
            ("reset", self.reset),
        ):
            if roll < p:
                return name
            roll -= p
        return "deliver"


class LossyStream(trio.abc.Stream):
    """Injects faults per whole frame (4-byte length prefix) on the way out."""

    def __init__(
        self,
        inner: trio.abc.Stream,
        plan: FaultPlan,
        rng: random.Random,
        nursery: trio.Nursery,
        stats: dict[str, int],
    ) -> None:
        self._inner = inner
        self._plan = plan
        self._rng = rng
        self._nursery = nursery
        self._pending = bytearray()
        self._lock = trio.Lock()
        self._stats = stats
        self._closed = False
        # The first frame (HELLO) passes untouched: on a real link the handshake is TLS's, which
        # either completes or fails the connection; faults apply to the messages after it.
        self._handshake_done = False

    async def _deliver(self, frame: bytes) -> None:
        async with self._lock:
            if not self._closed:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._inner.send_all(frame)

    async def _deliver_later(self, frame: bytes, delay: float) -> None:
        await trio.sleep(delay)
        await self._deliver(frame)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        self._pending += data
        while len(self._pending) >= 4:
            length = int.from_bytes(self._pending[:4], "big")
            if len(self._pending) < 4 + length:
                break
            frame = bytes(self._pending[: 4 + length])
            del self._pending[: 4 + length]
            if not self._handshake_done:
                self._handshake_done = True
                await self._deliver(frame)
                continue
            action = self._plan.choose(self._rng)
            self._stats[action] = self._stats.get(action, 0) + 1
            if action == "drop":
                continue
            if action == "reset":
                await self.aclose()
                raise trio.BrokenResourceError("connection reset (injected)")
            if action == "delay":
                self._nursery.start_soon(
                    self._deliver_later, frame, self._rng.uniform(0.01, self._plan.max_delay)
                )
                continue
            await self._deliver(frame)
            if action == "dupe":
                await self._deliver(frame)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:  # pragma: no cover - not used by the node
        pass

    async def aclose(self) -> None:
        self._closed = True
        await self._inner.aclose()


class CountingStream(trio.abc.Stream):
    """Counts the bytes one node sends on a connection (``MemoryHub.sent``)."""

    def __init__(self, inner: trio.abc.Stream, sent: Counter[int], node_id: int) -> None:
        self._inner = inner
        self._sent = sent
        self._node_id = node_id

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._sent[self._node_id] += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:  # pragma: no cover - not used by the node
        pass

    async def aclose(self) -> None:
        await self._inner.aclose()


class MemoryHub:
    def __init__(self, nursery: trio.Nursery, faults: FaultPlan | None = None) -> None:
        self._nursery = nursery
        self._servers: dict[str, tuple[int, Handler, trio.Nursery]] = {}
        self.faults = faults
        self._rng = random.Random(faults.seed if faults else 0)
        self.stats: dict[str, int] = {}
        self.cut: set[int] = set()  # node ids whose links are down
        self.sent: Counter[int] = Counter()  # bytes each node sent, over all its connections

    def network_for(self, node_id: int) -> MemoryNetwork:
        return MemoryNetwork(self, node_id)

    def _wrap(self, stream: trio.abc.Stream, sender: int) -> trio.abc.Stream:
        counted = CountingStream(stream, self.sent, sender)
        if self.faults is None:
            return counted
        return LossyStream(
            counted, self.faults, random.Random(self._rng.random()), self._nursery, self.stats
        )


class MemoryNetwork:
    def __init__(self, hub: MemoryHub, node_id: int) -> None:
        self._hub = hub
        self.node_id = node_id

    async def serve(
        self,
        listen: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._hub._servers[listen] = (self.node_id, handler, nursery)
            try:
                task_status.started(listen)
                await trio.sleep_forever()
            finally:
                self._hub._servers.pop(listen, None)

    async def connect(self, address: str) -> Authenticated:
        await trio.lowlevel.checkpoint()
        entry = self._hub._servers.get(address)
        if entry is None:
            raise PeerUnavailable(f"nothing listens on {address}")
        server_id, handler, nursery = entry
        if self.node_id in self._hub.cut or server_id in self._hub.cut:
            raise PeerUnavailable(f"{address} unreachable (link cut)")
        client_end, server_end = trio.testing.memory_stream_pair()

        async def run_handler() -> None:
            try:
                await handler(Authenticated(self._hub._wrap(server_end, server_id), self.node_id))
            finally:
                await trio.aclose_forcefully(server_end)

        nursery.start_soon(run_handler)
        return Authenticated(self._hub._wrap(client_end, self.node_id), server_id)
