"""Where a restore writes: one anchor folder, and everything below it reached through directory
file descriptors, one component at a time, never through a symlink it did not make.

The rules (``docs/security.md``):

* The anchor is the folder the user named with ``--to`` (opened as typed: the user chose it) or,
  for an in-place restore, the folder above the path they named. On the way to an in-place anchor
  a symlink is followed only if it belongs to root or to this process's user: one another user
  made could point anywhere.
* Below the anchor no symlink is followed. Where the restore makes a folder, a symlink found in
  its place is removed first; anywhere else a symlink (or a file) where a folder must be is
  refused.
* A file is written into a new temporary file (``O_EXCL``, an unpredictable name) in its folder,
  given its owner and mode before any byte goes in, and renamed into place.
* A second name of a file (a hard link) is made as a link to the restored first name, under a
  temporary name first and renamed into place, so an existing file there is replaced whole.
* Extended attributes go onto the temporary file (or the folder) before it takes its name;
  one the destination refuses (another namespace, no permission, no support) is reported by
  name and the rest of the restore goes on.
* An interrupted restore is resumed only from a temporary file it recorded in the state
  directory and that is still that very file (device, inode, owner, one link). A file that
  someone else put under that name is never trusted.

Everything here is synchronous (called on worker threads); nothing imports trio.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from chunkstore.catalog import Xattrs, is_own_temp, own_temp_name

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own limit on symlinks in one path
_FOLDER_MODE = 0o755  # a folder the restore makes; a restored folder gets its own mode last
PARTS_KEPT = 4096  # paths whose names below the anchor are remembered (a few groups' files)


_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def flush_files(fds: list[int]) -> list[OSError | None]:
    """Make the data of the open files ``fds`` durable; the error of each file, if any.

    Many small files are flushed far faster by one ``syncfs`` of the file system they are on
    followed by an ``fdatasync`` of each (which finds nothing left to write, and reports a
    write-back error of that very file) than by an ``fsync`` of each in turn.
    """
    if _syncfs is not None:
        one_per_device: dict[int, int] = {}
        for fd in fds:
            with contextlib.suppress(OSError):  # its own fdatasync below says what is wrong
                one_per_device.setdefault(os.fstat(fd).st_dev, fd)
        for fd in one_per_device.values():
            _syncfs(fd)  # a failure shows in the fdatasync of the files it concerns
    out: list[OSError | None] = []
    for fd in fds:
        try:
            os.fdatasync(fd)
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


class UnsafeDestination(Exception):
    """The destination has a symlink or a non-folder where the restore must go through."""


def apply_xattrs(fd: int, xattrs: Xattrs) -> list[str]:
    """Set ``xattrs`` on the open file or folder ``fd``; returns the names it refused."""
    refused = []
    for name, value in xattrs:
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EINVAL):
                raise
            refused.append(name)
    return refused


def _refuse(path: str, what: str) -> UnsafeDestination:
    return UnsafeDestination(f"{path}: {what}; refusing to restore through it")


def _open_folder(dir_fd: int, name: str) -> int:
    """The folder ``name`` in ``dir_fd``, made if missing, never through a symlink (ELOOP or
    ENOTDIR then, for the caller to judge)."""
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, _FOLDER_MODE, dir_fd=dir_fd)
        return os.open(name, _DIR, dir_fd=dir_fd)


def _open_trusted(path: Path) -> int:
    """Open folder ``path`` from ``/``, following only symlinks owned by root or by us and
    making missing folders."""
    fd = os.open("/", _DIR)
    pending = [p for p in path.parts[1:]]
    walked = Path("/")
    hops = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            try:
                nxt = _open_folder(fd, name)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise _refuse(str(walked / name), "not a folder") from None
                if st.st_uid not in (0, os.geteuid()):
                    raise _refuse(
                        str(walked / name), f"a symlink owned by uid {st.st_uid}"
                    ) from None
                hops += 1
                if hops > _MAX_LINKS:
                    raise _refuse(str(walked / name), "too many symlinks") from None
                link = os.readlink(name, dir_fd=fd)
                parts = [p for p in link.split("/") if p]
                if link.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR)
                    walked = Path("/")
                pending = parts + pending
                continue
            os.close(fd)
            fd = nxt
            walked = walked / name
    except BaseException:
        os.close(fd)
        raise
    return fd


class RestoreTarget:
    """The folder a restore writes under, opened once; paths below it are reached safely."""

    def __init__(self, anchor: Path, *, as_typed: bool, resume_dir: Path) -> None:
        self.anchor = Path(os.path.normpath(anchor))
        self._resume_dir = resume_dir
        self._touched: set[tuple[str, ...]] = set()  # folders whose entries changed
        self._files: dict[tuple[str, ...], tuple[int, int]] = {}  # ours: (device, inode)
        self._parts_of: dict[str, tuple[str, ...]] = {}  # ``_parts``, for the latest paths
        # The resume records there are (an interrupted restore's, and this one's): a file
        # taking its name drops its record, and only these need it (an unlink of a record
        # that is not there cost a restore of small files a sixth of its time).
        try:
            self._records = {p.name for p in resume_dir.iterdir()}
        except FileNotFoundError:
            self._records = set()
        if as_typed:  # the user named it: follow it as the shell would
            self.anchor.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            self._fd = _open_trusted(self.anchor)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def sync(self) -> None:
        """Flush every folder this restore added entries to (each file's data was flushed
        before it took its name): after this, what was restored survives a crash."""
        for parts in sorted(self._touched, key=len, reverse=True):
            try:
                fd = self._walk(list(parts)) if parts else os.dup(self._fd)
            except (UnsafeDestination, FileNotFoundError):
                continue  # gone or replaced since: nothing of ours to flush there
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._touched.clear()

    def adopt(self, path: Path, st: os.stat_result) -> None:
        """The file at ``path`` (``st``, just checked) is this restore's, as if it wrote it."""
        self._files[tuple(self._parts(path))] = (st.st_dev, st.st_ino)

    def _touch(self, path: Path) -> None:
        self._touched.add(tuple(self._parts(path)[:-1]))

    def __enter__(self) -> RestoreTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _parts(self, path: Path) -> list[str]:
        """The names leading from the anchor to ``path``; ``UnsafeDestination`` for a path
        outside it or with an unsafe name. Remembered for the latest paths: a restored file
        asks four times (worked out each time, pathlib's parsing was a fifth of the owner's
        time in a restore of many small files)."""
        key = os.fspath(path)
        found = self._parts_of.get(key)
        if found is None:
            found = self._parts_checked(path)  # an unsafe path raises, and is never kept
            if len(self._parts_of) >= PARTS_KEPT:
                self._parts_of.clear()
            self._parts_of[key] = found
        return list(found)

    def _parts_checked(self, path: Path) -> tuple[str, ...]:
        try:
            rest = Path(os.path.normpath(path)).relative_to(self.anchor)
        except ValueError:
            raise _refuse(str(path), f"outside {self.anchor}") from None
        parts = tuple(p for p in rest.parts if p not in ("", "."))
        if any(p == ".." or "\0" in p for p in parts):
            raise _refuse(str(path), "an unsafe name")
        return parts

    def _walk(self, parts: list[str]) -> int:
        """A new descriptor of the folder ``parts`` below the anchor, making missing ones."""
        fd = os.dup(self._fd)
        here = self.anchor
        try:
            for name in parts:
                here = here / name
                try:
                    nxt = _open_folder(fd, name)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refuse(str(here), "a symlink or not a folder") from None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def parent(self, path: Path) -> Iterator[tuple[int, str]]:
        """(descriptor of the folder ``path`` is in, its name); the descriptor is closed after."""
        parts = self._parts(path)
        if not parts:
            raise _refuse(str(path), "the restore's own anchor")
        fd = self._walk(parts[:-1])
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def parents(self) -> Iterator[Callable[[Path], tuple[int, str]]]:
        """``parent`` for many paths: each folder is opened once; all are closed after."""
        opened: dict[tuple[str, ...], int] = {}

        def parent_of(path: Path) -> tuple[int, str]:
            parts = self._parts(path)
            if not parts:
                raise _refuse(str(path), "the restore's own anchor")
            folder = tuple(parts[:-1])
            fd = opened.get(folder)
            if fd is None:
                fd = opened[folder] = self._walk(parts[:-1])
            return fd, parts[-1]

        try:
            yield parent_of
        finally:
            for fd in opened.values():
                os.close(fd)

    def lstat(
        self, path: Path, parent_of: Callable[[Path], tuple[int, str]] | None = None
    ) -> os.stat_result | None:
        """``path``'s own status (None if nothing is there); ``parent_of`` from ``parents``
        opens each folder once for many paths."""
        try:
            if parent_of is not None:
                fd, name = parent_of(path)
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            with self.parent(path) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, UnsafeDestination):
            return None

    def make_folder(self, path: Path) -> None:
        """A folder at ``path``; a symlink or file there goes first (nothing is written
        through a link)."""
        if not self._parts(path):
            return  # the anchor itself
        with self.parent(path) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=fd)
                st = None
            if st is None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, _FOLDER_MODE, dir_fd=fd)
                self._touch(path)

    def make_symlink(self, path: Path, target: str, mtime_ns: int, *, replace_folder: bool) -> bool:
        """A symlink at ``path``; False if a real folder is there and may not be replaced."""
        with self.parent(path) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    if not replace_folder:
                        return False
                    shutil.rmtree(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            os.symlink(target, name, dir_fd=fd)
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
            self._touch(path)
            return True

    def finish_folder(
        self,
        path: Path,
        mode: int,
        mtime_ns: int,
        owner: tuple[int, int] | None = None,
        xattrs: Xattrs = (),
    ) -> list[str]:
        """Give the folder at ``path`` its owner, extended attributes, mode and times (if it
        is a folder); returns the attributes it refused."""
        parts = self._parts(path)
        try:
            fd = self._walk(parts) if parts else os.dup(self._fd)
        except UnsafeDestination:
            return []
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            refused = apply_xattrs(fd, xattrs)
            os.fchmod(fd, stat.S_IMODE(mode))
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            return refused
        finally:
            os.close(fd)

    def make_hard_link(self, existing: Path, path: Path) -> bool:
        """``path`` as a second name of the restored file at ``existing``; False if a real
        folder is there (it is left alone)."""
        with self.parent(existing) as (src_fd, src_name), self.parent(path) as (fd, name):
            ours = self._files.get(tuple(self._parts(existing)))
            try:
                source = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                ours = None
            if ours is None or ours != (source.st_dev, source.st_ino):  # replaced: never linked
                raise UnsafeDestination(f"{existing} is not the file this restore wrote")
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
                    return True  # made by an earlier attempt
                if stat.S_ISDIR(st.st_mode):
                    return False
            tmp = own_temp_name(name)
            os.link(src_name, tmp, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
            try:
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
                raise
            self._touch(path)
            return True

    # -- files ---------------------------------------------------------------------------

    @staticmethod
    def _record_name(dest: Path) -> str:
        return hashlib.sha256(os.fsencode(dest)).hexdigest()[:32] + ".json"

    def partial_file(
        self,
        dir_fd: int,
        name: str,
        dest: Path,
        mode: int,
        owner: tuple[int, int],
        resumable: bool = True,
    ) -> tuple[int, str, bool]:
        """(descriptor, name, resumed) of the temporary file that becomes ``dest``: the one an
        interrupted restore recorded if it is still that very file, else a new one, owned and
        with ``mode`` before anything is written (and recorded, if ``resumable``: a file of
        one chunk has nothing to resume)."""
        record = self._resume_dir / self._record_name(dest) if resumable else None
        uid = owner[0] if os.geteuid() == 0 else os.geteuid()
        found = self._recorded(dir_fd, name, record, uid) if record is not None else None
        if found is not None:
            return found[0], found[1], True
        tmp = own_temp_name(name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, *owner)
            # The final permission bits (never more for group and others), and read-write for
            # the owner so that a resume can open it again; setuid and the like come last.
            os.fchmod(fd, (stat.S_IMODE(mode) & 0o777) | 0o600)
            if record is not None:
                st = os.fstat(fd)
                self._resume_dir.mkdir(mode=0o700, exist_ok=True)
                staging = record.with_suffix(".tmp")
                staging.write_text(
                    json.dumps({"dest": str(dest), "name": tmp, "dev": st.st_dev, "ino": st.st_ino})
                )
                staging.replace(record)
                self._records.add(record.name)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        return fd, tmp, False

    def _recorded(self, dir_fd: int, name: str, record: Path, uid: int) -> tuple[int, str] | None:
        """(descriptor, name) of the temporary file an interrupted restore recorded for this
        destination, if it is still that very file (one someone else put there is never
        trusted, never touched)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(record.read_text())
            tmp = str(saved["name"])
            if "/" not in tmp and is_own_temp(tmp, name):
                fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                st = os.fstat(fd)
                if (
                    stat.S_ISREG(st.st_mode)
                    and st.st_nlink == 1
                    and (st.st_dev, st.st_ino) == (saved["dev"], saved["ino"])
                    and st.st_uid == uid
                ):
                    return fd, tmp
                os.close(fd)  # not the file we made: never trusted, never touched
        return None

    def publish(
        self,
        dir_fd: int,
        fd: int,
        tmp: str,
        name: str,
        dest: Path,
        mode: int,
        mtime_ns: int,
        xattrs: Xattrs = (),
    ) -> list[str]:
        """Make the finished temporary file ``dest``: extended attributes, mode, fsync, times,
        rename (its folder is flushed by ``sync``, once for all its files). Returns the
        extended attributes the destination refused."""
        refused = self.prepare(fd, mode, xattrs)
        os.fsync(fd)
        self.commit(dir_fd, fd, tmp, name, dest, mtime_ns)
        return refused

    def prepare(self, fd: int, mode: int, xattrs: Xattrs) -> list[str]:
        """Give the written temporary file its extended attributes and mode (before it is
        flushed); the attributes the destination refused."""
        refused = apply_xattrs(fd, xattrs)
        os.fchmod(fd, stat.S_IMODE(mode))
        return refused

    def commit(self, dir_fd: int, fd: int, tmp: str, name: str, dest: Path, mtime_ns: int) -> None:
        """The prepared and flushed temporary file takes its times and then its name."""
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self.adopt(dest, os.fstat(fd))
        self._touch(dest)
        record = self._record_name(dest)
        if record in self._records:
            (self._resume_dir / record).unlink(missing_ok=True)
            self._records.discard(record)
