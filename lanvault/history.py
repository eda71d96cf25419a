"""What ``lanvault snapshots`` and ``lanvault versions`` list, read from the catalog (run in a
worker thread by the daemon)."""

from __future__ import annotations

from typing import Any

from chunkstore.catalogdb import CatalogDB
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
