"""``lanvault mount SOURCE MOUNTPOINT``: the mount process.

It runs apart from the node daemon, so that a crash of either loses nothing and leaves the other
working: versions cut by the mount wait in the outbox and the catalog (both durable) until the
daemon sends them, and the daemon keeps serving peers whether or not a folder is mounted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from chunkstore.atomic import write_atomic
from chunkstore.catalog import FileVersion
from chunkstore.catalogdb import CatalogDB
from chunkstore.exclusions import Exclusions
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore
from fs.capture import VersionCutter, degree_from_xattrs
from fs.chunksource import ChunkSource
from fs.fuseglue import REQUEST_SECONDS, REQUESTS
from fs.passthrough import PassthroughOps
from fs.scan import catch_up
from fs.versions import VersionsView

from .client import DaemonUnavailable, call, call_binary
from .mounts import FSNAME, clear_dead_mount, is_live, mounted_fsname
from .state import CommandError, StateDir

log = logging.getLogger("lanvault.mount")


def _kick_daemon(state: StateDir) -> None:
    with contextlib.suppress(DaemonUnavailable, OSError, ValueError):
        for _event in call(state.socket_path, {"op": "kick"}, timeout=5):
            pass


async def _outbox_upkeep(outbox: ChunkStore) -> None:
    while True:
        await trio.sleep(60)
        if await trio.to_thread.run_sync(outbox.garbage_bytes) > 64 << 20:
            await trio.to_thread.run_sync(outbox.compact, 0.5)


def refuse_unsafe_mount(state: StateDir, source: Path, mountpoint: Path, force: bool) -> None:
    """A mount that would hide files or record one folder twice is refused, in one line:
    MOUNTPOINT already mounted, SOURCE already mounted elsewhere, or a MOUNTPOINT that holds
    files of its own (they would be out of sight while mounted) unless ``force``."""
    if is_live(mountpoint):
        raise CommandError(f"{mountpoint} is already mounted (unmount it first)")
    here = source.resolve()
    for other, other_source in state.mounts().items():
        elsewhere = Path(other)
        if (
            Path(other_source) == here
            and elsewhere != mountpoint
            and is_live(elsewhere)
            and mounted_fsname(elsewhere) == FSNAME
        ):
            raise CommandError(
                f"{source} is already mounted at {other}: one folder is recorded by one"
                " mount (unmount it first)"
            )
    if mountpoint.resolve() != here and not force:
        with os.scandir(mountpoint) as entries:
            if any(True for _ in entries):
                raise CommandError(
                    f"{mountpoint} is not empty: its files would be out of sight while mounted"
                    " (mount over SOURCE itself, use an empty folder, or give --force)"
                )


def run_mount(
    state: StateDir,
    source: Path,
    mountpoint: Path,
    foreground_signals: bool = True,
    min_interval: float | None = None,
    burst_wait: float | None = None,
    force: bool = False,
    on_ready: Callable[[str], None] | None = None,
    exclude: list[str] | None = None,
    request_counts: Path | None = None,
) -> None:
    """Mount, catch up with SOURCE, then serve until unmounted. ``on_ready(message)`` is
    called once it answers (else the message is printed when ``foreground_signals``).
    ``exclude`` replaces the patterns kept for SOURCE (None: use them)."""
    config = state.load_config()
    if min_interval is not None:
        config.version_interval = min_interval
    if burst_wait is not None:
        config.burst_wait = burst_wait
    clear_dead_mount(mountpoint)  # a killed mount's leftover answers ENOTCONN to everything
    if not source.is_dir():
        raise CommandError(f"{source} is not a folder")
    if not mountpoint.is_dir():
        raise CommandError(f"{mountpoint} is not a folder (create it first)")
    refuse_unsafe_mount(state, source, mountpoint, force)
    # Opened before mounting: with SOURCE == MOUNTPOINT the real files stay reachable.
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    keys = KeyRing.from_master(state.master_key())
    catalog = CatalogDB(state.catalog_path)
    outbox = ChunkStore.open(state.outbox_path, capacity=1 << 62)
    source_root = str(source.resolve())
    # People name what they backed up by the folder they see: `restore ~/vault/x` means SOURCE/x.
    for name in {os.path.normpath(mountpoint.absolute()), str(mountpoint.resolve())}:
        state.record_mount(Path(name), Path(source_root))
    # The real files, even when SOURCE is the mountpoint (then its path leads into the mount).
    real_root = f"/proc/self/fd/{source_fd}"

    def real_path(catalog_path: str) -> str:
        return real_root + catalog_path[len(source_root) :]

    def degree_for(relative: str) -> int:
        return degree_from_xattrs(real_root, relative, config.default_degree)

    committed = trio.Event()

    def on_commit(versions: list[FileVersion]) -> None:
        for version in versions:
            log.info("new version of %s (%d bytes)", version.path, version.size)
        committed.set()

    patterns = state.mount_exclusions(source_root, exclude)
    cutter = VersionCutter(
        keys,
        catalog,
        outbox,
        config.node_id,
        source_root,
        degree_for,
        on_commit=on_commit,
        exclusions=Exclusions(patterns),
    )
    left_out = f"; never recorded: {', '.join(patterns)}" if patterns else ""

    async def kick_daemon_on_commits() -> None:
        nonlocal committed
        while True:
            await committed.wait()
            committed = trio.Event()
            await trio.to_thread.run_sync(_kick_daemon, state)

    def read_remote(addresses: list[bytes]) -> list[bytes]:
        request = {"op": "read_chunks", "addresses": [a.hex() for a in addresses]}
        event, blob = call_binary(state.socket_path, request, timeout=120)
        if not event.get("ok"):
            raise OSError(errno.EIO, str(event.get("error")))
        sizes = event["data"]["sizes"]
        if len(sizes) != len(addresses) or sum(sizes) != len(blob):
            raise OSError(errno.EIO, "the node answered with the wrong number of chunks")
        chunks, offset = [], 0
        for size in sizes:
            chunks.append(blob[offset : offset + size])
            offset += size
        # Not verified again here: the node opened each chunk (AEAD under our data key, and the
        # plaintext's keyed address), and this socket is our own user's. Hashing every byte a
        # second time cost a quarter of the mount's CPU in versions/ reads.
        return chunks

    def from_node(addresses: list[bytes]) -> list[bytes]:
        try:
            return read_remote(addresses)
        except DaemonUnavailable as exc:
            raise OSError(errno.EIO, str(exc)) from None

    chunks = ChunkSource(keys, config.node_id, outbox, real_path, from_node)
    versions = VersionsView(catalog, source_root, chunks.read_async, os.getuid(), os.getgid())

    ops = PassthroughOps(
        source_fd,
        cutter,
        versions,
        min_interval=config.version_interval,
        burst_wait=config.burst_wait,
        rescan=lambda: catch_up(cutter, real_root),
    )
    options = set(pyfuse3.default_options)
    options |= {"fsname=lanvault", "default_permissions"}
    if os.geteuid() == 0:
        options.add("allow_other")
    pyfuse3.init(ops, str(mountpoint), options)
    log.info("mounted %s at %s", source, mountpoint)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(cutter.run)
            await nursery.start(ops.run)
            await nursery.start(versions.run)
            nursery.start_soon(_outbox_upkeep, outbox)
            nursery.start_soon(kick_daemon_on_commits)
            if foreground_signals:

                async def stop_on_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            pyfuse3.terminate()
                            return

                nursery.start_soon(stop_on_signal)
            # While SOURCE is compared with the last snapshot the mount answers lookups and
            # reads; a request that would change SOURCE waits (``hold_changes``), so no change
            # made through the mount can slip between the scan and the first cut.
            ops.hold_changes()

            async def catch_up_first() -> None:
                await catch_up(cutter, real_root)
                ops.allow_changes()
                ready = (
                    f"{source} mounted at {mountpoint}, snapshots in {mountpoint / 'versions'}"
                    f"{left_out}; 'fusermount3 -u {mountpoint}' unmounts it"
                )
                if on_ready is not None:
                    on_ready(ready)
                elif foreground_signals:  # a person at a terminal: say it is ready, and how
                    print(f"lanvault: {ready} (or Ctrl-C)", file=sys.stderr, flush=True)

            nursery.start_soon(catch_up_first)
            await pyfuse3.main()
            await ops.changes_allowed()  # unmounted during the catch-up: it finishes first
            # Unmounted: record every change still pending before leaving.
            await ops.cut_everything()
            await trio.to_thread.run_sync(_kick_daemon, state)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        served = ", ".join(f"{name} {n}" for name, n in REQUESTS.most_common())
        log.info("FUSE requests served: %s", served or "none")
        if request_counts is not None:
            served_json = {"counts": dict(REQUESTS), "seconds": dict(REQUEST_SECONDS)}
            write_atomic(request_counts, json.dumps(served_json).encode(), mode=0o644)
        pyfuse3.close(unmount=True)
        outbox.close()
        catalog.close()
        os.close(source_fd)
        log.info("unmounted %s", mountpoint)
