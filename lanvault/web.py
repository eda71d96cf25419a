"""The web dashboard (``lanvault node --web HOST:PORT``): a Starlette app served by Hypercorn on
the daemon's own trio loop.

It shows what ``status`` shows, live (the page asks for ``/api/overview`` every two seconds),
with the operations running now and the snapshot history, and lets a person browse a snapshot
and download a file or a folder (a tar stream) from it. Everything comes from the daemon's own
sources (``Sources``): no second path to the data, nothing cached on disk.

Every request needs the token (``STATE/web-token``): ``/?token=...`` checks it, sets it as a
cookie (HttpOnly, SameSite=Strict) and sends the browser on to ``/`` so the token leaves the
address bar; later requests carry the cookie, or ``Authorization: Bearer TOKEN`` for scripts.
Without it every path, the downloads included, answers 401. The page, its script and its style
come from this package (no external assets, no build step) under a Content-Security-Policy that
allows nothing else; the script writes what the catalog holds as text, never as markup.
"""

from __future__ import annotations

import hmac
import logging
import posixpath
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from node.report import RestoreError

from .downloads import DownloadError, Fetch, plan
from .history import Listed, SnapshotError

log = logging.getLogger(__name__)
COOKIE = "lanvault_token_{port}"  # per port: two nodes' dashboards on one host keep theirs
SNAPSHOTS_SHOWN = 300  # the newest snapshots the page lists (the total is said)
DEGREES_EVERY = 15.0  # seconds between two counts of the owner's chunks below degree
WATCHED_FOR = 60.0  # the count is kept fresh only while a page asked within this long
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'none'",
}
STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the dashboard's data comes from (the daemon's own operations)."""

    status: Callable[[bool], Awaitable[dict[str, Any]]]  # status, counting degrees or not
    running: Callable[[], list[dict[str, Any]]]  # the operations in progress
    snapshots: Callable[[], Awaitable[list[dict[str, Any]]]]  # every snapshot, oldest first
    entries: Callable[[str, str], Awaitable[dict[str, Listed]]]  # a snapshot's, at/under a path
    fetch: Fetch  # verified plaintexts of chunks


class TokenGate:
    """ASGI middleware: a request without the token gets 401, whatever it asks for."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def presented(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        cookie = request.cookies.get(cookie_name(request))
        return cookie or request.query_params.get("token") or ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not hmac.compare_digest(self.presented(request).encode(), self.token):
            response: Response = PlainTextResponse(
                "lanvault dashboard: this needs the node's token"
                " ('lanvault dashboard' prints the address with it)\n",
                status_code=401,
                headers=HEADERS,
            )
        elif "token" in request.query_params and request.method == "GET":
            # Into a cookie, and out of the address bar (and the browser's history).
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse(
                request.url.path + ("?" + urllib.parse.urlencode(query) if query else ""), 303
            )
            response.set_cookie(
                cookie_name(request),
                self.token.decode(),
                httponly=True,
                samesite="strict",
                path="/",
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def cookie_name(request: Request) -> str:
    server = request.scope.get("server") or ("", 0)
    return COOKIE.format(port=server[1])


class Dashboard:
    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.below_degree: int | None = None  # the owner's chunks below degree, last counted
        self.counted_at = 0.0
        self.watched_at = -WATCHED_FOR
        self.count_wanted = trio.Event()

    def app(self, token: str) -> ASGIApp:
        routes = [Route(path, self.static) for path in STATIC]
        routes += [
            Route("/api/overview", self.overview),
            Route("/api/ls", self.ls),
            Route("/download", self.download),
        ]
        return TokenGate(Starlette(routes=routes), token)

    async def static(self, request: Request) -> Response:
        name, media_type = STATIC[request.url.path]
        page = resources.files(__package__).joinpath("webui", name).read_bytes()
        return Response(page, media_type=media_type, headers=HEADERS)

    async def overview(self, request: Request) -> Response:
        self.watched_at = time.monotonic()
        self.count_wanted.set()
        status = await self.sources.status(False)
        status["own_chunks_below_degree"] = self.below_degree
        status["own_degrees_counted_ago"] = (
            time.monotonic() - self.counted_at if self.below_degree is not None else None
        )
        snapshots = await self.sources.snapshots()
        latest: dict[str, dict[str, Any]] = {}
        for snap in snapshots:  # oldest first: the last one of each tree stays
            latest[snap["path"]] = snap
        return JSONResponse(
            {
                "time": time.time(),
                "status": status,
                "running": self.sources.running(),
                "trees": sorted(latest.values(), key=lambda s: s["path"]),
                "snapshots": snapshots[::-1][:SNAPSHOTS_SHOWN],
                "snapshots_total": len(snapshots),
            },
            headers=HEADERS,
        )

    async def ls(self, request: Request) -> Response:
        snapshot, path = _where(request)
        try:
            found = await self.sources.entries(snapshot, path)
        except SnapshotError as exc:
            return _refused(str(exc), 404)
        folder = path.rstrip("/")
        children = [
            {**entry.to_json(p), "name": posixpath.basename(p)}
            for p, entry in sorted(found.items())
            if p != folder and posixpath.dirname(p) == folder
        ]
        if not children and folder in found and found[folder].kind != "folder":
            return _refused(f"{folder} is a {found[folder].kind}, not a folder", 400)
        return JSONResponse(
            {"snapshot": snapshot, "path": folder, "entries": children}, headers=HEADERS
        )

    async def download(self, request: Request) -> Response:
        snapshot, path = _where(request)
        try:
            wanted = plan(await self.sources.entries(snapshot, path), path, self.sources.fetch)
        except SnapshotError as exc:
            return _refused(str(exc), 404)
        except DownloadError as exc:
            return _refused(str(exc), 404)
        headers = dict(HEADERS)
        headers["Content-Disposition"] = _attachment(wanted.filename)
        if wanted.size is not None:
            headers["Content-Length"] = str(wanted.size)
        return StreamingResponse(
            _said_once(wanted.body, f"{snapshot}:{path}"),
            media_type=wanted.media_type,
            headers=headers,
        )

    async def keep_counting(self) -> None:
        """Count the owner's chunks below degree (every peer is asked) while a page watches."""
        while True:
            await self.count_wanted.wait()
            self.count_wanted = trio.Event()
            if time.monotonic() - self.watched_at > WATCHED_FOR:
                continue
            if time.monotonic() - self.counted_at >= DEGREES_EVERY or self.below_degree is None:
                try:
                    status = await self.sources.status(True)
                except Exception:  # the page shows the last count, and how old it is
                    log.exception("the dashboard could not count chunks below degree")
                else:
                    self.below_degree = status.get("own_chunks_below_degree")
                    self.counted_at = time.monotonic()
                await trio.sleep(DEGREES_EVERY)


class BrokenDownload(Exception):
    """A download stopped midway (logged in one line): the connection is cut so that the
    browser says it failed."""


class _ServerLog(HypercornLogger):
    """Hypercorn's log, but a download that broke for a reason already said is not a
    traceback."""

    async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(sys.exc_info()[1], BrokenDownload):
            await super().exception(message, *args, **kwargs)


async def _said_once(body: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    except (DownloadError, RestoreError, OSError) as exc:
        log.warning("the download of %s stopped: %s", what, exc)
        raise BrokenDownload(str(exc)) from exc


def _where(request: Request) -> tuple[str, str]:
    return request.query_params.get("snapshot", ""), request.query_params.get("path", "")


def _refused(message: str, status: int) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=HEADERS)


def _attachment(filename: str) -> str:
    """A Content-Disposition naming the file (plain ASCII, and exactly in RFC 5987 form)."""
    plain = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(filename)}"


async def serve_web(
    sources: Sources,
    token: str,
    bind: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on ``bind`` (HOST:PORT); started with the address it listens on."""
    dashboard = Dashboard(sources)
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("lanvault.web.server")
    config.logger_class = _ServerLog
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dashboard.keep_counting)
        bound = await nursery.start(serve, dashboard.app(token), config)
        task_status.started(bound[0].removeprefix("http://"))
