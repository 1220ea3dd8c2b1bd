"""Open a results URL as a `Storage`."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from storage_backends.base import Storage, StorageError
from storage_backends.local import LocalStorage

SUPPORTED_SCHEMES = ("a local path", "file://", "s3://")


def open_storage(url: str) -> Storage:
    """Return the backend for `url`: a local path, ``file:///abs/path`` or ``s3://bucket/prefix``."""
    if not url:
        raise StorageError("empty results URL; pass --results DIR_OR_URL or set TOKENLENS_RESULTS")
    if "://" not in url:
        return LocalStorage(url)
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return LocalStorage(unquote(parsed.path))
    if scheme == "s3":
        from storage_backends.s3 import S3Storage  # boto3 is only imported when needed

        return S3Storage.from_url(url)
    raise StorageError(f"unknown results URL scheme {scheme!r} in {url!r}; use one of: {', '.join(SUPPORTED_SCHEMES)}")
