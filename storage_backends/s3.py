"""An S3 bucket prefix (AWS, or any S3-compatible store: MinIO, SeaweedFS, R2) as storage.

The endpoint and credentials come only from the standard AWS chain: `AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, the shared
config files, instance roles. Nothing here reads a project-specific variable, and no message or
log line ever contains a credential.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse, urlunparse

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

from storage_backends.base import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    ObjectInfo,
    Storage,
    StorageError,
    StorageUnavailableError,
    validate_folder_prefix,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: SigV4 needs a region; S3-compatible stores ignore it, so this only matters when none is configured.
FALLBACK_REGION = "us-east-1"

#: Our own retry layer sits on top of botocore's ("standard" mode: a few quick attempts). It keeps
#: a long run alive through an endpoint restart or a network blip, with backoff between these bounds.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0

#: S3 error codes that say "try again", whatever the HTTP status.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestThrottled",
        "PriorRequestNotComplete",
        # AWS answers 409 to a conditional write that raced another one; its advice is to retry.
        "ConditionalRequestConflict",
    }
)

CREDENTIALS_HELP = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, for this endpoint"
BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ("bucket", "some/prefix"); refuse anything else."""
    parsed = urlparse(url)
    if parsed.scheme.lower() != "s3":
        raise StorageError(f"{url!r} is not an s3:// URL; use s3://bucket/prefix")
    if "@" in parsed.netloc:
        # Deliberately not echoing the URL: it holds what looks like a secret.
        raise StorageError(
            f"an s3:// results URL must not contain credentials; use s3://bucket/prefix and {CREDENTIALS_HELP}"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise StorageError(
            f"s3 URL {url!r} has a query or fragment; use plain s3://bucket/prefix "
            "(the region and endpoint come from AWS_REGION and AWS_ENDPOINT_URL)"
        )
    bucket = parsed.netloc
    if not bucket:
        raise StorageError(f"s3 URL {url!r} names no bucket; use s3://bucket/prefix")
    if not BUCKET_NAME.match(bucket):
        raise StorageError(f"s3 URL {url!r}: {bucket!r} is not a valid bucket name")
    prefix = unquote(parsed.path).strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"s3 URL {url!r} has an unsafe prefix: {exc}") from None
    return bucket, prefix


def _public_endpoint(endpoint_url: str) -> str:
    """The endpoint without user info, query or fragment: safe to print."""
    parsed = urlparse(endpoint_url)
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urlunparse((parsed.scheme, netloc, parsed.path, "", "", ""))


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", "") or status), status


def _md5_from_etag(etag: str | None) -> str | None:
    # A single-part upload's ETag is the MD5 of the body; a multipart one ends in "-<parts>".
    value = (etag or "").strip('"').lower()
    return value if HEX_MD5.match(value) else None


def _timestamp_as_text(value: str) -> str:
    return value


def make_s3_client(
    *, max_pool_connections: int = 64, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0
) -> Any:
    """A boto3 S3 client configured from the standard AWS chain only, with retries on.

    Retry mode: whatever the user configured (AWS_RETRY_MODE, the profile), but never botocore's
    old "legacy" default; attempts: AWS_MAX_ATTEMPTS or botocore's default. For a custom endpoint
    (MinIO, SeaweedFS, R2, ...) path-style addressing is used unless the profile says otherwise,
    because most S3-compatible stores have no per-bucket DNS names.
    """
    core = botocore.session.get_session()
    # Timestamps are kept as the server's text: TokenLens reads none, and parsing each listed key's
    # LastModified with dateutil was two thirds of the time of listing a run's results.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp_as_text)
    try:
        scoped = core.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as exc:
        raise StorageUnavailableError(
            f"{exc}; set AWS_PROFILE to a profile in your AWS config files, or unset it"
        ) from None
    session = boto3.session.Session(botocore_session=core)
    options: dict[str, Any] = {
        "max_pool_connections": max_pool_connections,
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
    }
    if core.get_config_variable("retry_mode") in (None, "legacy"):
        options["retries"] = {"mode": "standard"}
    region = session.region_name or FALLBACK_REGION
    client = session.client("s3", region_name=region, config=Config(**options))
    host = urlparse(client.meta.endpoint_url).hostname or ""
    user_style = (scoped.get("s3") or {}).get("addressing_style")
    if not host.endswith("amazonaws.com") and user_style is None:
        options["s3"] = {"addressing_style": "path"}
        client = session.client("s3", region_name=region, config=Config(**options))
    return client


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix/``; every call retried on transient errors, then a clear error.

    `unavailable_after_s` bounds how long one call keeps retrying an unreachable or overloaded
    endpoint before it raises `StorageUnavailableError`; `check()` uses the shorter
    `check_unavailable_after_s`, so a wrong endpoint fails fast before any work starts.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        unavailable_after_s: float = 60.0,
        check_unavailable_after_s: float = 3.0,
    ) -> None:
        self.bucket = bucket
        if prefix.strip("/"):
            validate_key(prefix.strip("/"))
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.unavailable_after_s = unavailable_after_s
        self.check_unavailable_after_s = check_unavailable_after_s
        self._client = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Storage:
        """Open ``s3://bucket/prefix``; the client is created on first use."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **options)

    # plumbing ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        # Created lazily (once, even with many threads) so that opening a URL costs nothing.
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = make_s3_client()
        return self._client

    @property
    def endpoint(self) -> str:
        return _public_endpoint(self.client.meta.endpoint_url)

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _call(
        self, action: str, key: str | None, request: Callable[[], T], *, give_up_after_s: float | None = None
    ) -> T:
        """Run one S3 request; retry transient failures with backoff; translate the rest into StorageErrors."""
        budget_s = self.unavailable_after_s if give_up_after_s is None else give_up_after_s
        where = f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else self.url
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return request()
            except botocore.exceptions.ClientError as exc:
                code, status = _error_code(exc)
                if status < 500 and code not in TRANSIENT_CODES:
                    raise self._translate(exc, action, where) from exc
                problem = f"S3 endpoint {self.endpoint} answered {status} {code}"
            except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
                raise StorageUnavailableError(
                    f"no usable AWS credentials to {action} {where}; {CREDENTIALS_HELP}"
                ) from None
            except botocore.exceptions.SSLError as exc:
                raise StorageUnavailableError(
                    f"TLS handshake with S3 endpoint {self.endpoint} failed ({type(exc).__name__}); "
                    "check the endpoint URL's scheme and AWS_CA_BUNDLE"
                ) from exc
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                problem = f"cannot reach S3 endpoint {self.endpoint} ({type(exc).__name__})"
            except botocore.exceptions.BotoCoreError as exc:
                raise StorageError(f"S3 {action} of {where} failed: {exc}") from exc
            elapsed_s = time.monotonic() - started
            delay_s = min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S) * random.uniform(0.5, 1.0)
            if elapsed_s + delay_s > budget_s:
                raise StorageUnavailableError(
                    f"{problem} trying to {action} {where}; gave up after {attempt} attempt(s) in {elapsed_s:.1f} s. "
                    "Check that the server is up and that AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point at it"
                )
            log.warning("%s; retrying %s of %s in %.1f s (attempt %d)", problem, action, where, delay_s, attempt)
            time.sleep(delay_s)

    def _translate(self, exc: botocore.exceptions.ClientError, action: str, where: str) -> StorageError:
        code, status = _error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return NotFoundError(f"{where} not found")
        if code == "PreconditionFailed" or status == 412:
            return AlreadyExistsError(f"{where} already exists (create-only write refused)")
        if code == "NoSuchBucket":
            return StorageUnavailableError(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it "
                f"(e.g. `aws s3 mb s3://{self.bucket}`) or fix the results URL"
            )
        if code == "InvalidAccessKeyId":
            return StorageUnavailableError(f"the AWS access key id is not known to {self.endpoint}; {CREDENTIALS_HELP}")
        if code == "SignatureDoesNotMatch":
            return StorageUnavailableError(
                f"the AWS secret access key does not match the access key id at {self.endpoint}; {CREDENTIALS_HELP}"
            )
        if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
            return StorageUnavailableError(f"the AWS session token was refused ({code}); refresh your credentials")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
            return StorageUnavailableError(
                f"access denied to {action} {where} at {self.endpoint}: the credentials are wrong or lack "
                "permission (TokenLens needs s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject)"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(f"S3 {action} of {where} failed: {status} {code} {message}".rstrip())

    # the Storage contract --------------------------------------------------------
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full_key(key), "Body": data}
        if content_type is not None:
            params["ContentType"] = content_type
        elif key.endswith(".json"):
            params["ContentType"] = "application/json"
        if content_encoding is not None:
            params["ContentEncoding"] = content_encoding
        if if_absent:
            # The server refuses the write with 412 if the key exists, atomically. A retried request
            # whose first try did land is refused the same way: the object is there either way.
            params["IfNoneMatch"] = "*"
        self._call("write", key, lambda: self.client.put_object(**params))

    def get(self, key: str) -> bytes:
        full_key = self._full_key(key)

        def download() -> bytes:
            # Reading the body is inside the retried request: a connection cut mid-body retries too.
            response = self.client.get_object(Bucket=self.bucket, Key=full_key)
            body: bytes = response["Body"].read()
            return body

        return self._call("read", key, download)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"a byte range needs start >= 0 and length >= 0, not {start} and {length}")
        if length == 0:
            return b""
        full_key = self._full_key(key)

        def download() -> bytes:
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=full_key, Range=f"bytes={start}-{start + length - 1}"
                )
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc)[1] == 416:  # the range starts past the object's end
                    return b""
                raise
            body: bytes = response["Body"].read()
            return body[:length]  # a server that ignores Range sends the whole object

        return self._call("read", key, download)

    def exists(self, key: str) -> bool:
        full_key = self._full_key(key)
        try:
            self._call("look up", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full_key))
        except NotFoundError:
            return False
        return True

    def md5(self, key: str) -> str:
        full_key = self._full_key(key)
        head = self._call("look up", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full_key))
        return _md5_from_etag(head.get("ETag")) or super().md5(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self.prefix + validate_prefix(prefix)
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        while True:
            page = self._call("list", prefix or None, functools.partial(self.client.list_objects_v2, **params))
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key.endswith("/"):
                    continue  # a "folder" marker some tools create, not an object
                try:
                    validate_key(key)
                except InvalidKeyError:
                    log.debug("skipping %r: not addressable through this storage", item["Key"])
                    continue
                yield ObjectInfo(key=key, size=int(item["Size"]), md5=_md5_from_etag(item.get("ETag")))
            if not page.get("IsTruncated"):
                return
            params = {**params, "ContinuationToken": page["NextContinuationToken"]}

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        # A delimiter listing: one entry per folder (CommonPrefixes), not one per object below it.
        full_prefix = self.prefix + validate_folder_prefix(prefix)
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix, "Delimiter": "/"}
        names: list[str] = []
        while True:
            page = self._call("list", prefix or None, functools.partial(self.client.list_objects_v2, **params))
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(full_prefix) :].rstrip("/")
                if name and "/" not in name and name not in (".", ".."):
                    names.append(name)
            if not page.get("IsTruncated"):
                break
            params = {**params, "ContinuationToken": page["NextContinuationToken"]}
        yield from sorted(names)

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full_key))

    def check(self, *, for_writing: bool = True) -> None:
        """List one key: proves the endpoint answers, the bucket exists and the credentials may list it.

        Write permission is not probed (that would leave an object behind); a refused write
        still fails with a clear `StorageUnavailableError` on the first put.
        """
        self._call(
            "list",
            None,
            lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1),
            give_up_after_s=self.check_unavailable_after_s,
        )
