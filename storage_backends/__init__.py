"""Where TokenLens results live: one `Storage` interface and its backends.

`open_storage(url)` turns a results URL (a local path, ``file://...`` or
``s3://bucket/prefix``) into a backend. This package knows nothing about
attribution: it moves bytes under keys, atomically.
"""

from storage_backends.base import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageError,
    StorageUnavailableError,
    validate_key,
)
from storage_backends.local import LocalStorage, OutsideRootError
from storage_backends.url import open_storage

__all__ = [
    "AlreadyExistsError",
    "InvalidKeyError",
    "LocalStorage",
    "NotFoundError",
    "ObjectInfo",
    "OutsideRootError",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "open_storage",
    "validate_key",
]
