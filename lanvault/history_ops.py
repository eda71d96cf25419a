"""The control socket's operations on what was backed up when (``snapshots``, ``ls``,
``diff``, ``find``, ``versions``): each reads the catalog on a worker thread through
``history.py`` and says a bad argument as one line."""

from __future__ import annotations

from typing import Any

from chunkstore.catalogdb import CatalogDB
from chunkstore.exclusions import PatternError
from node.offload import in_thread

from .control import Emit, OpError
from .history import (
    Listed,
    SnapshotError,
    diff_entries,
    find_paths,
    snapshot_entries,
    snapshots_listing,
    versions_listing,
)


class HistoryOps:
    def __init__(self, catalog: CatalogDB) -> None:
        self.catalog = catalog

    def handlers(self) -> dict[str, Any]:
        return {
            "snapshots": self.op_snapshots,
            "ls": self.op_ls,
            "diff": self.op_diff,
            "find": self.op_find,
            "versions": self.op_versions,
        }

    async def snapshots(self, path: str = "") -> list[dict[str, Any]]:
        """Every snapshot (of ``path``, if given), oldest first."""
        listed: list[dict[str, Any]] = (await in_thread(snapshots_listing, self.catalog, path))[
            "snapshots"
        ]
        return listed

    async def entries(self, snap: str, path: str) -> dict[str, Listed]:
        """Snapshot ``snap``'s entries at or under ``path`` (``SnapshotError`` if none such)."""
        return await in_thread(snapshot_entries, self.catalog, snap, path)

    async def op_snapshots(self, request: dict[str, Any], emit: Emit) -> Any:
        return {"snapshots": await self.snapshots(str(request.get("path") or ""))}

    async def op_ls(self, request: dict[str, Any], emit: Emit) -> Any:
        snap, path = str(request.get("snapshot") or ""), str(request.get("path") or "")
        try:
            found = await self.entries(snap, path)
        except SnapshotError as exc:
            raise OpError(str(exc)) from None
        return {"entries": [entry.to_json(p) for p, entry in sorted(found.items())]}

    async def op_diff(self, request: dict[str, Any], emit: Emit) -> Any:
        path = str(request.get("path") or "")
        try:
            before, after = [
                await self.entries(str(s or ""), path)
                for s in (request.get("from"), request.get("to"))
            ]
        except SnapshotError as exc:
            raise OpError(str(exc)) from None
        return diff_entries(before, after)

    async def op_find(self, request: dict[str, Any], emit: Emit) -> Any:
        try:
            found = await in_thread(find_paths, self.catalog, str(request.get("pattern") or ""))
        except PatternError as exc:
            raise OpError(str(exc)) from None
        return {"paths": found}

    async def op_versions(self, request: dict[str, Any], emit: Emit) -> Any:
        path = request.get("path")
        found = await in_thread(versions_listing, self.catalog, str(path or ""))
        if found is None:
            raise OpError(f"{path}: no versions backed up")
        return found
