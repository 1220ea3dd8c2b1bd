"""Where a worker may write: the results locations it was started with, compared as normalised URLs.

A batch names its run's results URL, and anyone who can write to the broker can
forge a batch, so a worker writes only under the locations its operator gave it
(`tokenlens worker --results URL`, repeatable; default TOKENLENS_RESULTS). A
location allows itself and everything beneath it. URLs are compared after
normalising: a local path (or ``file://`` URL) becomes its real path, with
symlinks and ``..`` resolved, so ``./r`` and ``/abs/r`` match and
``/abs/r/../other`` or a link out of ``/abs/r`` do not; an ``s3://`` URL becomes
its bucket and its prefix without stray slashes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from tokenlens.errors import ConfigError


class ResultsLocationError(ConfigError):
    """A results URL that can't be normalised (not a path, file:// or s3:// URL)."""


@dataclass(frozen=True)
class Location:
    """A normalised results location: ("file", real path) or ("s3", "bucket/prefix")."""

    scheme: str
    path: str

    def contains(self, other: Location) -> bool:
        """Whether `other` is this location or lies beneath it."""
        if self.scheme != other.scheme:
            return False
        if other.path == self.path:
            return True
        base = self.path.rstrip("/")
        return other.path.startswith(base + "/")

    def __str__(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path


def normalise_location(url: str) -> Location:
    """`url` as a `Location`; `ResultsLocationError` if it is neither a path, file:// nor s3://."""
    if not isinstance(url, str) or not url or "\x00" in url:
        raise ResultsLocationError(f"results URL {url!r} is empty or holds a NUL character")
    if "://" not in url:
        return Location("file", os.path.realpath(os.path.expanduser(url)))
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        raise ResultsLocationError(f"results URL {url!r} can't be parsed ({exc})") from None
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ResultsLocationError(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return Location("file", os.path.realpath(unquote(parsed.path)))
    if scheme == "s3":
        from storage_backends import StorageError
        from storage_backends.s3 import parse_s3_url  # boto3 is only imported for s3:// URLs

        try:
            bucket, prefix = parse_s3_url(url)
        except StorageError as exc:
            raise ResultsLocationError(str(exc)) from None
        return Location("s3", f"{bucket}/{prefix}" if prefix else bucket)
    raise ResultsLocationError(f"results URL {url!r} has scheme {scheme!r}; use a directory, file:/// or s3://")


class ResultsLocations:
    """The locations a worker may write to."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.locations = tuple(dict.fromkeys(normalise_location(url) for url in urls))
        if not self.locations:
            raise ResultsLocationError("a worker needs at least one results location (--results or TOKENLENS_RESULTS)")

    def allows(self, url: str) -> bool:
        """Whether a batch for `url` may be written (False for any URL that can't be normalised)."""
        try:
            candidate = normalise_location(url)
        except ConfigError:
            return False
        return any(location.contains(candidate) for location in self.locations)

    def describe(self) -> str:
        return ", ".join(str(location) for location in self.locations)
