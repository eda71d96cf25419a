"""Shell completion (bash; zsh through bashcompinit) and a man page, generated from the
parser itself, so they never disagree with ``--help``; and ``--version``."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        o
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for o in action.option_strings
    )


def bash_completion(commands: Mapping[str, argparse.ArgumentParser], prog: str = "lanvault") -> str:
    """A bash completion script: commands, each command's options, file names elsewhere."""
    cases = "\n".join(
        f'        {name}) opts="{" ".join(_options(command))}" ;;'
        for name, command in sorted(commands.items())
    )
    return f"""# bash completion for {prog} (generated: {prog} completion bash)
_{prog}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command="" word opts
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case $word in -*) ;; *) command=$word; break ;; esac
    done
    if [ -z "$command" ]; then
        COMPREPLY=($(compgen -W "{" ".join(sorted(commands))} --help --version" -- "$cur"))
        return
    fi
    case $command in
{cases}
        *) opts="" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _{prog} {prog}
"""


def zsh_completion(commands: Mapping[str, argparse.ArgumentParser], prog: str = "lanvault") -> str:
    """The bash script through zsh's bashcompinit (what zsh users put in their .zshrc)."""
    return (
        f"# zsh completion for {prog} (generated: {prog} completion zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_completion(commands, prog)
    )


def _roff(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-").replace("\n.", "\n\\&.")


def man_page(
    parser: argparse.ArgumentParser, commands: Mapping[str, argparse.ArgumentParser]
) -> str:
    """lanvault(1) in roff: every command, its arguments and options with their help."""
    today = datetime.date.today().isoformat()
    out = [
        f'.TH LANVAULT 1 "{today}" "lanvault" "User Commands"',
        ".SH NAME",
        "lanvault \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        ".B lanvault",
        "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH COMMANDS",
    ]
    for name, command in commands.items():
        out += [".SS " + _roff(f"lanvault {name}"), _roff(command.description or "")]
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            label = ", ".join(action.option_strings) or str(action.metavar or action.dest)
            if action.option_strings and action.nargs != 0:
                label += " " + str(action.metavar or action.dest.upper())
            out += [".TP", "\\fB" + _roff(str(label)) + "\\fR", _roff(action.help or "")]
    out += [
        ".SH EXIT STATUS",
        "0 on success, 1 on a failure the message explains, 2 on wrong usage.",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBLANVAULT_DIR\\fR",
        "the state directory, instead of \\-\\-dir",
        ".TP",
        "\\fBLANVAULT_PASSPHRASE\\fR",
        "the passphrase, for scripts (else asked on the terminal or read with \\-\\-passphrase\\-file)",
    ]
    return "\n".join(out) + "\n"


class ShowVersion(argparse.Action):
    """``--version``: the version is looked up only when asked for (importlib.metadata alone
    costs every command 18 ms of start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"lanvault {version()}")
        parser.exit()


def version() -> str:
    """The installed package's version; the source tree's when run from a checkout."""
    from importlib import metadata

    try:
        return metadata.version("lanvault")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        for line in pyproject.read_text().splitlines() if pyproject.exists() else []:
            if line.startswith("version = "):
                return line.split("=", 1)[1].strip().strip('"')
        return "unknown"
