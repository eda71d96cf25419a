"""The CLI's side of the control socket (``control.py`` describes the exchange).

Plain blocking sockets and no trio: every command starts a Python process, and what it imports
is time the user waits.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


class DaemonUnavailable(Exception):
    pass


def call_binary(
    path: Path, request: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], bytes]:
    """One request whose result carries raw bytes: (the result event, the bytes)."""
    with _exchange(path, request, timeout) as reader:
        for line in reader:
            event = json.loads(line)
            if event.get("event") != "result":
                continue
            size = int(event.get("blob_bytes", 0))
            blob = reader.read(size) if size else b""
            if len(blob) != size:
                raise DaemonUnavailable("the node stopped in the middle of an answer")
            return event, blob
    raise DaemonUnavailable("the node stopped before answering")


def call(
    path: Path, request: dict[str, Any], timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """Send one request; yield every event line (the last is the result)."""
    with _exchange(path, request, timeout) as reader:
        for line in reader:
            event = json.loads(line)
            yield event
            if event.get("event") == "result":
                return
    raise DaemonUnavailable("the node stopped before answering")


@contextlib.contextmanager
def _exchange(path: Path, request: dict[str, Any], timeout: float | None) -> Iterator[BinaryIO]:
    """Send ``request``; the answer's stream (the connection closes after)."""
    client = _connect(path)
    client.settimeout(timeout)
    try:
        client.sendall(json.dumps(request).encode() + b"\n")
        with client.makefile("rb") as reader:
            yield reader
    finally:
        client.close()


def _connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        raise DaemonUnavailable(
            f"no lanvault node is running for {path.parent} (start it with 'lanvault node --dir {path.parent}')"
        ) from None
    return client
