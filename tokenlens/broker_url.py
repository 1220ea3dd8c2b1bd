"""Broker URLs, parsed strictly before anything connects, and printed without their password.

redis-py and kombu are lenient: ``redis://host:6379/notanumber`` quietly means
database 0 (perhaps another tenant's queues), and ``redis://[::1`` ends in a
traceback. `check_broker_url` refuses such URLs with one line that says what a
good one looks like; the CLI turns that into exit status 2.

    redis://[user:password@]host[:port][/db]     plain TCP
    rediss://[user:password@]host[:port][/db]    TLS
    unix:///path/to/redis.sock[?db=N]            a local socket
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse, urlunparse

from tokenlens.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix")
URL_HELP = "redis://host:6379/0 (rediss:// for TLS, unix:///path/redis.sock?db=0)"
#: Query parameters redis-py understands in a URL and that make sense for a broker.
QUERY_PARAMETERS = frozenset(
    {
        "db",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "client_name",
        "protocol",
    }
)
#: Redis numbers its databases 0, 1, ... (16 of them unless `databases` in redis.conf says more).
DB_NUMBER = re.compile(r"^[0-9]{1,5}$")
HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class BrokerUrlError(ConfigError):
    """A broker URL that is not a well-formed Redis URL; the message shows a good one."""


@dataclass(frozen=True)
class BrokerAddress:
    """What a checked broker URL names."""

    scheme: str
    host: str | None
    port: int | None
    db: int
    socket_path: str | None


def redact_url(url: str) -> str:
    """A broker URL safe to print: the password replaced by ***; never raises, whatever `url` is."""
    try:
        parsed = urlparse(url)
        if parsed.password is None:
            return url
    except ValueError:
        # Unparseable: show only what can't be a password (the part after the last '@').
        return url.rsplit("@", 1)[-1] if "@" in url else url
    netloc = parsed.netloc.rsplit("@", 1)[1]
    user = parsed.username or ""
    return urlunparse(parsed._replace(netloc=f"{user}:***@{netloc}"))


def _fail(url: str, problem: str) -> BrokerUrlError:
    return BrokerUrlError(
        f"broker URL {redact_url(url)!r}: {problem}; use {URL_HELP} (--broker or TOKENLENS_BROKER_URL)"
    )


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    if len(host) > 253:
        return False
    return all(HOST_LABEL.match(label) for label in host.rstrip(".").split("."))


def _host_part(netloc: str) -> str:
    """The host of `user:password@host:port` as written: `[v6]` keeps its brackets."""
    address = netloc.rsplit("@", 1)[-1]
    if address.startswith("["):
        return address[: address.index("]") + 1] if "]" in address else address
    return address.split(":", 1)[0]


def _db_number(url: str, raw: str, where: str) -> int:
    if not DB_NUMBER.match(raw):
        raise _fail(url, f"the database {where} {raw!r} is not a number (Redis databases are 0, 1, ... 15)")
    return int(raw)


def check_broker_url(url: str) -> BrokerAddress:
    """Parse `url` strictly; `BrokerUrlError` naming the problem (never the password) if it is not well formed."""
    if not isinstance(url, str) or not url:
        raise BrokerUrlError(f"the broker URL is empty; use {URL_HELP} (--broker or TOKENLENS_BROKER_URL)")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise _fail(url, "it contains spaces or control characters")
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise _fail(url, f"it can't be parsed ({exc})") from None
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(url, "it is not a Redis URL; TokenLens queues on Redis")
    if parsed.fragment or parsed.params:
        raise _fail(url, "it has a fragment or ';' parameters")
    try:
        query = parse_qs(parsed.query, keep_blank_values=True, strict_parsing=bool(parsed.query))
    except ValueError:
        raise _fail(url, f"its query {parsed.query!r} is malformed") from None
    unknown = sorted(set(query) - QUERY_PARAMETERS)
    if unknown:
        raise _fail(url, f"unknown query parameter(s) {', '.join(unknown)}")
    if any(len(values) > 1 for values in query.values()):
        raise _fail(url, "a query parameter is given twice")
    query_db = _db_number(url, query["db"][0], "in ?db=") if "db" in query else None

    if scheme == "unix":
        path = parsed.path
        if parsed.netloc or not path.startswith("/") or path.endswith("/"):
            raise _fail(url, "a unix socket URL names an absolute socket path, like unix:///run/redis/redis.sock")
        return BrokerAddress(scheme=scheme, host=None, port=None, db=query_db or 0, socket_path=path)

    host = _host_part(parsed.netloc)
    if not host:
        raise _fail(url, "it names no host")
    if not _valid_host(host):
        raise _fail(url, f"host {host!r} is not a valid host name or IP address")
    if port is not None and port == 0:
        raise _fail(url, "port 0 is not a port")
    if parsed.netloc.endswith(":"):
        raise _fail(url, "the port after ':' is missing")
    path = parsed.path
    path_db = None
    if path not in ("", "/"):
        path_db = _db_number(url, path[1:], "after the host,")
    if path_db is not None and query_db is not None and path_db != query_db:
        raise _fail(url, f"it names two databases ({path_db} in the path, {query_db} in ?db=)")
    db = path_db if path_db is not None else (query_db or 0)
    return BrokerAddress(scheme=scheme, host=host, port=port, db=db, socket_path=None)
