"""What another local user does in the attack tests (run as root: "another user" is a uid)."""

from __future__ import annotations

import os
from pathlib import Path

MALLORY = 1000  # the other local user


def plant_in_shared_folder(folder: Path, name: str) -> Path:
    """A 1777 folder in which MALLORY pre-created ``name``, empty and writable by anyone."""
    folder.mkdir()
    folder.chmod(0o1777)
    planted = folder / name
    planted.write_bytes(b"")
    os.chown(planted, MALLORY, MALLORY)
    planted.chmod(0o666)
    return planted
