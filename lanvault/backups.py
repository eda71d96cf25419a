"""The commands on what is backed up: ``backup``, ``restore``, ``delete``, ``versions``,
``prune``, ``check`` and ``degree``; what each sends the daemon and prints. The network's and the
node's own commands are in ``commands.py``, with the helpers both use."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chunkstore.catalog import DEGREE_XATTR
from chunkstore.exclusions import Exclusions, PatternError, read_pattern_file
from chunkstore.shares import Code, describe, parse_keeping
from chunkstore.sizes import format_size

from .commands import damage_line, emit, plural, request
from .state import CommandError, StateDir, UsageError


def _what(data: dict[str, Any]) -> str:
    """'3 files, 1 symlink and 2 folders': what a backup or restore went through."""
    parts = [plural(data["files"], "file", "files")] if data["files"] else []
    if data.get("symlinks"):
        parts.append(plural(data["symlinks"], "symlink", "symlinks"))
    if data.get("folders"):
        parts.append(plural(data["folders"], "folder", "folders"))
    if len(parts) <= 1:
        return parts[0] if parts else "0 files"
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _links_not_made(data: dict[str, Any]) -> str:
    count = data.get("links_not_made_count", 0)
    if not count:
        return ""
    return (
        f"; left {plural(count, 'folder', 'folders')} where the backup had a symlink"
        f" (a real folder is there now), e.g. {data['links_not_made'][0]}"
    )


def _restore_notes(data: dict[str, Any]) -> str:
    """What a restore made differently from a plain copy, and what it could not give back."""
    notes = ""
    if data.get("hard_links"):
        n = data["hard_links"]
        notes += f" ({n} of them {'a hard link' if n == 1 else 'hard links'} to another)"
    count = data.get("xattrs_refused_count", 0)
    if count:
        notes += (
            f"; the destination refused {plural(count, 'extended attribute', 'extended attributes')}"
            f", e.g. {data['xattrs_refused'][0]}"
        )
    return notes + _links_not_made(data)


def cmd_backup(args: argparse.Namespace, state: StateDir) -> int:
    """Each path in turn (one failing does not stop the others; the exit says one did)."""
    try:
        patterns = list(args.exclude)
        for name in args.exclude_file:
            patterns += read_pattern_file(name)
        Exclusions(patterns)  # a bad pattern is wrong usage, said before anything is read
    except PatternError as exc:
        raise UsageError(str(exc)) from None
    paths = [p.absolute() for p in args.path]
    missing = [typed for typed, p in zip(args.path, paths, strict=True) if not p.exists()]
    if missing:
        raise CommandError(f"{missing[0]}: no such file or folder")
    failed = 0
    results: list[dict[str, Any]] = []  # with --json and several paths: one list of them
    for typed, path in zip(args.path, paths, strict=True):
        op = {
            "op": "backup",
            "path": str(path),
            "degree": args.degree,
            "code": args.code,
            "exclude": patterns,
            "exclude_caches": args.exclude_caches,
            "one_file_system": args.one_file_system,
        }
        try:
            data = request(state, op, "backup")
        except CommandError as exc:
            if len(paths) == 1:
                raise
            print(f"lanvault: {typed}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if len(paths) == 1:
            emit(args, data, _backed_up(data, None))
        elif args.json:
            results.append({"path": str(typed), **data})
        else:
            print(_backed_up(data, typed))
    if args.json and len(paths) > 1:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _kept(data: dict[str, Any]) -> str:
    """How a backup's chunks are kept, as its line says it."""
    if data.get("code"):
        return f"as {data['code']} shares (any {data['code'].split('-')[0]} rebuild each chunk)"
    return f"at degree {data['degree']}"


def _backed_up(data: dict[str, Any], path: Path | None) -> str:
    """The line a backup prints."""
    found = f"{data['new']} new, {data['changed']} changed, {data['unmodified']} unmodified"
    if data.get("removed"):
        what = "gone or left out" if data.get("excluding") else "gone"
        found += f", {data['removed']} {what} since the last backup"
    summary = (
        f"backed up {_what(data)}: {found} ({data['bytes'] / 1e6:.1f} MB,"
        f" {data['bytes_read'] / 1e6:.1f} MB read, {data['bytes_sent'] / 1e6:.1f} MB sent) {_kept(data)}"
        f" in {data['seconds']:.1f} s"
    )
    if not data["new"] and not data["changed"] and not data.get("removed"):
        summary += "; nothing new since the last backup"
    if data.get("excluding"):
        summary += f"; left out by {data['excluding']}"
    if path is not None:
        summary = f"{path}: {summary}"
    skipped = data.get("skipped") or []
    if skipped:
        count = data.get("skipped_count", len(skipped))
        one = count == 1
        summary += (
            f"; passed over {count} {'entry' if one else 'entries'} that"
            f" {'is' if one else 'are'} a FIFO, socket or device, e.g. {skipped[0]}"
        )
    return summary


def cmd_restore(args: argparse.Namespace, state: StateDir) -> int:
    op: dict[str, Any] = {"op": "restore", "path": state.backup_path(args.path)}
    if args.at is not None:
        op["at_ns"] = args.at
    if args.to:
        op["to"] = str(args.to.absolute())
    elif state.in_live_mount(args.path):
        # In place, through the mount: what comes back is recorded like any other change.
        op["to"] = str(args.path.absolute())
    data = request(state, op, "restore", typed=args.path)
    emit(
        args,
        data,
        f"restored {_what(data)} ({data['bytes'] / 1e6:.1f} MB) in {data['seconds']:.1f} s"
        + _restore_notes(data),
    )
    return 0


def cmd_delete(args: argparse.Namespace, state: StateDir) -> int:
    data = request(state, {"op": "delete", "path": state.backup_path(args.path)}, typed=args.path)
    pending = data["pending_holders"]
    extra = (
        f"; {plural(pending, 'offline holder')} will delete when"
        f" {'it is' if pending == 1 else 'they are'} back"
        if pending
        else ""
    )
    emit(
        args,
        data,
        f"deleted {plural(data['files'], 'file')}"
        f" ({plural(data['chunks'], 'chunk')}) from every holder{extra}",
    )
    return 0


def cmd_versions(args: argparse.Namespace, state: StateDir) -> int:
    op: dict[str, Any] = {"op": "versions"}
    data = _ask_about_path(state, op, args.path)
    if args.json:
        print(json.dumps(data, indent=2))
    elif "snapshots" in data:
        if not data["snapshots"]:
            print("no snapshots yet (they come from mounted folders: lanvault mount)")
        for snap in data["snapshots"]:
            print(f"{snap['name']}  {state.shown_path(snap['root'])}")
    else:
        print(state.shown_path(data["path"]))
        for v in data["versions"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["time"]))
            state_word = "safe" if v["complete"] else "pending"
            print(f"  {when}  {format_size(v['size']):>10}  {state_word:<7}  {v['file_id'][:16]}")
    return 0


def cmd_check(args: argparse.Namespace, state: StateDir) -> int:
    op: dict[str, Any] = {"op": "check", "repair": args.repair}
    if args.read_data or args.sample is not None:
        op |= {"read_data": True, "sample": args.sample or 100.0}
    data = request(state, op, "check")
    human = (
        f"{data['store_chunks_verified']} stored copies verified, {len(data['store_bad_copies'])} bad;"
        f" {data['own_chunks_checked']} own chunks checked, {data['own_chunks_below_degree']} below degree,"
        f" {data['own_chunks_lost']} lost; {plural(data['copies_made'], 'copy', 'copies')} made"
    )
    if data.get("own_coded_chunks_checked"):
        human += (
            f"; {data['own_coded_chunks_checked']} own coded chunks checked,"
            f" {data['own_coded_chunks_short']} short of shares, {data['own_coded_chunks_lost']}"
            " with fewer shares than rebuild them"
        )
    if data.get("store_damaged_records"):
        human += (
            f"\n{data['store_damaged_records']} damaged records in the segments"
            f" ({data['store_damaged_bytes'] / 1e6:.1f} MB) were read past; every record after"
            " them was checked"
        )
    if data.get("store_torn_bytes"):
        human += (
            f"\n{data['store_torn_bytes']} bytes of a write cut short at a segment's end"
            " (never acknowledged; compaction drops them)"
        )
    if data.get("store_orphan_records"):
        human += (
            f"\n{data['store_orphan_records']} records no index entry names (deleted chunks,"
            f" copies written twice, or writes cut off before they were acknowledged;"
            f" {data['store_orphan_bytes'] / 1e6:.1f} MB) wait for compaction"
        )
    found = data.get("bad_copies_found_before") or {}
    if found.get("total"):
        human += f"\nbad copies found earlier and dropped: {damage_line(found)}"
    if "read_data_chunks" in data:
        human += (
            f"\nread back {plural(data['read_data_copies_verified'], 'copy', 'copies')} of"
            f" {plural(data['read_data_chunks'], 'own chunk')} ({data['read_data_bytes'] / 1e6:.1f} MB):"
            f" {len(data['read_data_bad_copies'])} bad,"
            f" {data['read_data_unreadable_copies']} not handed over"
        )
        if args.repair:
            human += (
                f"; {plural(data['read_data_copies_dropped'], 'bad copy', 'bad copies')} deleted,"
                f" {plural(data['read_data_copies_made'], 'good copy', 'good copies')} made"
            )
        human += "".join(f"\n  bad copy on {line}" for line in data["read_data_bad_copies"][:20])
    emit(args, data, human)
    bad = (
        data["store_bad_copies"]
        or data["own_chunks_below_degree"]
        or data.get("own_coded_chunks_short")
        or data.get("read_data_bad_copies")
        or data.get("read_data_unreadable_copies")
    )
    return 1 if bad and not args.repair else 0


def cmd_prune(args: argparse.Namespace, state: StateDir) -> int:
    op: dict[str, Any] = {"op": "prune", "dry_run": args.dry_run}
    if args.keep:
        op["policy"] = args.keep
    data = request(state, op)
    verb = "would drop" if data["dry_run"] else "dropped"
    emit(
        args,
        data,
        f"{verb} {plural(data['snapshots_dropped'], 'snapshot')} and"
        f" {plural(data['versions_dropped'], 'version')};"
        f" {plural(data['chunks_deleted'], 'chunk')} {'would be' if data['dry_run'] else 'are being'}"
        f" deleted from their holders (policy {data['policy']})",
    )
    return 0


def cmd_degree(args: argparse.Namespace, state: StateDir) -> int:
    """Show or set the degree the mount gives new versions of a file or a folder's tree."""
    path: Path = args.path
    if not path.exists() and not path.is_symlink():
        raise CommandError(f"{path}: no such file or folder")
    if args.degree is not None:
        try:
            if args.degree == "default":
                try:
                    os.removexattr(path, DEGREE_XATTR, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno != errno.ENODATA:
                        raise
            else:
                os.setxattr(path, DEGREE_XATTR, args.degree.encode(), follow_symlinks=False)
        except OSError as exc:
            raise CommandError(f"{path}: cannot set its degree: {exc.strerror or exc}") from None
    degree, source = _effective_degree(path)
    if degree is None:
        try:
            degree, source = state.load_config().default_degree, "the node's default_degree"
        except CommandError:
            source = "the node's default_degree"
    code = Code.of_degree(degree) if degree is not None else None
    data = {
        "path": str(path),
        "degree": None if code else degree,
        "code": str(code) if code else None,
        "from": source,
    }
    after = " for the new versions of its files" if path.is_dir() else " for its new versions"
    kept = describe(degree) if degree is not None else "degree (default)"
    said = f"{path}: {kept}{after}, from {source}"
    said += " (the mount reads it; lanvault backup uses its --degree)"
    if args.degree is not None:
        said += " (versions made before keep theirs; write or back up again to raise them)"
    emit(args, data, said)
    return 0


def _effective_degree(path: Path) -> tuple[int | None, str]:
    """The degree the nearest ``user.lanvault.degree`` at or above ``path`` gives, and where
    it is set (None when nothing is)."""
    at = path.absolute()
    for place in (at, *at.parents):
        try:
            text = os.getxattr(place, DEGREE_XATTR, follow_symlinks=False).decode(
                "ascii", "replace"
            )
        except OSError:
            continue
        degree = parse_keeping(text)
        if degree is not None:
            return degree, str(place) if place != at else "its own setting"
    return None, ""


def cmd_snapshots(args: argparse.Namespace, state: StateDir) -> int:
    """Every backup run and every snapshot of a mount, oldest first, one line each."""
    op: dict[str, Any] = {"op": "snapshots"}
    data = _ask_about_path(state, op, args.path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["snapshots"]:
        print("no backups or snapshots yet (lanvault backup PATH, or lanvault mount)")
        return 0
    print(f"{'id':<22} {'time':<19}  {'path':<36} what")
    for snap in data["snapshots"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["time"]))
        shown = state.shown_path(snap["path"])
        if snap["kind"] == "mount":
            what = "snapshot of a mounted folder (read it in versions/)"
        else:
            what = (
                f"backup: {plural(snap['entries'], 'entry', 'entries')}, {snap['new']} new,"
                f" {snap['changed']} changed, {snap['removed']} gone;"
                f" {format_size(snap['bytes'])}, {format_size(snap['bytes_added'])} added"
                + ("" if snap["outcome"] == "complete" else f" ({snap['outcome']})")
            )
        print(f"{snap['id']:<22} {when:<19}  {shown:<36} {what}")
    return 0


def cmd_ls(args: argparse.Namespace, state: StateDir) -> int:
    """The entries of a snapshot (a backup run's bN or a mount snapshot's name)."""
    op: dict[str, Any] = {"op": "ls", "snapshot": args.snapshot}
    data = _ask_about_path(state, op, args.path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for entry in data["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["mtime"]))
        size = "" if entry["kind"] == "folder" else format_size(entry["size"])
        mark = "/" if entry["kind"] == "folder" else "@" if entry["kind"] == "symlink" else ""
        print(f"{entry['mode']:>6} {size:>10}  {when}  {state.shown_path(entry['path'])}{mark}")
    return 0


def cmd_diff(args: argparse.Namespace, state: StateDir) -> int:
    """What changed between two snapshots (``+`` added, ``-`` removed, ``M`` content, ``U``
    mode or time only), as restic's diff prints it."""
    op: dict[str, Any] = {"op": "diff", "from": args.snapshot1, "to": args.snapshot2}
    data = _ask_about_path(state, op, args.path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    marks = {"added": "+", "removed": "-", "changed": "M", "metadata": "U"}
    lines = sorted((p, marks[what]) for what, paths in data.items() for p in paths)
    for path, mark in lines:
        print(f"{mark}    {state.shown_path(path)}")
    counts = ", ".join(f"{len(data[what])} {what}" for what in marks)
    print(f"{args.snapshot1} -> {args.snapshot2}: {counts}")
    return 0


def cmd_find(args: argparse.Namespace, state: StateDir) -> int:
    """Every path a kept version has had that PATTERN matches, in any snapshot."""
    try:
        Exclusions([args.pattern])
    except PatternError as exc:
        raise UsageError(str(exc)) from None
    data = request(state, {"op": "find", "pattern": args.pattern})
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["paths"]:
        print(f"nothing backed up matches {args.pattern}")
        return 1
    for found in data["paths"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(found["newest"]))
        versions = plural(found["versions"], "version")
        print(f"{state.shown_path(found['path'])}  ({versions}, the newest {when})")
    return 0


def _ask_about_path(state: StateDir, op: dict[str, Any], path: Path | None) -> Any:
    """``op`` for ``path`` (by the catalog's name for it; a failure names it as typed), or for
    everything when no path was given."""
    if path:
        op["path"] = state.backup_path(path)
    return request(state, op, typed=path)
