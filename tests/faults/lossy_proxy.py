"""A seeded lossy TCP proxy in front of each node: ``python -m tests.faults.lossy_proxy``.

    lossy_proxy SEED RESET CORRUPT DUPLICATE MAX_DELAY LISTEN=TARGET [LISTEN=TARGET ...]

Each accepted connection draws, from the seed and its number, its own faults: in every 4 MB
each way, with probability RESET it is reset at a random place, with CORRUPT one byte is
flipped, with DUPLICATE one piece of data is sent twice; and it has a latency of up to
MAX_DELAY seconds (the pieces keep their order). TLS turns a flipped or
repeated byte into a failed connection, which is what a node must survive. It prints what it
did, as JSON, when it gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import struct
import sys
from dataclasses import asdict, dataclass

import trio

LIMIT = 4_000_000  # faults fall within a connection's first bytes


@dataclass
class Counts:
    connections: int = 0
    resets: int = 0
    corrupted: int = 0
    duplicated: int = 0
    bytes: int = 0


class Faults:
    """One direction of one connection: in each window of ``LIMIT`` bytes, with its
    probability, a reset, a flipped byte and a repeated piece at random places."""

    def __init__(self, rng: random.Random, args: list[float], delay: float) -> None:
        self.rng = rng
        self.reset, self.corrupt, self.duplicate, _max_delay = args
        self.delay = delay
        self.window = -1
        self.reset_at = self.corrupt_at = self.duplicate_at = -1

    def _draw(self, window: int) -> None:
        base = window * LIMIT

        def place(probability: float) -> int:
            return base + self.rng.randrange(LIMIT) if self.rng.random() < probability else -1

        self.window = window
        self.reset_at = place(self.reset)
        self.corrupt_at = place(self.corrupt)
        self.duplicate_at = place(self.duplicate)

    def within(self, start: int, end: int) -> tuple[bool, int, bool]:
        """For the bytes [start, end): reset?, the offset of a byte to flip (or -1), repeat?"""
        if start // LIMIT != self.window:
            self._draw(start // LIMIT)
        return (
            start <= self.reset_at < end,
            self.corrupt_at - start if start <= self.corrupt_at < end else -1,
            start <= self.duplicate_at < end,
        )


def draw(seed: int, number: int, args: list[float]) -> tuple[Faults, Faults]:
    rng = random.Random(seed * 1_000_003 + number)
    delay = rng.uniform(0, args[3])
    return (
        Faults(random.Random(rng.random()), args, delay),
        Faults(random.Random(rng.random()), args, delay),
    )


async def pipe(
    source: trio.SocketStream, sink: trio.SocketStream, faults: Faults, counts: Counts
) -> None:
    sent = 0
    send, receive = trio.open_memory_channel[tuple[float, bytes]](64)

    async def deliver() -> None:
        async for due, data in receive:
            await trio.sleep_until(due)
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver)
        while True:
            data = await source.receive_some(65536)
            if not data:
                break
            end = sent + len(data)
            reset, flip, repeat = faults.within(sent, end)
            if reset:
                counts.resets += 1
                raise trio.BrokenResourceError("reset by the proxy")
            if flip >= 0:
                counts.corrupted += 1
                flipped = bytearray(data)
                flipped[flip] ^= 0x40
                data = bytes(flipped)
            due = trio.current_time() + faults.delay
            await send.send((due, data))
            if repeat:
                counts.duplicated += 1
                await send.send((due, data))
            sent = end
            counts.bytes += len(data)
        await send.aclose()


async def relay(
    client: trio.SocketStream,
    target: tuple[str, int],
    faults: tuple[Faults, Faults],
    counts: Counts,
) -> None:
    try:
        server = await trio.open_tcp_stream(*target)
    except OSError:
        await client.aclose()
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, server, faults[0], counts)
            nursery.start_soon(pipe, server, client, faults[1], counts)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        for stream in (client, server):  # a reset, not an orderly close
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
    finally:
        for stream in (client, server):
            await trio.aclose_forcefully(stream)


async def main(argv: list[str]) -> None:
    seed = int(argv[0])
    args = [float(a) for a in argv[1:5]]
    counts = Counts()
    number = 0
    async with trio.open_nursery() as nursery:
        for pair in argv[5:]:
            listen, target = pair.split("=")
            host, port = listen.rsplit(":", 1)
            thost, tport = target.rsplit(":", 1)

            async def handler(
                client: trio.SocketStream, target: tuple[str, int] = (thost, int(tport))
            ) -> None:
                nonlocal number
                number += 1
                counts.connections += 1
                await relay(client, target, draw(seed, number, args), counts)

            listeners = await trio.open_tcp_listeners(int(port), host=host)
            nursery.start_soon(trio.serve_listeners, handler, listeners)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                print(json.dumps(asdict(counts)), flush=True)
                nursery.cancel_scope.cancel()
                return


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
