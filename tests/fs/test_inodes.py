"""The mount's inode table against a model: the brute-force scan it replaced (every known inode
looked at on each unlink and rename), run side by side on random operations. Where the scan
let two inodes keep one path (a name replaced outside the mount), the table keeps only the
newest, and a rename over a folder forgets what was known below it too."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fs.inodes import InodeTable

ROOT = 1
PATHS = ["a", "a/b", "a/b/c", "a/x", "d", "d/e", "d/e/f", "g"]
INODES = [2, 3, 4, 5, 6]


class Model:
    """What the table must hold: inode -> paths, a path naming one inode at a time."""

    def __init__(self) -> None:
        self.paths: dict[int, set[str]] = {ROOT: {""}}

    def remember(self, ino: int, path: str) -> None:
        for other, names in self.paths.items():
            if other != ino:
                names.discard(path)
        self.paths.setdefault(ino, set()).add(path)

    def forget_path(self, path: str) -> None:
        for names in self.paths.values():
            names.discard(path)

    def moved(self, old: str, new: str) -> None:
        for names in self.paths.values():  # what was at ``new`` (an empty folder at most)
            for path in list(names):
                if path == new or path.startswith(new + "/"):
                    names.discard(path)
        prefix = old + "/"
        for names in self.paths.values():
            for path in list(names):
                if path == old:
                    names.discard(path)
                    names.add(new)
                elif path.startswith(prefix):
                    names.discard(path)
                    names.add(new + path[len(old) :])

    def drop(self, ino: int) -> None:
        self.paths.pop(ino, None)


class InodeTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = InodeTable(ROOT)
        self.model = Model()

    @rule(ino=st.sampled_from(INODES), path=st.sampled_from(PATHS))
    def remember(self, ino: int, path: str) -> None:
        self.table.remember(ino, path)
        self.model.remember(ino, path)

    @rule(path=st.sampled_from(PATHS))
    def forget_path(self, path: str) -> None:
        self.table.forget_path(path)
        self.model.forget_path(path)

    @rule(old=st.sampled_from(PATHS), new=st.sampled_from(PATHS))
    def moved(self, old: str, new: str) -> None:
        if old == new or new.startswith(old + "/"):
            return  # the kernel never asks to move a folder into itself
        self.table.moved(old, new)
        self.model.moved(old, new)

    @rule(ino=st.sampled_from(INODES))
    def drop(self, ino: int) -> None:
        self.table.drop(ino)
        self.model.drop(ino)

    @invariant()
    def same_paths(self) -> None:
        for ino, names in self.model.paths.items():
            entry = self.table.get(ino)
            assert entry is not None and entry.paths == names, (ino, names, entry)
        assert set(self.table) == set(self.model.paths)

    @invariant()
    def each_path_finds_its_inode(self) -> None:
        for ino, names in self.model.paths.items():
            for path in names:
                assert self.table.inode_of(path) == ino
        named = {p for names in self.model.paths.values() for p in names}
        for path in PATHS:
            if path not in named:
                assert self.table.inode_of(path) is None


InodeTableMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40)
test_inode_table_matches_the_scan_it_replaced = InodeTableMachine.TestCase
