"""A file or a folder of a snapshot as a download: a file's own bytes, a folder as a tar stream.

The bytes come from the peers as a restore's do (``fetch``: verified plaintexts of chunks, a
batch at a time), so a download needs no room on this computer and starts at once. Nothing is
ever sent that was not verified; a chunk no holder has is a ``DownloadError`` raised in the
middle of the stream, which the web server turns into a broken transfer (the browser says the
download failed) rather than a short file that looks whole.

A tar member is named by its path under the folder asked for, prefixed with that folder's name
(``docs/a/b.txt`` for ``/home/u/docs/a/b.txt``): unpacking never writes above the folder it
unpacks into. PAX headers carry names longer than 100 bytes and modification times exactly.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .history import Listed

FETCH_BATCH = 16  # chunks asked for at once (the batch is spread over their holders)
BLOCK = tarfile.BLOCKSIZE

Fetch = Callable[[list[bytes]], Awaitable[list[bytes]]]


class DownloadError(Exception):
    """What a download cannot give (one line)."""


@dataclass(frozen=True, slots=True)
class Download:
    filename: str  # what the browser saves it as
    media_type: str
    size: int | None  # known for a file, not for a tar stream
    body: AsyncIterator[bytes]


def plan(entries: dict[str, Listed], path: str, fetch: Fetch) -> Download:
    """The download of ``path`` (a file: its bytes; a folder: a tar of it), from the snapshot's
    ``entries`` at or under it (``history.snapshot_entries``)."""
    top = path.rstrip("/")
    if not entries or not top:
        raise DownloadError(f"{path or 'the snapshot'} has nothing to download")
    name = posixpath.basename(top) or "snapshot"
    entry = entries.get(top)
    if entry is not None and entry.kind == "file":
        return Download(name, "application/octet-stream", entry.size, file_bytes(entry, fetch))
    return Download(f"{name}.tar", "application/x-tar", None, tar_stream(entries, top, fetch))


async def file_bytes(entry: Listed, fetch: Fetch) -> AsyncIterator[bytes]:
    """A file's content, verified chunk by chunk, checked against its recorded size."""
    sent = 0
    for start in range(0, len(entry.chunks), FETCH_BATCH):
        for plain in await fetch(list(entry.chunks[start : start + FETCH_BATCH])):
            sent += len(plain)
            yield plain
    if sent != entry.size:
        raise DownloadError(f"the chunks hold {sent} bytes of a {entry.size}-byte file")


async def tar_stream(entries: dict[str, Listed], top: str, fetch: Fetch) -> AsyncIterator[bytes]:
    """A POSIX (PAX) tar of ``entries``, parents before children, ``top`` named by its base."""
    base = posixpath.basename(top) or "snapshot"
    if top not in entries:  # a mounted tree's root has no entry of its own
        newest = max(e.mtime_ns for e in entries.values())
        yield header(base, Listed("folder", 0, 0o755, newest, b""))
    for path in sorted(entries, key=lambda p: p.split("/")):
        entry = entries[path]
        inside = path[len(top) :].strip("/") if path != top else ""
        member = f"{base}/{inside}" if inside else base
        if entry.kind == "symlink":
            target = entry.target
            if entry.chunks:  # a backed-up symlink keeps its target as its content
                target = b"".join(await fetch(list(entry.chunks))).decode(
                    "utf-8", "surrogateescape"
                )
            yield header(member, entry, linkname=target)
        elif entry.kind == "folder":
            yield header(member, entry)
        else:
            yield header(member, entry)
            async for data in file_bytes(entry, fetch):
                yield data
            if entry.size % BLOCK:
                yield bytes(BLOCK - entry.size % BLOCK)
    yield bytes(2 * BLOCK)  # the end of the archive


def header(member: str, entry: Listed, linkname: str = "") -> bytes:
    """The tar header block(s) of one member."""
    info = tarfile.TarInfo(member + ("/" if entry.kind == "folder" else ""))
    info.mode = entry.mode & 0o7777
    info.mtime = entry.mtime_ns / 1e9  # PAX keeps the fraction
    if entry.kind == "folder":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = linkname
    else:
        info.size = entry.size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
