"""What a backup or a restore did, as it goes: counts a progress line and the final report show."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from chunkstore.catalog import FileVersion, version_key


class BackupError(Exception):
    """A backup failed: a file could not be read, or changed too often while it was read."""


class BackupPending(BackupError):
    """Recorded, but some chunks are short of their degree: the node sends the missing copies
    when holders return (the version is pending until then, and says so)."""


class EntryPending(BackupPending):
    """One entry recorded short of its degree (``backup_path`` sums them up)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


class RestoreError(Exception):
    """A file could not be restored (no holder had a valid copy of some chunk)."""


class DestinationError(RestoreError):
    """The destination refused a write (full, read-only, gone): a restore stops there rather
    than fail the same way for every file after it."""


@dataclass(slots=True)
class Progress:
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_sent: int = 0
    bytes_read: int = 0  # read from the files (an unmodified file is not read)
    chunks_skipped: int = 0
    entries_skipped: list[str] = field(default_factory=list)  # FIFOs, sockets, devices
    links: int = 0  # symlinks backed up (as links)
    folders: int = 0  # folders backed up (their modes and times; empty ones too)
    links_not_made: list[str] = field(default_factory=list)  # a real folder is there now
    hard_links: int = 0  # second names of a file restored (as links, not copies)
    xattrs_refused: list[str] = field(default_factory=list)  # "path: name" the destination refused
    # What a backup found, over files, symlinks and folders (as restic reports it).
    new: int = 0  # no live version of the path before
    changed: int = 0  # content or restorable metadata differ from the newest version
    unmodified: int = 0  # the newest version is exactly this (nothing recorded)
    removed: int = 0  # entries backed up before that the folder no longer holds
    # Entries recorded but short of their degree (path -> why): the node makes the missing
    # copies when holders return; until then they are pending, not backed up.
    pending: dict[str, str] = field(default_factory=dict)
    # Bytes of those copies that did not fit in the store kept aside (``UNSENT_BYTES``): they
    # can be made only while their files stay unchanged.
    bytes_not_kept: int = 0

    def note(self, before: FileVersion | None, after: FileVersion) -> None:
        """Count one backed-up entry by what it was against the newest version before."""
        if before is None:
            self.new += 1
        elif version_key(before) != version_key(after):
            self.changed += 1
        else:
            self.unmodified += 1


ProgressFn = Callable[[Progress], None]
