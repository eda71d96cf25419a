"""What ``lanvault snapshots``, ``versions``, ``ls``, ``diff`` and ``find`` list, read from the
catalog (run in a worker thread by the daemon)."""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from typing import Any

from chunkstore.catalog import FileVersion
from chunkstore.catalogdb import CatalogDB
from chunkstore.exclusions import Exclusions
from chunkstore.fileid import content_digest
from fs.versions import snapshot_name


def snapshots_listing(catalog: CatalogDB, path: str) -> dict[str, Any]:
    """Every run of ``lanvault backup`` and every snapshot of a mounted folder (of ``path``
    and what is inside or above it, if given), oldest first."""
    inside = path.rstrip("/") + "/"
    listed: list[dict[str, Any]] = [
        {
            "kind": "backup",
            "id": f"b{run.id}",
            "time": run.finished_ns / 1e9,
            "path": run.root,
            "seconds": (run.finished_ns - run.started_ns) / 1e9,
            "entries": run.files,
            "new": run.new,
            "changed": run.changed,
            "removed": run.removed,
            "bytes": run.bytes,
            "bytes_added": run.bytes_added,
            "outcome": run.outcome,
        }
        for run in catalog.backup_runs(path)
    ]
    listed += [
        {"kind": "mount", "id": snapshot_name(time_ns), "time": time_ns / 1e9, "path": root}
        for _seq, root, time_ns in catalog.snapshots()
        if not path or root == path or root.startswith(inside) or path.startswith(root + "/")
    ]
    return {"snapshots": sorted(listed, key=lambda s: s["time"])}


def versions_listing(catalog: CatalogDB, path: str) -> dict[str, Any] | None:
    """The snapshots of mounted folders (no ``path``), or every version of one file (None if
    it has none)."""
    if not path:
        return {
            "snapshots": [
                {"seq": seq, "root": root, "time": time_ns / 1e9, "name": snapshot_name(time_ns)}
                for seq, root, time_ns in catalog.snapshots()
            ]
        }
    history = catalog.versions_of(path)
    if not history:
        return None
    return {
        "path": path,
        "versions": [
            {
                "time": v.created_ns / 1e9,
                "file_id": v.file_id.hex(),
                "size": v.size,
                "mtime": v.mtime_ns / 1e9,
                "complete": v.complete,
            }
            for v in history
        ],
    }


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a snapshot, as ``ls`` shows it and ``diff`` compares it."""

    kind: str  # "file", "folder" or "symlink"
    size: int
    mode: int
    mtime_ns: int
    content: bytes  # the digest of its chunks (a symlink's: of its target); b"" for a folder
    chunks: tuple[bytes, ...] = ()  # where its data is (a backed-up symlink's: its target)
    target: str = ""  # a mounted tree's symlink: where it points

    def to_json(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "kind": self.kind,
            "size": self.size,
            "mode": oct(stat.S_IMODE(self.mode)),
            "mtime": self.mtime_ns / 1e9,
        }


def _kind(mode: int) -> str:
    return "folder" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"


def _from_version(version: FileVersion) -> Listed:
    content = b"" if stat.S_ISDIR(version.mode) else content_digest(version.chunks)
    return Listed(
        _kind(version.mode), version.size, version.mode, version.mtime_ns, content, version.chunks
    )


def snapshot_entries(catalog: CatalogDB, snap: str, path: str = "") -> dict[str, Listed]:
    """Every entry of snapshot ``snap`` (a backup run's id ``bN``, or a mount snapshot's name
    as ``versions/`` shows it) at or under ``path`` (all of it if empty), by path.
    ``SnapshotError`` names what does not exist."""
    if snap.startswith("b") and snap[1:].isdigit():
        runs = {f"b{run.id}": run for run in catalog.backup_runs("")}
        run = runs.get(snap)
        if run is None:
            raise SnapshotError(f"no backup run {snap} (lanvault snapshots lists them)")
        top = path or run.root
        if not (top == run.root or top.startswith(run.root.rstrip("/") + "/")):
            raise SnapshotError(f"{path} is not in {snap}, a backup of {run.root}")
        return {v.path: _from_version(v) for v in catalog.versions_at(top, run.finished_ns)}
    for seq, root, time_ns in catalog.snapshots():
        if snapshot_name(time_ns) != snap:
            continue
        if path and not (path == root or path.startswith(root.rstrip("/") + "/")):
            raise SnapshotError(f"{path} is not in {snap}, a snapshot of {root}")
        relative = path[len(root) :].strip("/") if path else ""
        entries: dict[str, Listed] = {}
        for name, event in catalog.tree_walk(root, relative, seq):
            where = f"{root}/{name}" if name else root
            version = catalog.version_by_id(event.file_id) if event.file_id else None
            if version is not None:
                entries[where] = replace(
                    _from_version(version), mode=event.mode, mtime_ns=event.mtime_ns
                )
            else:
                content = event.target.encode() if event.target else b""
                entries[where] = Listed(
                    _kind(event.mode), 0, event.mode, event.mtime_ns, content, target=event.target
                )
        return entries
    raise SnapshotError(f"no snapshot {snap} (lanvault snapshots lists them)")


def diff_entries(before: dict[str, Listed], after: dict[str, Listed]) -> dict[str, list[str]]:
    """What changed from one snapshot to another: added, removed, changed (content or kind),
    metadata (the same content, another mode or time)."""
    found: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "metadata": []}
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old is None:
            found["added"].append(path)
        elif new is None:
            found["removed"].append(path)
        elif (old.kind, old.content) != (new.kind, new.content):
            found["changed"].append(path)
        elif (old.mode, old.mtime_ns) != (new.mode, new.mtime_ns) and old.kind != "folder":
            found["metadata"].append(path)
    return found


def find_paths(catalog: CatalogDB, pattern: str) -> list[dict[str, Any]]:
    """Every path a kept version has had that ``pattern`` matches (the rules of
    ``--exclude``), with how many versions it has and when the newest was made."""
    rule = Exclusions([pattern])
    return [
        {"path": path, "versions": count, "newest": newest_ns / 1e9}
        for path, count, newest_ns in catalog.path_summary()
        if rule.excludes(path)
    ]


class SnapshotError(ValueError):
    """A snapshot or path that does not exist (said in one line)."""
