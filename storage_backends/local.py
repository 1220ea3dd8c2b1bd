"""A directory on local disk (or a shared filesystem) as storage."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from storage_backends.base import (
    AlreadyExistsError,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageUnavailableError,
    validate_key,
    validate_prefix,
)


class LocalStorage(Storage):
    """Objects are files under `root`; writes go to a temp file, fsync, then rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

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
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
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
            _fsync_dir(path.parent)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError(f"{key} not found in {self.url}") from None

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
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if not self.root.is_dir():
            return
        # Walk only the deepest directory the prefix names, not the whole tree.
        start_parts = prefix.split("/")[:-1]
        start = self.root.joinpath(*start_parts) if start_parts else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an in-flight atomic write
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key=key, size=full.stat().st_size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

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
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise StorageUnavailableError(
                f"results directory {self.root} is not writable (nearest existing parent: {probe}); "
                "pass --results with a directory you can write to"
            )


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
