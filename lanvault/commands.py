"""What each ``lanvault`` subcommand does: talks to the daemon (or sets up a state directory,
runs a node or a mount) and prints the answer for people, or as JSON with ``--json``. The
parser and the dispatch are in ``cli.py``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chunkstore.errors import ChunkstoreError
from chunkstore.sizes import format_size

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


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 chunk', '3 chunks': a count with its noun agreeing."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def kb(count: int) -> str:
    """``state`` prints KB (1000 bytes), as the original service did; elsewhere: format_size.
    Under 1 KB to the byte (a 20-byte file is 0.020 KB, not 0.0 KB)."""
    return f"{count / 1000:.3f} KB" if count < 1000 else f"{count / 1000:,.1f} KB"


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


def print_state(data: dict[str, Any], shown: Callable[[str], str] = str) -> None:
    """The report for people: files by the path they see (in the mount, for a mount's)."""
    print(
        f"Node {data['node_id']}: capacity {kb(data['capacity_bytes'])}, used {kb(data['used_bytes'])}"
    )
    print(f"Files backed up by this node ({len(data['files'])}):")
    for f in data["files"]:
        print(f"  {shown(f['path'])}")
        if f.get("code"):  # coded: a chunk's "degree" is its shares present, of N
            wanted, each = f"code {f['code']} ({f['desired_degree']} shares)", "shares"
        else:
            wanted, each = f"desired degree {f['desired_degree']}", "degree"
        print(f"    fileId {f['file_id']}  {wanted}  size {kb(f['size'])}")
        for c in f["chunks"]:
            print(f"      chunk {c['no']:>5}  {kb(c['size']):>10}  {each} {c['degree']}")
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


def presence_line(node: dict[str, Any]) -> str:
    """What was observed of a peer's presence, for people ("" for this node, or a peer seen for
    less than an hour: too little to say)."""
    observed = float(node.get("observed_s") or 0)
    if node.get("self") or observed < 3600 or node.get("uptime") is None:
        return ""
    span = f"{observed / 86400:.1f} days" if observed >= 86400 else f"{observed / 3600:.1f} h"
    times = int(node.get("times_away") or 0)
    away = (
        f", away {plural(times, 'time')} for {float(node['away_s']) / 3600:.1f} h in all"
        if times
        else ", never away"
    )
    return f"up {float(node['uptime']):.1%} of the {span} this node has seen it{away}"


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
        presence = presence_line(n)
        if presence:
            print(f"      {presence}")
        if n.get("disk_full"):
            print(
                f"      this node's disk has room for {format_size(n['free_bytes'])} more,"
                f" less than its quota of {format_size(n['quota_bytes'])} leaves"
            )
        if n.get("kept_over_quota"):
            print(
                f"      {plural(n['kept_over_quota'], 'chunk')} over its quota wait for another computer"
                " to take a copy (the reclaim moves them when one can)"
            )
    print(f"chunks below their degree: {data['under_replicated_chunks']}")
    print(f"backups waiting to be sent: {data['pending_backlog']}")
    if data.get("pending_cannot_complete"):  # waiting will not help: said, with what will
        print(f"      they cannot all be sent on this network: {data['pending_cannot_complete']}")
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
            f"recovery: kit on {plural(rec['kit_holders'], 'node')}; catalog copy on"
            f" {plural(rec['catalog_holders'], 'node')} ({rec['catalog_bytes'] / 1e6:.1f} MB, {shown})"
        )
    behind = rec.get("catalog_behind_seconds")
    if behind is not None:
        print(f"catalog copy {behind:.0f} s behind (the newest changes are not on the peers yet)")
    for job in data.get("running") or []:
        total = f" of {job['files_total']}" if job["files_total"] else ""
        size = f" of {format_size(job['bytes_total'])}" if job["bytes_total"] else ""
        print(
            f"running: {job['kind']} {job['what']}: {job['files_done']}{total} {job['unit']},"
            f" {format_size(job['bytes_done'])}{size}, {job['elapsed']:.0f} s"
        )


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
        f"recovered node {data['node_id']} in {data['state']}: {plural(data['files'], 'file')},"
        f" {plural(data['versions'], 'version')}, {plural(data['snapshots'], 'snapshot')}"
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
    if args.relay is not None:
        config.relay = args.relay
    if args.metrics is not None:
        config.metrics = "" if args.metrics == "off" else args.metrics
    if args.web is not None:
        config.web = "" if args.web == "off" else args.web
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


def cmd_reclaim(args: argparse.Namespace, state: StateDir) -> int:
    data = request(state, {"op": "reclaim", "bytes": args.size}, "reclaiming")
    human = (
        f"now lending {format_size(data['capacity_bytes'])}, using {format_size(data['used_bytes'])}"
        f" ({format_size(data['records_bytes'])} of it owners' recovery records, kept);"
        f" dropped {plural(data['dropped'], 'chunk')} after making"
        f" {plural(data['copied'], 'copy', 'copies')} elsewhere"
    )
    if data["kept"]:
        up = ", ".join(map(str, data["peers_up"])) or "none"
        human += (
            f"\n{plural(data['kept'], 'chunk')} ({format_size(data['kept_bytes'])})"
            f" {'is' if data['kept'] == 1 else 'are'} kept here for now:"
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
        print_state(json.loads(report), state.shown_path)
    return 0


def cmd_dashboard(args: argparse.Namespace, state: StateDir) -> int:
    config = state.load_config()
    if not config.web:
        raise CommandError(
            "this node serves no dashboard: start it with 'lanvault node --web 127.0.0.1:8384'"
        )
    host, _, port = config.web.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):  # every interface: this computer's own is one
        host = "127.0.0.1"
    url = f"http://{host}:{port}/?token={state.web_token()}"
    print(json.dumps({"url": url}) if args.json else url)
    return 0


def cmd_status(args: argparse.Namespace, state: StateDir) -> int:
    data = request(state, {"op": "status"})
    print(json.dumps(data, indent=2)) if args.json else print_status(data)
    return 0


def cmd_mount(args: argparse.Namespace, state: StateDir) -> int:
    from chunkstore.exclusions import Exclusions, PatternError, read_pattern_file

    from .mount import run_mount

    patterns: list[str] | None = None  # None: the ones kept for this SOURCE
    try:
        if args.exclude or args.exclude_file or args.no_exclude:
            if args.no_exclude and (args.exclude or args.exclude_file):
                raise PatternError("--no-exclude drops every pattern: give it alone")
            patterns = list(args.exclude)
            for name in args.exclude_file:
                patterns += read_pattern_file(name)
            Exclusions(patterns)  # a bad pattern is wrong usage, said before mounting
    except PatternError as exc:
        raise UsageError(str(exc)) from None

    def mount(on_ready: Callable[[str], None] | None = None) -> None:
        run_mount(
            state,
            args.source.absolute(),
            args.mountpoint.absolute(),
            min_interval=args.min_interval,
            burst_wait=args.burst_wait,
            force=args.force,
            on_ready=on_ready,
            exclude=patterns,
            request_counts=args.request_counts,
        )

    if not args.daemon:
        mount()
        return 0
    return in_background(mount, state.root / "mount.log")


def in_background(mount: Callable[[Callable[[str], None]], None], log_path: Path) -> int:
    """Run ``mount`` in a child process of its own session, logging to ``log_path``; return
    once it is mounted (0, its ready line printed) or has failed (1, its error printed)."""
    read_end, write_end = os.pipe()
    if os.fork():  # the parent: wait for the child's word (no threads here yet: fork is safe)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            word = pipe.read().decode(errors="replace")
        status, _, message = word.partition(" ")
        print(f"lanvault: {message or 'the mount stopped before it was ready'}", file=sys.stderr)
        return 0 if status == "ready" else 1
    os.close(read_end)
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (1, 2):
        os.dup2(log, fd)
    os.close(log)
    os.close(null)
    told = False

    def ready(message: str) -> None:
        nonlocal told
        os.write(write_end, f"ready {message} (it runs in the background)".encode())
        os.close(write_end)
        told = True

    try:
        mount(ready)
    except (CommandError, ChunkstoreError, OSError) as exc:
        if not told:
            os.write(write_end, f"failed {exc}".encode())
        os._exit(1)
    os._exit(0)
