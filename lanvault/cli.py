"""The ``lanvault`` command line. Exit status: 0 success, 1 a failure the message explains,
2 wrong usage."""

from __future__ import annotations

import argparse
import datetime
import difflib
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from chunkstore.errors import ChunkstoreError
from chunkstore.retention import RetentionFormatError, RetentionPolicy
from chunkstore.shares import Code
from chunkstore.sizes import parse_duration, parse_size
from node.identity import IdentityError

from .backups import (
    cmd_backup,
    cmd_check,
    cmd_degree,
    cmd_delete,
    cmd_diff,
    cmd_find,
    cmd_ls,
    cmd_prune,
    cmd_restore,
    cmd_snapshots,
    cmd_versions,
)
from .commands import (
    cmd_dashboard,
    cmd_init,
    cmd_invite,
    cmd_mount,
    cmd_node,
    cmd_reclaim,
    cmd_recover,
    cmd_remove_node,
    cmd_state,
    cmd_status,
)
from .docgen import ShowVersion, bash_completion, man_page, zsh_completion
from .runtime import tune_allocator, tune_switch_interval
from .simulate_cli import cmd_simulate, simulate_arguments
from .state import (
    CommandError,
    StateDir,
    UsageError,
    default_state_dir,
)


class Parser(argparse.ArgumentParser):
    """Usage errors print the (sub)command's usage, one line saying what is wrong, and for a
    mistyped option the closest real one; options are never taken from an abbreviation
    (``--deg`` is not ``--degree``: a later option could make it ambiguous, or another)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the subcommands, on the top-level parser

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # blamed on the subcommand, with its usage (argparse blames the top level)
            command = self.commands.get(getattr(parsed, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extra)}", extra)
        return parsed

    def error(self, message: str, unknown: Sequence[str] = ()) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"lanvault: {message}", file=sys.stderr)
        known = [o for action in self._actions for o in action.option_strings]
        wrong = re.search(r"invalid choice: '([^']*)'", message)
        if wrong and self.commands:  # a mistyped command
            unknown, known = [wrong.group(1)], list(self.commands)
        for word in unknown:
            if word.startswith("-") or wrong:
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
                if close:
                    print(f"lanvault: {word}: did you mean {close[0]}?", file=sys.stderr)
        raise SystemExit(2)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ChunkstoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ChunkstoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _moment(text: str) -> int:
    """A point in time, as nanoseconds since the epoch."""
    text = text.strip()
    if text and text[-1] in "smhd" and text[:-1].replace(".", "", 1).isdigit():
        return time.time_ns() - int(_duration(text) * 1e9)
    candidate = text.replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r} (e.g. 2026-11-21T17:30, 2026-11-21T17:30:00Z, 2h, 3d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as people write it
    return int(moment.timestamp() * 1e9)


def _host_port(text: str) -> str:
    if text == "off":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"invalid address {text!r} (expected HOST:PORT)")
    return text


def _policy(text: str) -> str:
    try:
        return RetentionPolicy.parse(text).describe()
    except RetentionFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _degree(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError("the degree must be 1..9")
    return int(text)


def _code(text: str) -> str:
    try:
        return str(Code.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _degree_or_default(text: str) -> str:
    if text == "default":
        return text
    if text.strip().isdigit():
        _degree(text)
        return text.strip()
    return _code(text)  # a K-of-N code


def _exclusion_options(p: argparse.ArgumentParser, pattern_help: str) -> None:
    """--exclude PATTERN and --exclude-file FILE, for backup and mount."""
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=pattern_help)
    p.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="patterns from FILE, one per line ('#' starts a comment)",
    )


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        help="state directory (default: $LANVAULT_DIR or ~/.local/share/lanvault)",
    )
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="more log output")

    parser = Parser(prog="lanvault", description="A backup filesystem for a local network.")
    parser.add_argument("--version", action=ShowVersion, help="show the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True

    class Commands:
        """``add_parser`` whose one-line help is also the command's --help description."""

        @staticmethod
        def add_parser(name: str, *, help: str, **kwargs: Any) -> Parser:
            description = help[0].upper() + help[1:] + "."
            command: Parser = subparsers.add_parser(
                name, help=help, description=description, **kwargs
            )
            parser.commands[name] = command
            return command

    sub = Commands()

    p = sub.add_parser("init", parents=[common], help="create a node's state, keys and config")
    p.add_argument("--id", type=int, required=True, help="this node's id, unique in the network")
    p.add_argument("--join", metavar="CODE", help="join an existing network with its join code")
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve peers on (default 127.0.0.1:7420)"
    )
    p.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT", help="a peer to contact"
    )
    p.add_argument(
        "--host-id", help="name of this computer (nodes sharing it count as one computer)"
    )
    p.add_argument("--passphrase-file", help="read the passphrase from FILE")

    p = sub.add_parser(
        "recover",
        parents=[common],
        help="rebuild a lost node's keys and catalog from its passphrase and the peers",
    )
    p.add_argument("--id", type=int, required=True, help="the lost node's id")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node of the network (default: listen for nodes on the LAN)",
    )
    p.add_argument("--passphrase-file", help="read the passphrase from FILE")
    p.add_argument(
        "--listen-seconds",
        type=float,
        default=10.0,
        help="how long to listen for LAN announcements without --peer (default 10)",
    )

    p = sub.add_parser("node", parents=[common], help="run the node daemon (foreground)")
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve peers on (default: the config's)"
    )
    p.add_argument(
        "--advertise", metavar="HOST:PORT", help="address peers should dial, if not --listen"
    )
    p.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT", help="a peer to contact"
    )
    p.add_argument("--quota", type=_size, help="space lent to others (e.g. 500MB, 10GiB)")
    p.add_argument(
        "--gone-after", type=_duration, help="silence after which a peer is gone (default 10m)"
    )
    p.add_argument(
        "--discovery",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="announce this node and find peers on the LAN by multicast (default on)",
    )
    p.add_argument(
        "--relay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send a backup's copies once, down a chain of holders that each store and pass"
        " them on (default on); --no-relay sends every copy from this node and forwards none",
    )
    p.add_argument(
        "--metrics",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (':PORT' is 127.0.0.1; give 0.0.0.0:PORT for every interface; 'off' to stop)",
    )
    p.add_argument(
        "--web",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve the web dashboard at http://HOST:PORT/ (e.g. 127.0.0.1:8384); every request"
        " needs the token kept in STATE/web-token ('lanvault dashboard' prints the address with"
        " it); 'off' to stop",
    )
    p.add_argument(
        "--bucket",
        metavar="s3://NAME[/PREFIX]",
        help="keep the chunks this node holds in an S3-compatible bucket (the cloud tier);"
        " credentials from the AWS_* variables or ~/.aws",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="the bucket's service, if not AWS")
    p.add_argument("--s3-region", metavar="REGION", help="the bucket's region")
    p.add_argument("--heartbeat", type=_duration, help=argparse.SUPPRESS)
    p.add_argument("--repair-interval", type=_duration, help=argparse.SUPPRESS)

    p = sub.add_parser("backup", parents=[common], help="back up files or folders")
    p.add_argument(
        "path", type=Path, nargs="+", help="a file or folder (its whole tree); several may be given"
    )
    _exclusion_options(
        p,
        "leave out what PATTERN matches: a name anywhere ('*.o', node_modules), a path"
        " from the top ('/home/ann/tmp') or a path's end ('build/tmp'); '*' within a name,"
        " '**' across names; may be repeated",
    )
    p.add_argument(
        "--exclude-caches",
        action="store_true",
        help="leave out the contents of folders tagged with CACHEDIR.TAG (the tag is kept)",
    )
    p.add_argument(
        "--one-file-system",
        action="store_true",
        help="do not enter folders on another file system than the path's (kept empty)",
    )
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--degree", type=_degree, help="copies on other computers (1..9, default 2)")
    keep.add_argument(
        "--code",
        type=_code,
        metavar="K-of-N",
        help="keep each chunk as N erasure-coded shares on N computers, any K of which rebuild"
        " it (2 <= K < N <= 16; 2-of-4 stores 2x like degree 2 and survives any two computers"
        " lost, like degree 3)",
    )

    p = sub.add_parser("restore", parents=[common], help="restore a file or folder")
    p.add_argument("path", type=Path, help="the file or folder as it was backed up (or mounted)")
    p.add_argument(
        "--to", type=Path, metavar="DEST", help="where to write (default: the original place)"
    )
    p.add_argument(
        "--at",
        type=_moment,
        metavar="TIME",
        help="restore as of TIME: 2026-11-21T17:30, a snapshot name, or an age such as 2h or 3d",
    )

    p = sub.add_parser(
        "versions", parents=[common], help="list snapshots, or the versions of a file"
    )
    p.add_argument(
        "path", type=Path, nargs="?", help="a file or folder (default: the mounts' snapshots)"
    )

    p = sub.add_parser(
        "snapshots",
        parents=[common],
        help="list every backup run and every snapshot of a mounted folder, oldest first",
    )
    p.add_argument(
        "path", type=Path, nargs="?", help="only those of this file or folder (default: all)"
    )

    p = sub.add_parser(
        "ls", parents=[common], help="list what a snapshot holds (an id from lanvault snapshots)"
    )
    p.add_argument("snapshot", help="a backup run's id (b12) or a mount snapshot's name")
    p.add_argument("path", type=Path, nargs="?", help="only this folder or file of it")

    p = sub.add_parser(
        "diff", parents=[common], help="what changed between two snapshots (ids as for ls)"
    )
    p.add_argument("snapshot1", help="the earlier snapshot")
    p.add_argument("snapshot2", help="the later snapshot")
    p.add_argument("path", type=Path, nargs="?", help="only under this folder")

    p = sub.add_parser(
        "find", parents=[common], help="find the backed-up paths a pattern matches, in any snapshot"
    )
    p.add_argument(
        "pattern",
        help="a name ('*.odt', report.odt) or a path ('/home/ann/**/notes'), as --exclude",
    )

    p = sub.add_parser(
        "delete", parents=[common], help="delete a file's or folder's backups everywhere"
    )
    p.add_argument("path", type=Path, help="the file or folder whose every version goes")

    p = sub.add_parser(
        "degree",
        parents=[common],
        help="show or set how many copies the mount makes of a file's or folder's new versions",
    )
    p.add_argument("path", type=Path, help="a file or folder in the mount (or its SOURCE)")
    p.add_argument(
        "degree",
        nargs="?",
        type=_degree_or_default,
        help="1..9 copies, a K-of-N code (2-of-4), or 'default' to use the node's default_degree"
        " again; omitted: show it",
    )

    p = sub.add_parser("reclaim", parents=[common], help="lower the space this node lends")
    p.add_argument("size", type=_size, help="new space lent, e.g. 0, 500MB, 10GiB")

    p = sub.add_parser(
        "invite",
        parents=[common],
        help="make a one-time join code for one more computer (on an administrator node)",
    )
    p.add_argument(
        "--expires", type=_duration, default=7 * 86400.0, help="validity (default 7d; e.g. 2h)"
    )

    p = sub.add_parser(
        "remove-node",
        parents=[common],
        help="remove a computer from the network for good (stolen, broken, given away)",
    )
    p.add_argument("id", type=int, help="the node id to remove")

    sub.add_parser("state", parents=[common], help="files backed up, chunks stored, capacity")
    sub.add_parser("status", parents=[common], help="the network's health")
    sub.add_parser(
        "dashboard",
        parents=[common],
        help="print the web dashboard's address, with its token (see node --web)",
    )

    p = sub.add_parser("mount", parents=[common], help="mount a backed-up folder (foreground)")
    p.add_argument("source", type=Path, help="the folder holding the real files")
    p.add_argument("mountpoint", type=Path, help="where to mount it (may be SOURCE itself)")
    _exclusion_options(
        p,
        "never record what PATTERN matches (as backup --exclude: node_modules, '*.o');"
        " kept for this SOURCE, for later mounts too; may be repeated",
    )
    p.add_argument(
        "--no-exclude",
        action="store_true",
        help="drop the patterns kept for this SOURCE (record everything again)",
    )
    p.add_argument(
        "--request-counts",
        type=Path,
        metavar="FILE",
        help="when unmounted, write the FUSE requests served, and the seconds spent in them,"
        " by kind, to FILE (JSON)",
    )
    p.add_argument(
        "--min-interval",
        type=_duration,
        metavar="DURATION",
        help="least time between two versions of a file written continuously (default 2s)",
    )
    p.add_argument(
        "--burst-wait",
        type=_duration,
        metavar="DURATION",
        help="most time a closed file waits for a burst of changes (a cp -a, a git clone) to"
        " pause before its version is cut (default 15s; 0: at once)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="mount over a folder that holds files of its own (out of sight while mounted)",
    )
    p.add_argument(
        "--daemon",
        action="store_true",
        help="go to the background once mounted (logging to STATE/mount.log); exit 0 when"
        " ready, 1 with the reason if it could not mount",
    )

    p = sub.add_parser(
        "prune", parents=[common], help="apply the retention policy to snapshots and versions"
    )
    p.add_argument("--dry-run", action="store_true", help="show what would go, change nothing")
    p.add_argument(
        "--keep",
        metavar="POLICY",
        type=_policy,
        help="this policy instead of the configured one: tiers INTERVAL:SPAN, youngest first,"
        " INTERVAL one of all, hourly, daily, weekly, monthly or a duration (6h), SPAN a"
        " duration or forever; e.g. all:24h,hourly:7d,daily:30d,weekly:1y (the default)",
    )

    p = sub.add_parser(
        "completion", help="print a shell completion script (source it, e.g. in ~/.bashrc)"
    )
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell: bash or zsh")
    sub.add_parser("man", help="print the manual page (man -l <(lanvault man))")

    p = sub.add_parser(
        "simulate",
        parents=[common],
        help="estimate what each degree (or k-of-n code) risks losing, by simulating years",
    )
    simulate_arguments(p, _size, _duration)

    p = sub.add_parser("check", parents=[common], help="verify chunk integrity and degrees")
    p.add_argument("--repair", action="store_true", help="repair what can be repaired")
    p.add_argument(
        "--read-data",
        action="store_true",
        help="also fetch and open every copy of this node's chunks (slow: reads everything)",
    )
    p.add_argument(
        "--sample",
        type=_percent,
        metavar="PERCENT",
        help="with --read-data, read a random PERCENT of the chunks only",
    )
    return parser


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"a percentage in (0, 100], not {text!r}")
    return value


COMMANDS = {
    "mount": cmd_mount,
    "recover": cmd_recover,
    "init": cmd_init,
    "node": cmd_node,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "delete": cmd_delete,
    "degree": cmd_degree,
    "reclaim": cmd_reclaim,
    "state": cmd_state,
    "status": cmd_status,
    "dashboard": cmd_dashboard,
    "simulate": cmd_simulate,
    "check": cmd_check,
    "versions": cmd_versions,
    "snapshots": cmd_snapshots,
    "ls": cmd_ls,
    "diff": cmd_diff,
    "find": cmd_find,
    "prune": cmd_prune,
    "invite": cmd_invite,
    "remove-node": cmd_remove_node,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("completion", "man"):  # the parser describing itself: no state needed
        if args.command == "man":
            print(man_page(parser, parser.commands), end="")
        elif args.shell == "zsh":
            print(zsh_completion(parser.commands), end="")
        else:
            print(bash_completion(parser.commands), end="")
        return 0
    tune_allocator()
    tune_switch_interval()
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.INFO
        if args.command == "node"
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for chatty in ("botocore", "boto3", "urllib3"):  # "Found credentials in ..." on every start
        logging.getLogger(chatty).setLevel(logging.WARNING)
    state = StateDir(args.dir or default_state_dir())
    try:
        return COMMANDS[args.command](args, state)
    except UsageError as exc:
        print(f"lanvault: {exc}", file=sys.stderr)
        return 2
    except (CommandError, ChunkstoreError, IdentityError) as exc:
        print(f"lanvault: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lanvault: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(
            f"lanvault: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
