"""The storage contract every backend implements, documented once."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field


class StorageError(Exception):
    """Base class of every storage failure; the message says what to do."""


class NotFoundError(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class AlreadyExistsError(StorageError):
    """A create-only write found the key already there (another writer won)."""


class InvalidKeyError(StorageError, ValueError):
    """A key that would escape the storage prefix or is not a safe path."""


class StorageUnavailableError(StorageError):
    """The backend can't be reached or refuses us (network, credentials, bucket)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the storage root, its size, and its MD5 if known for free."""

    key: str
    size: int
    #: Hex MD5 of the content when the listing already tells it (an S3 single-part ETag), else None;
    #: `Storage.md5(key)` always answers. Left out of equality: it is a hint, not identity.
    md5: str | None = field(default=None, compare=False)


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise `InvalidKeyError`.

    Keys are '/'-separated relative paths. Anything that could walk out of the
    prefix (``..``, absolute paths, backslashes, NUL, empty segments) is refused,
    so no caller can read or write outside the results URL it was given.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("storage key must be a non-empty string")
    if "\x00" in key or "\\" in key:
        raise InvalidKeyError(f"storage key {key!r} contains NUL or a backslash")
    if key.startswith("/"):
        raise InvalidKeyError(f"storage key {key!r} is absolute; keys are relative to the results URL")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(f"storage key {key!r} has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """Like `validate_key`, but '' (everything) and a trailing '/' are allowed."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "x")
    if prefix.startswith("/"):
        raise InvalidKeyError(f"prefix {prefix!r} is absolute")
    return prefix


def validate_folder_prefix(prefix: str) -> str:
    """`prefix` checked for `Storage.list_dirs`: '' or a safe prefix ending with '/'."""
    validate_prefix(prefix)
    if prefix and not prefix.endswith("/"):
        raise InvalidKeyError(f"folder prefix {prefix!r} must end with '/'")
    return prefix


def md5_hex(data: bytes) -> str:
    """The checksum `fetch` compares to skip files it already has."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Storage(abc.ABC):
    """Bytes under '/'-separated keys, relative to one root (a directory or a bucket prefix).

    Every write is atomic: a reader sees the old object, the new one, or nothing,
    never a partial file. Implementations validate every key with `validate_key`.
    """

    #: The URL this storage was opened from, without credentials.
    url: str

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> None:
        """Store `data` at `key`, replacing what is there.

        With ``if_absent=True`` the write only happens if nothing exists at `key`
        yet; otherwise `AlreadyExistsError` is raised and the stored object is
        untouched. Two concurrent create-only writers: exactly one wins.

        `content_type` and `content_encoding` describe the bytes to HTTP clients
        (``application/json``, ``gzip``) where the backend keeps object metadata
        (S3); `get` always returns the bytes exactly as stored, never decoded.
        A backend without object metadata (a directory) ignores them.
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes at `key`; `NotFoundError` if there are none."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes of the object at `key` from byte `start` (fewer at its end, b"" past it);
        `NotFoundError` if there is none. Lets a reader take the head of a large object (the first page of a
        100,000-line prompt set) without downloading it. Backends override this whole-object fallback."""
        if start < 0 or length < 0:
            raise ValueError(f"a byte range needs start >= 0 and length >= 0, not {start} and {length}")
        return self.get(key)[start : start + length]

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, all pages."""

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        """The names of the "folders" directly under `prefix` (which is '' or ends with '/'), sorted.

        A folder is a name with at least one object below it. Costs one directory read or one
        delimiter listing (S3's CommonPrefixes), never a walk of everything below: this is how
        runs are found without listing every result. Backends override this fallback.
        """
        base = validate_folder_prefix(prefix)
        names = {info.key[len(base) :].split("/", 1)[0] for info in self.list(base) if "/" in info.key[len(base) :]}
        yield from sorted(names)

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""

    def md5(self, key: str) -> str:
        """Hex MD5 of the object at `key` (`NotFoundError` if none). Backends override it to avoid a download."""
        return md5_hex(self.get(key))

    def check(self, *, for_writing: bool = True) -> None:  # noqa: B027 (a no-op unless a backend has something to check)
        """Raise `StorageUnavailableError` with a useful message unless usable.

        Called before any work starts, so that a bad results URL fails fast. Readers
        (fetch, runs, the UI) pass ``for_writing=False``: a read-only results URL is fine for them.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
