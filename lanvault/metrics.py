"""The node's Prometheus metrics (``lanvault node --metrics HOST:PORT``; off by default).

``prometheus_client`` provides the metric families and the text exposition format; the HTTP
side is a small trio responder (``GET /metrics``), so no thread of prometheus_client's own runs
beside the event loop. Values are read when scraped: store and catalog sizes, peers, the holder's
byte counters, the last backup, repair and scrub results, what recovery has, and how long
answering each kind of peer request took.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from node.node import LATENCY_BUCKETS
from node.transport import split_address

from .health import Health

log = logging.getLogger(__name__)
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


class HealthCollector(Collector):
    """The metrics of the node's health snapshot, taken just before each scrape."""

    def __init__(self) -> None:
        self.health: Health | None = None

    def collect(self) -> Iterator[Metric]:
        h = self.health
        if h is None:
            return

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"lanvault_{name}", text, value=value)

        yield gauge("store_capacity_bytes", "space this node lends", h.quota)
        yield gauge("store_used_bytes", "space used by chunks held for peers", h.used)
        yield gauge("store_chunks", "chunks held for peers", h.store_chunks)
        yield gauge("peers_known", "peers this node knows of", len(h.peers))
        yield gauge("peers_up", "peers heard from recently", sum(1 for p in h.peers if p.up))
        yield gauge(
            "peers_gone",
            "peers silent for longer than the grace period",
            sum(1 for p in h.peers if p.gone),
        )
        yield CounterMetricFamily(
            "lanvault_received_bytes",
            "chunk bytes peers stored on this node",
            value=h.bytes_received,
        )
        yield CounterMetricFamily(
            "lanvault_sent_bytes", "chunk bytes this node served to peers", value=h.bytes_sent
        )
        counts = h.catalog
        yield gauge("versions", "file versions in this node's catalog", counts["versions"])
        yield gauge(
            "pending_versions", "versions not yet at their degree", counts["pending_versions"]
        )
        yield gauge("snapshots", "snapshots of mounted trees", counts["snapshots"])
        yield gauge("owed_deletes", "deletes still owed by offline holders", counts["tombstones"])
        yield gauge(
            "last_backup_timestamp_seconds",
            "when a backup of this node last completed",
            h.last_backup_ns / 1e9,
        )
        yield gauge(
            "held_chunks_below_degree",
            "chunks held here below their degree at the last repair pass",
            h.held_below_degree,
        )
        yield gauge("scrub_bad_copies", "bad copies the last scrub found", h.scrub_bad_copies)
        yield gauge(
            "recovery_kit_holders", "nodes holding this node's recovery kit", h.recovery.kit_holders
        )
        yield gauge(
            "catalog_copy_holders",
            "nodes holding the newest catalog manifest",
            h.recovery.manifest_holders,
        )
        yield gauge(
            "catalog_copy_timestamp_seconds",
            "when the catalog was last copied to the peers",
            h.recovery.last_catalog_backup,
        )
        latency = HistogramMetricFamily(
            "lanvault_request_seconds",
            "time to answer a peer's request, by request type",
            labels=["type"],
        )
        for kind, stats in sorted(h.latency.items()):
            buckets = [
                (str(bound), float(count))
                for bound, count in zip(LATENCY_BUCKETS, stats.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(stats.count)))
            latency.add_metric([kind], buckets, sum_value=stats.total)
        yield latency


def metrics_address(listen: str) -> tuple[str, int]:
    """Where ``--metrics`` binds: ':PORT' is this computer only (the metrics are not
    authenticated); every interface must be asked for by name (0.0.0.0:PORT)."""
    host, port = split_address(listen, allow_any_port=True)
    if not listen.rpartition(":")[0].strip("[]"):
        host = "127.0.0.1"
    return host, port


async def serve_metrics(
    health: Callable[[], Awaitable[Health]],
    listen: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    registry = CollectorRegistry()
    collector = HealthCollector()
    registry.register(collector)
    host, port = metrics_address(listen)

    async def answer(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = b""
                while b"\r\n\r\n" not in request and b"\n\n" not in request:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    request += data
                    if len(request) > MAX_REQUEST:
                        await _reply(stream, 431, b"request too large\n", "text/plain")
                        return
                line = request.split(b"\n", 1)[0].decode("latin-1").split()
                if len(line) < 2 or line[0] != "GET":
                    await _reply(stream, 405, b"only GET\n", "text/plain")
                elif line[1].split("?")[0] != "/metrics":
                    await _reply(stream, 404, b"see /metrics\n", "text/plain")
                else:
                    collector.health = await health()  # the disk's part on a worker thread
                    body = generate_latest(registry)
                    await _reply(stream, 200, body, CONTENT_TYPE_LATEST)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("serving metrics failed")
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    log.info("metrics on http://%s:%d/metrics", host, bound[1])
    async with trio.open_nursery() as nursery:
        task_status.started(f"{host}:{bound[1]}")
        await trio.serve_listeners(answer, listeners, handler_nursery=nursery)


async def _reply(stream: trio.SocketStream, status: int, body: bytes, content_type: str) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head.encode() + body)
