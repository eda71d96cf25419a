"""The command line's own behaviour, in process: help for everything, usage errors that say
what to type instead, no abbreviations, --version."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from chunkstore.catalog import DEGREE_XATTR
from chunkstore.shares import Code
from fs.capture import degree_from_xattrs
from lanvault.cli import build_parser, main
from lanvault.commands import kb

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_and_every_argument_says_what_it_is() -> None:
    parser = build_parser()
    assert parser.commands, "no subcommands found"
    for name, command in parser.commands.items():
        assert command.description, f"{name}: no description"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"


@pytest.mark.parametrize(
    ("argv", "usage", "suggestion"),
    [
        (["backup", "--dgree", "3", "x"], "usage: lanvault backup", "did you mean --degree?"),
        (["restore", "x", "--too", "y"], "usage: lanvault restore", "did you mean --to?"),
        (["status", "--jsn"], "usage: lanvault status", "did you mean --json?"),
        (["stauts"], "usage: lanvault [", "did you mean status?"),
    ],
)
def test_a_mistyped_option_shows_its_commands_usage_and_the_closest_option(
    argv: list[str], usage: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert suggestion in err, err


def test_an_abbreviated_option_is_refused_not_guessed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["backup", "--deg", "3", "x"])
    assert exit.value.code == 2
    assert "did you mean --degree?" in capsys.readouterr().err


def test_a_command_that_talks_to_the_node_does_not_load_the_node() -> None:
    """Every command is a new process: what it imports at start it pays for each time. The
    simulator (and with it trio and the node's code) and importlib.metadata cost every
    command 0.17 s of a 0.35 s start before they were loaded only where used."""
    script = (
        "import sys\n"
        "from lanvault.cli import build_parser\n"
        "build_parser().parse_args(['backup', 'x'])\n"
        "print(' '.join(m for m in ('trio', 'node.node', 'lanvault.simulate',"
        " 'importlib.metadata') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    line = next(
        line for line in (ROOT / "pyproject.toml").read_text().splitlines() if "version =" in line
    )
    assert capsys.readouterr().out == f"lanvault {line.split('=')[1].strip().strip(chr(34))}\n"


def test_degree_shows_and_sets_the_mounts_degree_attribute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "Photos"
    (folder / "2026").mkdir(parents=True)
    photo = folder / "2026" / "beach.jpg"
    photo.write_bytes(b"jpeg")
    state = ["--dir", str(tmp_path / "no-node")]  # no node needed: the default is named
    assert main(["degree", str(photo), *state]) == 0
    assert "degree (default)" in capsys.readouterr().out
    assert main(["degree", str(folder), "3", *state]) == 0
    assert "versions made before keep theirs" in capsys.readouterr().out
    assert os.getxattr(folder, DEGREE_XATTR) == b"3"
    assert main(["degree", str(photo), *state]) == 0
    assert f"degree 3 for its new versions, from {folder}" in capsys.readouterr().out
    assert degree_from_xattrs(str(tmp_path), "Photos/2026/beach.jpg", 2) == 3  # the mount's view
    assert main(["degree", str(folder), "default", *state]) == 0
    assert DEGREE_XATTR not in os.listxattr(folder)
    with pytest.raises(SystemExit) as exit:
        main(["degree", str(folder), "12", *state])
    assert exit.value.code == 2
    assert "1..9" in capsys.readouterr().err


def test_state_sizes_in_kb_keep_small_files_visible() -> None:
    assert kb(20) == "0.020 KB"
    assert kb(0) == "0.000 KB"
    assert kb(64_000) == "64.0 KB"
    assert kb(1_234_567) == "1,234.6 KB"


def completions(words: list[str]) -> list[str]:
    """What the generated bash completion offers after ``words`` (the last being typed)."""
    script = subprocess.run(
        [sys.executable, "-m", "lanvault.cli", "completion", "bash"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probe = (
        f"{script}\nCOMP_WORDS=({' '.join(shlex.quote(w) for w in words)});"
        f" COMP_CWORD={len(words) - 1}; _lanvault; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bash_completion_offers_commands_and_each_commands_options() -> None:
    assert completions(["lanvault", "bac"]) == ["backup"]
    assert set(completions(["lanvault", "s"])) == {"simulate", "snapshots", "state", "status"}
    assert completions(["lanvault", "backup", "--deg"]) == ["--degree"]
    assert "--exclude-caches" in completions(["lanvault", "backup", "--exclude"])
    assert completions(["lanvault", "--json", "restore", "--t"]) == ["--to"]


def test_the_man_page_names_every_command_and_option() -> None:
    parser = build_parser()
    page = subprocess.run(
        [sys.executable, "-m", "lanvault.cli", "man"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert page.startswith(".TH LANVAULT 1")
    for name, command in parser.commands.items():
        if name in ("completion", "man"):
            continue
        assert f".SS lanvault {name}" in page.replace("\\-", "-"), name
        for action in command._actions:
            for option in action.option_strings:
                if action.help != argparse.SUPPRESS and option not in ("-h", "--help"):
                    assert option.replace("-", "\\-") in page, (name, option)


def test_status_names_what_runs_now(capsys: pytest.CaptureFixture[str]) -> None:
    from lanvault.commands import print_status

    running = {"kind": "restore", "what": "/home/u/docs", "unit": "files", "elapsed": 12.4}
    counts = {"files_done": 3, "files_total": 10, "bytes_done": 2_500_000, "bytes_total": 0}
    print_status(
        {
            "nodes": [],
            "under_replicated_chunks": 0,
            "pending_backlog": 0,
            "scrub_bad_copies": 0,
            "running": [running | counts],
        }
    )
    assert "running: restore /home/u/docs: 3 of 10 files, 2.5 MB, 12 s" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            {"files": 1, "chunks": 1, "pending_holders": 1},
            "deleted 1 file (1 chunk) from every holder; 1 offline holder will delete when it"
            " is back",
        ),
        (
            {"files": 3, "chunks": 7, "pending_holders": 2},
            "deleted 3 files (7 chunks) from every holder; 2 offline holders will delete when"
            " they are back",
        ),
        (
            {"files": 2, "chunks": 0, "pending_holders": 0},
            "deleted 2 files (0 chunks) from every holder",
        ),
    ],
)
def test_delete_says_its_counts_with_their_plurals(
    answer: dict[str, int],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import lanvault.backups as backups
    from lanvault.state import StateDir

    monkeypatch.setattr(backups, "request", lambda *args, **kwargs: answer)
    args = argparse.Namespace(path=tmp_path / "gone", json=False)
    assert backups.cmd_delete(args, StateDir(tmp_path / "state")) == 0
    assert capsys.readouterr().out.strip() == said


def test_simulate_compares_schemes_and_says_a_bad_code_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["simulate", "--trials", "10", "--degree", "2", "--code", "2-of-4", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    schemes = {s["scheme"]: s for s in data["schemes"]}
    assert set(schemes) == {"degree 2", "2-of-4"}
    assert schemes["2-of-4"]["stored"] == 2.0 and schemes["degree 2"]["stored"] == 2.0
    assert 0 <= schemes["degree 2"]["p_loss"] <= 1 and data["trials"] == 10
    with pytest.raises(SystemExit) as bad:
        main(["simulate", "--code", "4-of-2"])
    assert bad.value.code == 2
    assert "a code like 2-of-4" in capsys.readouterr().err
    assert main(["simulate", "--degree", "12", "--desktops", "16", "--laptops", "0"]) == 2
    assert "degrees are 1..9" in capsys.readouterr().err
    assert main(["simulate", "--degree", "9", "--desktops", "3", "--laptops", "0"]) == 2
    assert "degree 9 needs 9 computers and the network has 3" in capsys.readouterr().err


def test_status_says_what_it_observed_of_each_peers_presence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lanvault.commands import print_status

    def node(node_id: int, **extra: object) -> dict[str, object]:
        return {
            "id": node_id,
            "address": f"10.0.0.{node_id}:7420",
            "computer": f"pc{node_id}",
            "up": True,
            "capacity_bytes": 10**9,
            "used_bytes": 0,
            "free_bytes": 10**9,
            **extra,
        }

    day = 86400.0
    print_status(
        {
            "nodes": [
                node(1, self=True),
                node(2, observed_s=3 * day, uptime=0.75, times_away=4, away_s=0.75 * day),
                node(3, observed_s=7200, uptime=1.0, times_away=0, away_s=0.0),
                node(4, observed_s=600, uptime=0.5, times_away=1, away_s=300.0),
            ],
            "under_replicated_chunks": 0,
            "pending_backlog": 0,
            "scrub_bad_copies": 0,
        }
    )
    out = capsys.readouterr().out
    assert "up 75.0% of the 3.0 days this node has seen it, away 4 times for 18.0 h in all" in out
    assert "up 100.0% of the 2.0 h this node has seen it, never away" in out
    assert out.count("this node has seen it") == 2  # not for itself, nor after ten minutes


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["backup", "x", "--code", "4-of-2"], "a code needs 2 <= K < N <= 16"),
        (["backup", "x", "--code", "1-of-3"], "1-of-3 is 3 copies: use a degree of 3"),
        (["backup", "x", "--code", "2-of-17"], "a code needs 2 <= K < N <= 16"),
        (["backup", "x", "--code", "two"], "write K-of-N, for example 2-of-4"),
        (["backup", "x", "--code", "2-of-4", "--degree", "2"], "not allowed with argument"),
        (["degree", "x", "3-of-3"], "a code needs 2 <= K < N <= 16"),
    ],
)
def test_a_bad_code_is_refused_in_one_line_before_anything_is_done(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--dir", str(tmp_path / "no-node")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert not (tmp_path / "no-node").exists()


def test_degree_sets_a_code_that_the_mount_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "Videos"
    folder.mkdir()
    state = ["--dir", str(tmp_path / "no-node")]
    assert main(["degree", str(folder), "2-of-4", *state]) == 0
    assert "code 2-of-4 for the new versions of its files" in capsys.readouterr().out
    assert os.getxattr(folder, DEGREE_XATTR) == b"2-of-4"
    assert degree_from_xattrs(str(tmp_path), "Videos/clip.mp4", 2) == Code(2, 4).as_degree()
    os.setxattr(folder, DEGREE_XATTR, b"nonsense")  # set by hand: ignored, the default holds
    assert degree_from_xattrs(str(tmp_path), "Videos/clip.mp4", 2) == 2
