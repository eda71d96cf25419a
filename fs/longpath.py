"""Reaching entries whose path from SOURCE's top is longer than PATH_MAX.

A program working inside a deep folder (relative to its current folder, or to a folder
descriptor) can make paths far longer than PATH_MAX (4096 bytes) from the top, while each of
its own calls stays short. The mount and the catch-up scan reach such entries one piece at a
time: folders are opened (``O_PATH``) a few components per step, each step shorter than
``PATH_ROOM``, and each resolved exactly as the whole path would be.
"""

from __future__ import annotations

import errno
import os

PATH_ROOM = 3072  # bytes of a path handed to one call (PATH_MAX is 4096)


def is_long(path: str) -> bool:
    return len(os.fsencode(path)) >= PATH_ROOM


def open_folder(base_fd: int, path: str) -> int:
    """A new ``O_PATH`` descriptor of the folder ``path`` below ``base_fd`` ('' for itself)."""
    fd = base_fd
    parts = [p for p in path.split("/") if p]
    try:
        while parts:
            step: list[str] = []
            while parts and len(os.fsencode("/".join([*step, parts[0]]))) < PATH_ROOM:
                step.append(parts.pop(0))
            if not step:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), parts[0])
            inner = os.open("/".join(step), os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = inner
    except BaseException:
        if fd != base_fd:
            os.close(fd)
        raise
    return fd if fd != base_fd else os.open(".", os.O_PATH | os.O_DIRECTORY, dir_fd=base_fd)


def open_beneath(base_fd: int, path: str, flags: int) -> int:
    """``os.open(path, flags, dir_fd=base_fd)``, for a ``path`` of any length."""
    if not is_long(path):
        return os.open(path, flags, dir_fd=base_fd)
    parent, _, name = path.rpartition("/")
    folder = open_folder(base_fd, parent)
    try:
        return os.open(name, flags, dir_fd=folder)
    finally:
        os.close(folder)
