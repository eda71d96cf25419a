"""What each ``lanvault`` subcommand does: talks to the daemon (or sets up a state directory,
runs a node or a mount) and prints the answer for people, or as JSON with ``--json``. The
parser and the dispatch are in ``cli.py``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from chunkstore.sizes import format_size
from node.exclusions import Exclusions, PatternError, read_pattern_file

from .client import DaemonUnavailable, call, call_binary
from .state import (
    CommandError,
    StateDir,
    UsageError,
    initialize,
    invite,
    read_passphrase,
    remove_node,
)


def kb(count: int) -> str:
    """``state`` prints KB (1000 bytes), as the original service did; elsewhere: format_size."""
    return f"{count / 1000:,.1f} KB"


class ProgressLine:
    """A bar with rate and ETA on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False  # something was printed (a bar then needs its line ended)

    def update(self, event: dict[str, Any]) -> None:
        done, total = int(event.get("bytes_done", 0)), int(event.get("bytes_total", 0))
        elapsed = max(float(event.get("elapsed", 0)), 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 and total > done else 0
        unit = event.get("unit", "files")
        files = f"{event.get('files_done', 0)}/{event.get('files_total', 0)} {unit}"
        share = done / total if total else 1.0
        if self.tty:
            self.shown = True
            bar = "#" * int(share * 30)
            sys.stderr.write(
                f"\r{self.verb} [{bar:<30}] {share:4.0%} {rate / 1e6:7.1f} MB/s ETA {eta:5.0f}s {files}"
            )
            sys.stderr.flush()
        elif time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            print(
                f"{self.verb}: {share:.0%} ({done / 1e6:.1f} of {total / 1e6:.1f} MB), {rate / 1e6:.1f} MB/s, ETA {eta:.0f}s, {files}",
                file=sys.stderr,
            )

    def finish(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")


def request(
    state: StateDir, op: dict[str, Any], verb: str | None = None, typed: Path | None = None
) -> Any:
    """Send ``op``; an error naming ``op["path"]`` names ``typed`` instead (a mount's path)."""
    state.require()
    bar = ProgressLine(verb) if verb else None
    said = None
    try:
        for event in call(state.socket_path, op):
            if event.get("event") == "progress" and bar:
                bar.update(event)
            elif event.get("event") == "waiting" and event.get("message") != said:
                said = event.get("message")
                print(f"lanvault: {said}", file=sys.stderr)
            elif event.get("event") == "result":
                if bar:
                    bar.finish()
                if not event.get("ok"):
                    error = str(event.get("error"))
                    if typed is not None and op.get("path"):
                        error = error.replace(str(op["path"]), str(typed))
                    raise CommandError(error)
                return event.get("data")
    except DaemonUnavailable as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot talk to the node: {exc}") from None
    raise CommandError("the node gave no answer")


def request_bytes(state: StateDir, op: dict[str, Any], timeout: float = 600) -> bytes:
    """Send ``op`` whose answer is raw bytes (see ``control.Binary``); the bytes."""
    state.require()
    try:
        event, blob = call_binary(state.socket_path, op, timeout)
    except DaemonUnavailable as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot talk to the node: {exc}") from None
    if not event.get("ok"):
        raise CommandError(str(event.get("error")))
    return blob


def print_state(data: dict[str, Any]) -> None:
    print(
        f"Node {data['node_id']}: capacity {kb(data['capacity_bytes'])}, used {kb(data['used_bytes'])}"
    )
    print(f"Files backed up by this node ({len(data['files'])}):")
    for f in data["files"]:
        print(f"  {f['path']}")
        print(
            f"    fileId {f['file_id']}  desired degree {f['desired_degree']}  size {kb(f['size'])}"
        )
        for c in f["chunks"]:
            print(f"      chunk {c['no']:>5}  {kb(c['size']):>10}  degree {c['degree']}")
    print(f"Chunks stored for others ({len(data['stored'])}):")
    for c in data["stored"]:
        print(f"  owner {c['owner']:>4}  {c['chunk']}  {kb(c['size']):>10}  degree {c['degree']}")


def damage_line(found: dict[str, Any]) -> str:
    """'12 (by reads 10, by a scrub 2) since …, the last at …; made again from other copies'."""
    by = ", ".join(f"by {how} {n}" for how, n in sorted(found["by"].items()))
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(found["since"]))
    last = time.strftime("%Y-%m-%d %H:%M", time.localtime(found["last"]))
    return (
        f"{found['total']} ({by}) since {since}, the last at {last};"
        " the other holders make them again"
    )


def print_status(data: dict[str, Any]) -> None:
    print(
        f"{'id':>5}  {'address':<22} {'computer':<24} {'state':<6} {'lent':>12} {'used':>12}"
        f" {'free':>12}"
    )
    for n in data["nodes"]:
        state = "up" if n["up"] else ("gone" if n.get("gone") else "down")
        mark = "*" if n.get("self") else " "
        print(
            f"{n['id']:>4}{mark}  {n['address']:<22} {str(n.get('computer', ''))[:24]:<24} {state:<6}"
            f" {format_size(n['capacity_bytes']):>12} {format_size(n['used_bytes']):>12}"
            f" {format_size(n.get('free_bytes', 0)):>12}"
        )
        if n.get("disk_full"):
            print(
                f"      this node's disk has room for {format_size(n['free_bytes'])} more,"
                f" less than its quota of {format_size(n['quota_bytes'])} leaves"
            )
        if n.get("kept_over_quota"):
            print(
                f"      {n['kept_over_quota']} chunks over its quota wait for another computer"
                " to take a copy (the reclaim moves them when one can)"
            )
    print(f"chunks below their degree: {data['under_replicated_chunks']}")
    print(f"backups waiting to be sent: {data['pending_backlog']}")
    for owner, when in data.get("last_backup", {}).items():
        shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "never"
        print(f"last backup of node {owner}: {shown}")
    print(f"bad copies found by the last scrub: {data['scrub_bad_copies']}")
    found = data.get("bad_copies_found") or {}
    if found.get("total"):
        print(f"bad copies found here and dropped: {damage_line(found)}")
    held = data.get("held_by_owner") or {}
    if held:
        parts = [f"node {o} {format_size(n)}" for o, n in held.items()]
        print("kept here, by owner: " + ", ".join(parts))
    rec = data.get("recovery") or {}
    if not rec.get("kit"):
        print("recovery: no recovery kit (this node predates them)")
    else:
        when = rec.get("last_catalog_backup")
        shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "not yet"
        print(
            f"recovery: kit on {rec['kit_holders']} nodes; catalog copy on"
            f" {rec['catalog_holders']} nodes ({rec['catalog_bytes'] / 1e6:.1f} MB, {shown})"
        )
    behind = rec.get("catalog_behind_seconds")
    if behind is not None:
        print(f"catalog copy {behind:.0f} s behind (the newest changes are not on the peers yet)")


def emit(args: argparse.Namespace, data: Any, human: str | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    elif human is not None:
        print(human)


# -- commands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, state: StateDir) -> int:
    passphrase = read_passphrase(args.passphrase_file, confirm=True)
    config, code = initialize(
        state.root, args.id, passphrase, args.join, args.listen, args.peer, args.host_id
    )
    if args.json:
        print(json.dumps({"node_id": config.node_id, "join_code": code}))
    else:
        joined = "joined" if args.join else "created"
        print(f"Node {config.node_id} {joined} network {config.network_id} in {state.root}.")
        if code:
            print("Join code for one more computer (keep it secret; used once, valid 7 days;")
            print("'lanvault invite' makes another):")
            print(code)
        print(f"Start it with: lanvault node --dir {state.root}")
    return 0


def cmd_invite(args: argparse.Namespace, state: StateDir) -> int:
    if args.expires <= 0:
        raise UsageError("--expires must be a positive duration (e.g. 2h, 7d)")
    code = invite(state, args.expires)
    expires = time.time() + args.expires
    if args.json:
        print(json.dumps({"join_code": code, "expires": expires}))
    else:
        print("Join code for one more computer (keep it secret; used once; valid until")
        print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(expires))}). This node must be")
        print("running when the computer joins (lanvault init --id N --join CODE):")
        print(code)
    return 0


def cmd_remove_node(args: argparse.Namespace, state: StateDir) -> int:
    version = remove_node(state, args.id)
    emit(
        args,
        {"removed": args.id, "roster_version": version},
        f"Node {args.id} is removed from the network's roster (version {version}). Nodes that"
        " are up refuse its connections and its chunks as soon as they hear of it (seconds);"
        " its copies of others' data are made again elsewhere once it counts as gone.",
    )
    return 0


def cmd_recover(args: argparse.Namespace, state: StateDir) -> int:
    import trio

    from .recover import recover

    if not 0 <= args.id < 2**32:
        raise UsageError(f"--id must be in 0..{2**32 - 1}")

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    bar = ProgressLine("catalog")
    data = trio.run(
        recover,
        state.root,
        args.id,
        lambda: read_passphrase(args.passphrase_file),
        args.peer,
        args.listen_seconds,
        say,
        None if args.json else bar.update,
    )
    bar.finish()
    emit(
        args,
        data,
        f"recovered node {data['node_id']} in {data['state']}: {data['files']} files,"
        f" {data['versions']} versions, {data['snapshots']} snapshots"
        f" (catalog copy {data['catalog_seq']}). Start it with: lanvault node --dir {data['state']};"
        f" then e.g. lanvault restore PATH --to DEST",
    )
    return 0


def cmd_node(args: argparse.Namespace, state: StateDir) -> int:
    import trio

    from .daemon import open_chunk_store, run_daemon

    config = state.load_config()
    if args.listen:
        config.listen = args.listen
    if args.advertise:
        config.advertise = args.advertise
    if args.peer:
        config.peers = list(dict.fromkeys(config.peers + args.peer))
    if args.gone_after is not None:
        config.gone_after = args.gone_after
    if args.heartbeat is not None:
        config.heartbeat_interval = args.heartbeat
        config.down_after = max(3 * args.heartbeat, 1.0)
    if args.repair_interval is not None:
        config.repair_interval = args.repair_interval
    if args.quota is not None:
        config.quota = args.quota
    if args.discovery is not None:
        config.discovery = args.discovery
    if args.metrics is not None:
        config.metrics = "" if args.metrics == "off" else args.metrics
    if (args.s3_endpoint or args.s3_region) and not (args.bucket or config.bucket):
        raise UsageError("--s3-endpoint and --s3-region go with --bucket s3://NAME[/PREFIX]")
    if args.bucket is not None:
        from chunkstore.cloud import BucketAddress

        address = BucketAddress.parse(args.bucket)
        if config.bucket and BucketAddress.parse(config.bucket) != address:
            raise CommandError(
                f"this node keeps its chunks in {config.bucket}; a node per bucket"
                " (lanvault init a new one for another bucket)"
            )
        config.bucket = str(address)
        config.s3_endpoint = args.s3_endpoint or config.s3_endpoint
        config.s3_region = args.s3_region or config.s3_region
        # An off-site copy is its own "computer": placement puts one copy there at most.
        config.host_id = f"bucket {config.s3_endpoint or 'aws'} {address}"
    with open_chunk_store(state, config) as store:  # a wrong bucket fails here, in one line
        if args.quota is not None:
            store.set_capacity(args.quota)
    state.save_config(config)
    trio.run(run_daemon, state, config)
    return 0


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _what(data: dict[str, Any]) -> str:
    """'3 files, 1 symlink and 2 folders': what a backup or restore went through."""
    parts = [_count(data["files"], "file", "files")] if data["files"] else []
    if data.get("symlinks"):
        parts.append(_count(data["symlinks"], "symlink", "symlinks"))
    if data.get("folders"):
        parts.append(_count(data["folders"], "folder", "folders"))
    if len(parts) <= 1:
        return parts[0] if parts else "0 files"
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _links_not_made(data: dict[str, Any]) -> str:
    count = data.get("links_not_made_count", 0)
    if not count:
        return ""
    return (
        f"; left {_count(count, 'folder', 'folders')} where the backup had a symlink"
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
            f"; the destination refused {_count(count, 'extended attribute', 'extended attributes')}"
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


def _backed_up(data: dict[str, Any], path: Path | None) -> str:
    """The line a backup prints."""
    found = f"{data['new']} new, {data['changed']} changed, {data['unmodified']} unmodified"
    if data.get("removed"):
        what = "gone or left out" if data.get("excluding") else "gone"
        found += f", {data['removed']} {what} since the last backup"
    summary = (
        f"backed up {_what(data)}: {found} ({data['bytes'] / 1e6:.1f} MB,"
        f" {data['bytes_read'] / 1e6:.1f} MB read, {data['bytes_sent'] / 1e6:.1f} MB sent) at degree {data['degree']}"
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
    extra = f"; {pending} offline holders will delete when they are back" if pending else ""
    emit(
        args,
        data,
        f"deleted {data['files']} file{'' if data['files'] == 1 else 's'}"
        f" ({data['chunks']} chunks) from every holder{extra}",
    )
    return 0


def cmd_reclaim(args: argparse.Namespace, state: StateDir) -> int:
    data = request(state, {"op": "reclaim", "bytes": args.size}, "reclaiming")
    human = (
        f"now lending {format_size(data['capacity_bytes'])}, using {format_size(data['used_bytes'])}"
        f" ({format_size(data['records_bytes'])} of it owners' recovery records, kept);"
        f" dropped {data['dropped']} chunks after making {data['copied']} copies elsewhere"
    )
    if data["kept"]:
        up = ", ".join(map(str, data["peers_up"])) or "none"
        human += (
            f"\n{data['kept']} chunks ({format_size(data['kept_bytes'])}) are kept here for now:"
            f" no other computer could take a copy (nodes up: {up}). The node keeps trying"
            " at each repair pass and moves them as soon as one can (see status)"
        )
    emit(args, data, human)
    return 1 if data["kept"] else 0


def cmd_state(args: argparse.Namespace, state: StateDir) -> int:
    # The daemon sends the report as JSON bytes (~30 MB at 100,000 files): --json writes them
    # out as they are, not parsed and encoded again.
    report = request_bytes(state, {"op": "state"})
    if args.json:
        sys.stdout.buffer.write(report + b"\n")
        sys.stdout.flush()
    else:
        print_state(json.loads(report))
    return 0


def cmd_status(args: argparse.Namespace, state: StateDir) -> int:
    data = request(state, {"op": "status"})
    print(json.dumps(data, indent=2)) if args.json else print_status(data)
    return 0


def cmd_versions(args: argparse.Namespace, state: StateDir) -> int:
    op: dict[str, Any] = {"op": "versions"}
    if args.path:
        op["path"] = state.backup_path(args.path)
    data = request(state, op, typed=args.path)
    if args.json:
        print(json.dumps(data, indent=2))
    elif "snapshots" in data:
        if not data["snapshots"]:
            print("no snapshots yet (they come from mounted folders: lanvault mount)")
        for snap in data["snapshots"]:
            print(f"{snap['name']}  {snap['root']}")
    else:
        print(data["path"])
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
        f" {data['own_chunks_lost']} lost; {data['copies_made']} copies made"
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
            f"\nread back {data['read_data_copies_verified']} copies of"
            f" {data['read_data_chunks']} own chunks ({data['read_data_bytes'] / 1e6:.1f} MB):"
            f" {len(data['read_data_bad_copies'])} bad,"
            f" {data['read_data_unreadable_copies']} not handed over"
        )
        if args.repair:
            human += (
                f"; {data['read_data_copies_dropped']} bad copies deleted,"
                f" {data['read_data_copies_made']} good copies made"
            )
        human += "".join(f"\n  bad copy on {line}" for line in data["read_data_bad_copies"][:20])
    emit(args, data, human)
    bad = (
        data["store_bad_copies"]
        or data["own_chunks_below_degree"]
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
        f"{verb} {data['snapshots_dropped']} snapshots and {data['versions_dropped']} versions;"
        f" {data['chunks_deleted']} chunks {'would be' if data['dry_run'] else 'are being'}"
        f" deleted from their holders (policy {data['policy']})",
    )
    return 0


def cmd_mount(args: argparse.Namespace, state: StateDir) -> int:
    from .mount import run_mount

    run_mount(
        state, args.source.absolute(), args.mountpoint.absolute(), min_interval=args.min_interval
    )
    return 0
