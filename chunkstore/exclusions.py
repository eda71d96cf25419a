"""What a backup leaves out: patterns, cache folders, other file systems (as restic and Borg
offer them).

A pattern is matched against an entry's absolute path:

* one without ``/`` matches any single name in the path (``*.o``, ``node_modules``, ``.cache``);
* one starting with ``/`` matches from the top (``/home/ann/Downloads``);
* any other matches the end of the path, at a name boundary (``build/tmp`` matches
  ``/src/build/tmp``, not ``/src/rebuild/tmp``).

``*`` and ``?`` match within one name, ``**`` across names, ``[...]`` one character of a set.
A folder that matches is left out whole (it is not read). A cache folder is one holding a
``CACHEDIR.TAG`` whose first bytes are the standard signature (https://bford.info/cachedir/):
with ``exclude_caches`` its contents are left out, the folder and its tag kept. With
``one_file_system`` a folder on another file system than the backup's root is kept (empty),
its contents left out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


class PatternError(ValueError):
    """A pattern that cannot be used (said in one line)."""


def _translate(pattern: str) -> str:
    """A glob pattern as a regular expression, ``*`` and ``?`` within one name."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise PatternError(f"pattern {pattern!r}: '[' is never closed")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression an exclusion pattern stands for (see the module's rules)."""
    text = pattern.strip()
    if not text:
        raise PatternError("an empty exclusion pattern would leave out nothing")
    text = text.rstrip("/") or "/"
    body = _translate(text)
    # From the top, or else at any name boundary (a bare name is any one name in the path).
    return re.compile(body if text.startswith("/") else f"(?:.*/)?{body}")


def read_pattern_file(path: str) -> list[str]:
    """Patterns from a file: one per line; blank lines and lines starting with ``#`` skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise PatternError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PatternError(f"{path}: not a text file of patterns") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Exclusions:
    patterns: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    one_file_system: bool = False
    _compiled: list[re.Pattern[str]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiled = [compile_pattern(p) for p in self.patterns]

    @classmethod
    def from_request(cls, request: dict[str, object]) -> Exclusions:
        """The exclusions a control request names (``exclude``, ``exclude_caches``,
        ``one_file_system``); ``PatternError`` for a bad one."""
        patterns = request.get("exclude") or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise PatternError("exclude must be a list of patterns")
        return cls(
            list(patterns),
            bool(request.get("exclude_caches")),
            bool(request.get("one_file_system")),
        )

    def __bool__(self) -> bool:
        return bool(self.patterns or self.exclude_caches or self.one_file_system)

    def excludes(self, path: str) -> bool:
        """Whether the entry at absolute ``path`` is left out by a pattern."""
        return any(c.fullmatch(path) for c in self._compiled)

    def keeps_contents(self, folder: str, st: os.stat_result, root_dev: int) -> bool:
        """Whether a folder kept by the patterns is read (not a cache folder, when those are
        left out; on the root's file system, with ``one_file_system``)."""
        if self.one_file_system and st.st_dev != root_dev:
            return False
        return not (self.exclude_caches and is_cache_folder(folder))

    def describe(self) -> str:
        parts = [f"{len(self.patterns)} pattern{'' if len(self.patterns) == 1 else 's'}"]
        if self.exclude_caches:
            parts.append("cache folders")
        if self.one_file_system:
            parts.append("other file systems")
        return ", ".join(parts)


def is_cache_folder(folder: str) -> bool:
    try:
        with open(os.path.join(folder, CACHEDIR_TAG), "rb") as handle:
            return handle.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False
