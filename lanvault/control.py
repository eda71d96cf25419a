"""The control socket between the CLI and the running daemon: newline-delimited JSON.

A request is one line ``{"op": ..., ...}``. The daemon answers with zero or more
``{"event": "progress", ...}`` lines and one ``{"event": "result", "ok": true, "data": ...}`` or
``{"event": "result", "ok": false, "error": "one line"}``; a result carrying chunk data is followed
by ``blob_bytes`` raw bytes. The client sends nothing after its request, so the end of its stream
means it was interrupted: the operation is cancelled. The socket lives in the state directory
and is created owner-only (mode 0600). This is the daemon's side; ``client.py`` is the CLI's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20

Emit = Callable[[dict[str, Any]], Awaitable[None]]
OpHandler = Callable[[dict[str, Any], Emit], Awaitable[Any]]


class OpError(Exception):
    """A request failed in a way the message explains (sent back as one line)."""


@dataclass(frozen=True, slots=True)
class Binary:
    """A result followed on the socket by ``blob``, raw (chunk data: no base64, no JSON)."""

    data: dict[str, Any]
    blob: bytes


async def serve_control(
    path: Path,
    handlers: dict[str, OpHandler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def on_client(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while b"\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                if len(buffer) > MAX_REQUEST:
                    raise OpError("request too large")
            line = bytes(buffer.split(b"\n", 1)[0])

            answering = [False]  # the result is on its way: a hang-up now is the CLI done

            async def emit(event: dict[str, Any]) -> None:
                if event.get("event") == "result":
                    answering[0] = True
                await stream.send_all(json.dumps(event).encode() + b"\n")

            async def answer() -> None:
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                        raise OpError("malformed request")
                    handler = handlers.get(request["op"])
                    if handler is None:
                        raise OpError(f"unknown operation {request['op']!r}")
                    data_out = await handler(request, emit)
                    if isinstance(data_out, Binary):
                        answering[0] = True
                        head = {"event": "result", "ok": True, "data": data_out.data}
                        head["blob_bytes"] = len(data_out.blob)
                        await stream.send_all(json.dumps(head).encode() + b"\n" + data_out.blob)
                    else:
                        await emit({"event": "result", "ok": True, "data": data_out})
                except (OpError, ValueError) as exc:
                    await emit({"event": "result", "ok": False, "error": str(exc)})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the CLI went away: nothing to answer, nothing to report
                except Exception as exc:
                    log.exception("control operation failed")
                    await emit({"event": "result", "ok": False, "error": f"internal error: {exc}"})

            async def watch_hangup(scope: trio.CancelScope) -> None:
                # The CLI sends nothing after its request: the end of its stream means it
                # was interrupted (Ctrl-C), and the operation stops (a restore resumes later).
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while await stream.receive_some(4096):
                        pass
                if not answering[0]:
                    log.info("a command was interrupted; its operation stops")
                    scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_hangup, nursery.cancel_scope)
                await answer()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the CLI went away (Ctrl-C); the operation's own effects stand
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(on_client, [listener], handler_nursery=nursery)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
