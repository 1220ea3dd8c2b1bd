"""A directory on local disk (or a shared filesystem) as storage.

Every path is resolved (`os.path.realpath`) and must lie inside the root: a key
that leads through a symlink to anywhere else (a file linked to /etc/passwd, a
run directory linked out of the root, a link inside the root pointing outside)
is refused for reading, writing and deleting (`OutsideRootError`) and left out
of listings. Files are created with mode 0644 less the process umask, like any
file a program writes, so a results directory can be shared read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from storage_backends.base import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageUnavailableError,
    validate_folder_prefix,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

#: The mode of a stored file before the umask applies (what open() would give it).
FILE_MODE = 0o644


class OutsideRootError(InvalidKeyError):
    """A key whose path resolves (through a symlink) outside the storage root."""


_umask_lock = threading.Lock()


def _current_umask() -> int:
    # The only portable way to read the umask is to set it; done under a lock and restored at once.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


class LocalStorage(Storage):
    """Objects are files under `root`; writes go to a temp file, fsync, then rename.

    With ``fsync=False`` (a bulk copy such as `tokenlens fetch`, which syncs the filesystem in
    batches itself) writes are still atomic for readers, but reach the disk when the system
    flushes them: after a crash a recent file may be missing or short.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(os.path.realpath(Path(root).expanduser()))
        self.url = str(self.root)
        self.fsync = fsync
        self._file_mode = FILE_MODE & ~_current_umask()

    # paths -------------------------------------------------------------------------------------------------
    def _inside(self, path: str | os.PathLike[str]) -> bool:
        real = os.path.realpath(path)
        root = str(self.root)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _path(self, key: str) -> Path:
        """The path of `key`; `OutsideRootError` if it resolves outside the root (through a symlink)."""
        path = self.root.joinpath(*validate_key(key).split("/"))
        if not self._inside(path):
            raise OutsideRootError(f"{key} resolves outside {self.url} (a symbolic link); refusing to follow it")
        return path

    def _parent_for_writing(self, key: str) -> Path:
        """The directory a new `key` goes in, created if needed, never through a link out of the root."""
        path = self.root.joinpath(*validate_key(key).split("/"))
        existing = path.parent
        while not existing.exists() and existing != self.root and existing != existing.parent:
            existing = existing.parent
        if not self._inside(existing):
            raise OutsideRootError(f"{key} resolves outside {self.url} (a symbolic link); refusing to write there")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or exc
            raise StorageUnavailableError(f"can't create {path.parent} ({problem}); check --results") from None
        if not self._inside(path.parent):  # a link swapped in while we looked
            raise OutsideRootError(f"{key} resolves outside {self.url} (a symbolic link); refusing to write there")
        return path

    # the contract ------------------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> None:
        # A file keeps no content type or encoding: readers tell a result's format by its first bytes.
        path = self._parent_for_writing(key)
        if path.is_symlink() and not self._inside(path):
            raise OutsideRootError(f"{key} is a symbolic link out of {self.url}; refusing to write through it")
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            problem = exc.strerror or exc
            raise StorageUnavailableError(f"can't write in {path.parent} ({problem}); check --results") from None
        try:
            with os.fdopen(fd, "wb") as tmp:
                # mkstemp makes the file private (0600); a result is as readable as any file the user writes.
                os.fchmod(tmp.fileno(), self._file_mode)
                tmp.write(data)
                tmp.flush()
                if self.fsync:
                    os.fsync(tmp.fileno())
            if if_absent:
                # link() fails if the target exists, atomically: exactly one
                # concurrent create-only writer wins, as on S3 with If-None-Match.
                try:
                    os.link(tmp_name, path)
                except FileExistsError:
                    raise AlreadyExistsError(f"{key} already exists in {self.url}") from None
            else:
                os.replace(tmp_name, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageUnavailableError(f"can't write {key} in {self.url} ({exc.strerror or exc})") from None
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError(f"{key} not found in {self.url}") from None
        except PermissionError:
            raise StorageUnavailableError(f"{key} in {self.url} is not readable (permission denied)") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"a byte range needs start >= 0 and length >= 0, not {start} and {length}")
        try:
            with self._path(key).open("rb") as stored:
                stored.seek(start)
                return stored.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError(f"{key} not found in {self.url}") from None
        except PermissionError:
            raise StorageUnavailableError(f"{key} in {self.url} is not readable (permission denied)") from None

    def md5(self, key: str) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with self._path(key).open("rb") as stored:
                for block in iter(lambda: stored.read(1 << 20), b""):
                    digest.update(block)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError(f"{key} not found in {self.url}") from None
        return digest.hexdigest()

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except OutsideRootError:
            return False

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if not self.root.is_dir():
            return
        # Walk only the deepest directory the prefix names, not the whole tree.
        start_parts = prefix.split("/")[:-1]
        start = self.root.joinpath(*start_parts) if start_parts else self.root
        if not start.is_dir() or not self._inside(start):
            return
        found: list[ObjectInfo] = []
        root = str(self.root)
        # One scandir per directory, plain strings, and a file's size from its directory entry's lstat:
        # listing 100,000 results costs a tenth of what os.walk with Path objects did.
        folders = [str(start)]
        while folders:
            directory = folders.pop()
            folder = "" if directory == root else os.path.relpath(directory, root).replace(os.sep, "/")
            try:
                entries = os.scandir(directory)
            except OSError:  # removed since it was seen, or unreadable: as os.walk, passed over
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
                            continue
                        linked = entry.is_symlink()
                        if linked and entry.is_dir():
                            continue  # a linked directory is never walked into or listed, wherever it points
                        if name.startswith(".") and name.endswith(".tmp"):
                            continue  # an in-flight atomic write
                        key = f"{folder}/{name}" if folder else name
                        if not key.startswith(prefix):
                            continue
                        if linked and not self._inside(entry.path):
                            log.warning("ignoring %s: a symbolic link out of %s", entry.path, self.url)
                            continue
                        size = os.stat(entry.path).st_size if linked else entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed since the listing saw it (or a link to nothing)
                        continue
                    found.append(ObjectInfo(key=key, size=size))
        yield from sorted(found, key=lambda info: info.key)

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        # One scandir of the folder the prefix names: finding runs never walks their results.
        folder = self.root.joinpath(*validate_folder_prefix(prefix).split("/")[:-1]) if prefix else self.root
        if not folder.is_dir() or not self._inside(folder):
            return
        names = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
            for entry in entries:
                # follow_symlinks=False: a linked directory is never listed, wherever it points.
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    names.append(entry.name)
        yield from sorted(names)

    def delete(self, key: str) -> None:
        path = self.root.joinpath(*validate_key(key).split("/"))
        if not self._inside(path.parent):
            raise OutsideRootError(f"{key} resolves outside {self.url} (a symbolic link); refusing to delete there")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a link is removed itself, never what it points to

    def check(self, *, for_writing: bool = True) -> None:
        if not for_writing:
            if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
                raise StorageUnavailableError(
                    f"results directory {self.root} does not exist or is not readable; "
                    "pass --results with the directory (or URL) the run wrote to"
                )
            return
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        problem = "not a directory" if not probe.is_dir() else _cannot_create_in(probe)
        if problem is not None:
            raise StorageUnavailableError(
                f"results directory {self.root} is not writable (nearest existing parent: {probe}: {problem}); "
                "pass --results with a directory you can write to"
            )


def _cannot_create_in(directory: Path) -> str | None:
    """Why nothing can be created in `directory` (None: something can), found by trying (access() can't tell
    for /proc, read-only mounts, ...); the probe directory is removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".tokenlens-probe-"))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
