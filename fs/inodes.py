"""The mount's inode table: the inodes the kernel knows, the paths each is known by (a file
with hard links has several), and an index from path to inode and from a folder to its known
children, so that an unlink, a rename or a folder's move touches only the entries concerned
(it scanned every known inode before)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio


@dataclass(slots=True)
class Inode:
    paths: set[str] = field(default_factory=set)
    lookups: int = 0
    open_handles: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


def _parent(path: str) -> str:
    return posixpath.dirname(path)  # "" is SOURCE's top


class InodeTable:
    def __init__(self, root: int) -> None:
        self._entries: dict[int, Inode] = {root: Inode(paths={""})}
        self._by_path: dict[str, int] = {"": root}
        self._children: dict[str, set[str]] = {}  # folder path -> known child paths

    def get(self, ino: int) -> Inode | None:
        return self._entries.get(ino)

    def __getitem__(self, ino: int) -> Inode:
        return self._entries[ino]

    def __contains__(self, ino: int) -> bool:
        return ino in self._entries

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def ensure(self, ino: int) -> Inode:
        """The entry of ``ino``, made if the kernel did not know it yet."""
        entry = self._entries.get(ino)
        if entry is None:
            entry = self._entries[ino] = Inode()
        return entry

    def remember(self, ino: int, path: str) -> Inode:
        """``ino`` is (also) known by ``path``; a path names one inode at a time."""
        previous = self._by_path.get(path)
        if previous is not None and previous != ino:
            self._unname(previous, path)
        entry = self.ensure(ino)
        entry.paths.add(path)
        self._by_path[path] = ino
        child = path
        while child:  # linked to every folder above it, known or not
            siblings = self._children.setdefault(_parent(child), set())
            if child in siblings:
                break
            siblings.add(child)
            child = _parent(child)
        return entry

    def inode_of(self, path: str) -> int | None:
        return self._by_path.get(path)

    def forget_path(self, path: str) -> None:
        """Nothing is at ``path`` any more (unlinked, or replaced by a rename)."""
        ino = self._by_path.get(path)
        if ino is not None:
            self._unname(ino, path)

    def moved(self, old: str, new: str) -> None:
        """What was at ``old`` is at ``new`` now, with everything known below it; what was
        known at or below ``new`` (an empty folder's stale children at most) is forgotten."""
        for path in [new, *self._below(new)]:
            self.forget_path(path)
        names = [
            (path, self._by_path[path])
            for path in [old, *self._below(old)]
            if path in self._by_path
        ]
        for path, ino in names:
            self._unname(ino, path)
        for path, ino in names:
            self.remember(ino, new + path[len(old) :])

    def drop(self, ino: int) -> None:
        """The kernel forgot ``ino``: its entry and its names go."""
        entry = self._entries.pop(ino, None)
        if entry is None:
            return
        for path in entry.paths:
            if self._by_path.get(path) == ino:
                del self._by_path[path]
                self._prune(path)

    def _below(self, folder: str) -> list[str]:
        """Every path linked below ``folder`` (named or only on the way to one)."""
        out: list[str] = []
        pending = [folder]
        while pending:
            for child in self._children.get(pending.pop(), ()):
                out.append(child)
                pending.append(child)
        return out

    def _unname(self, ino: int, path: str) -> None:
        entry = self._entries.get(ino)
        if entry is not None:
            entry.paths.discard(path)
        if self._by_path.get(path) == ino:
            del self._by_path[path]
        self._prune(path)

    def _prune(self, path: str) -> None:
        """Unlink ``path`` and the folders above it that lead to nothing named any more."""
        while path and path not in self._by_path and not self._children.get(path):
            self._children.pop(path, None)
            parent = _parent(path)
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(path)
                if not siblings:
                    del self._children[parent]
            path = parent
