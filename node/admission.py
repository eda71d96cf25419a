"""What a node lets strangers cost before they prove a member's certificate: how many
connections at once (in all and per address), and how accept copes when descriptors run out.
Refusals are counted and logged as one line a minute, never one per connection."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("node.transport")

# Connections that have not proven a member's certificate (in TLS, or anonymous recoveries):
# at most this many at once, and this many from one address; more are closed at accept.
MAX_UNAUTHENTICATED = 128
MAX_UNAUTHENTICATED_PER_HOST = 32
REFUSAL_LOG_INTERVAL = 60.0


async def accept_loop(
    listener: trio.SocketListener,
    on_connection: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """trio.serve_listeners, but out of descriptors is one warning a minute, not a traceback
    per accept (the node goes on serving the connections it has)."""
    warned_at = -float("inf")
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                if trio.current_time() - warned_at >= REFUSAL_LOG_INTERVAL:
                    warned_at = trio.current_time()
                    log.warning("cannot accept connections for now: %s", exc.strerror or exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(on_connection, stream)


_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Admission:
    """Bounds the connections that have not proven a member's certificate: in all and per
    source address. Refusals are counted and logged as one line a minute, never per
    connection (a flood must not fill the log)."""

    def __init__(
        self,
        total: int = MAX_UNAUTHENTICATED,
        per_host: int = MAX_UNAUTHENTICATED_PER_HOST,
    ) -> None:
        self.total = total
        self.per_host = per_host
        self._open: dict[str, int] = {}
        self._count = 0
        self.refused = 0  # over a limit
        self.failed_tls = 0  # TLS handshake failed or timed out
        self._unlogged: list[int] = [0, 0]
        self._logged_at = -float("inf")
        self._last_reason = ""

    def admit(self, host: str) -> bool:
        if self._count >= self.total or self._open.get(host, 0) >= self.per_host:
            self.refused += 1
            self._unlogged[0] += 1
            self._maybe_log()
            return False
        self._count += 1
        self._open[host] = self._open.get(host, 0) + 1
        return True

    def release(self, host: str) -> None:
        self._count -= 1
        left = self._open[host] - 1
        if left:
            self._open[host] = left
        else:
            del self._open[host]

    def failed(self, reason: str) -> None:
        self.failed_tls += 1
        self._unlogged[1] += 1
        self._last_reason = reason
        self._maybe_log()

    def _maybe_log(self) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio (unit tests): log every time
            now = self._logged_at + REFUSAL_LOG_INTERVAL
        if now - self._logged_at < REFUSAL_LOG_INTERVAL:
            return
        over, tls = self._unlogged
        self._unlogged = [0, 0]
        self._logged_at = now
        parts = []
        if over:
            parts.append(f"{over} over the limit of unauthenticated connections")
        if tls:
            parts.append(f"{tls} without a valid TLS handshake (last: {self._last_reason})")
        log.info("refused connections since the last report: %s", "; ".join(parts))
