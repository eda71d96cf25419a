"""Which 64,000-byte chunks of which files were written since their last version."""

from __future__ import annotations

from dataclasses import dataclass, field

from chunkstore.chunking import CHUNK_SIZE, chunks_touching


@dataclass(slots=True)
class DirtyFile:
    chunks: set[int] = field(default_factory=set)
    truncated_to: int | None = None  # smallest size the file was truncated to, if any
    written: bool = False

    def write(self, offset: int, length: int) -> None:
        self.chunks.update(chunks_touching(offset, length))
        self.written = True

    def truncate(self, size: int) -> None:
        # The chunk holding the new end changes, and every chunk after it disappears.
        self.chunks.add(size // CHUNK_SIZE)
        self.truncated_to = size if self.truncated_to is None else min(self.truncated_to, size)
        self.written = True


class DirtyTracker:
    """Per-inode dirty chunk sets, taken whole when a version is cut."""

    def __init__(self) -> None:
        self._files: dict[int, DirtyFile] = {}

    def write(self, inode: int, offset: int, length: int) -> None:
        self._files.setdefault(inode, DirtyFile()).write(offset, length)

    def truncate(self, inode: int, size: int) -> None:
        self._files.setdefault(inode, DirtyFile()).truncate(size)

    def is_dirty(self, inode: int) -> bool:
        entry = self._files.get(inode)
        return entry is not None and entry.written

    def take(self, inode: int) -> DirtyFile | None:
        """The dirty state of ``inode``, which is then clean."""
        return self._files.pop(inode, None)

    def restore(self, inode: int, changes: DirtyFile) -> None:
        """A cut failed: its changes are dirty again (with whatever was written since)."""
        entry = self._files.setdefault(inode, DirtyFile())
        entry.chunks |= changes.chunks
        if changes.truncated_to is not None:
            entry.truncated_to = (
                changes.truncated_to
                if entry.truncated_to is None
                else min(entry.truncated_to, changes.truncated_to)
            )
        entry.written = True

    def forget(self, inode: int) -> None:
        self._files.pop(inode, None)
