"""The read-only HTTP API over a results URL, and the app that serves it together with the built web UI.

Every read goes through the core's `tokenlens.run_reader.RunReader` (and so `tokenlens.results.RunStore` and
the counting rule of `tokenlens.progress`), so the UI sees exactly the storage layout the workers write and the
same done / failed / pending counts as `tokenlens status` and `tokenlens runs`; this module only turns them into
JSON. Only GET and HEAD are answered. Run and prompt ids are checked with `tokenlens.batch.check_safe_id`, and
request paths with `..`, encoded slashes, backslashes or NUL are refused before routing, so no request can name
a key outside the results prefix; a local results directory also refuses (403) and never lists a file or run
directory that a symbolic link leads out of it. A result file is checked before it is served: a corrupt one is
answered 422 and counted corrupt from then on. Responses carry the storage URL (which never holds credentials) and the
stored files, nothing else about the server.

Counts come from each run's progress record (`tokenlens.progress.run_counts`), so `/api/runs`, a run's counts
and the first page of a run cost the same at 100,000 prompts as at 100. Run list, run page and counts carry an
ETag and answer 304 to a matching If-None-Match, so a poll that finds nothing new costs no body.

    GET /api/health                                  the results URL being served
    GET /api/runs                                    every run: manifest summary and done/failed/pending counts
    GET /api/runs/{run_id}?offset=&limit=&status=&q= one run: manifest (no prompt id list), counts and one page of
                                                     its prompts (search `q` in the text, `status` done / failed /
                                                     pending / corrupt), `total` rows matching
    GET /api/runs/{run_id}/counts                    one run's counts only (what a page polls)
    GET /api/runs/{run_id}/{kind}/{prompt_id}        a stored file (kind: results, inseq, errors); a result in any
                                                     format or revision (compact, seed files) as plain TokenLens JSON
    GET /api/compare?run_id=R&prompt_id=P            the same prompt in other runs (by prompt id, else by text)
    GET /api/views/...                               run-level views (ui/run_views_api.py)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from storage_backends import (
    InvalidKeyError,
    NotFoundError,
    OutsideRootError,
    Storage,
    StorageError,
    StorageUnavailableError,
)
from tokenlens import __version__
from tokenlens.batch import check_safe_id
from tokenlens.errors import RunNotFoundError, RunUnreadableError, TokenLensError
from tokenlens.result_codec import ResultFormatError, as_plain_json
from tokenlens.results import KINDS
from tokenlens.run_reader import MAX_PAGE_ROWS, STATUSES, CorruptResultError, PromptNotInRunError, RunReader
from ui.run_views_api import run_views_routes

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS = ("GET", "HEAD")
#: Below this many bytes a JSON body is sent uncompressed (gzip would not pay for itself).
GZIP_MINIMUM_BYTES = 1024
#: Rows of a run page when the request names no limit.
DEFAULT_PAGE_ROWS = 100
#: Result files are a few MB at most; level 5 compresses them ~5x at a fraction of level 9's CPU time.
GZIP_LEVEL = 5
#: Browser-side hardening for everything served: the app only talks to its own origin.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}
#: Host names a browser uses for a loopback server; anything else is refused (blocks DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")

UI_NOT_BUILT_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>TokenLens</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto; line-height: 1.5">
<h1>TokenLens</h1><p>The API is running (try <a href="/api/runs">/api/runs</a>), but the web app has not been
built. Build it once with:</p><pre>cd ui/web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>then restart <code>tokenlens ui</code>.</p></body></html>"""


class ApiError(HTTPException):
    """An error answered as JSON ``{"error": message}`` with `status_code`."""


def _error_response(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers={"cache-control": "no-store"})


# --- endpoints ---------------------------------------------------------------------------------------------


def _reader(request: Request) -> RunReader:
    reader: RunReader = request.app.state.reader
    return reader


def _no_store(payload: Any) -> JSONResponse:
    # Progress changes while a run is in flight: never let a cache answer for storage.
    return JSONResponse(payload, headers={"cache-control": "no-store"})


def _etag_of(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f'W/"{digest}"'


def _revalidated(request: Request, etag: str, build: Callable[[], Any]) -> Response:
    """304 if the client holds `etag` already, else the JSON `build()` makes; always revalidated, never stale."""
    headers = {"cache-control": "no-cache", "etag": etag}
    sent = request.headers.get("if-none-match", "")
    if etag in (tag.strip() for tag in sent.split(",")):
        return Response(status_code=304, headers=headers)
    return JSONResponse(build(), headers=headers)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name}={value} is out of range ({low} to {high})")
    return value


def health(request: Request) -> JSONResponse:
    reader = _reader(request)
    return _no_store({"status": "ok", "results_url": reader.storage.url, "version": __version__})


def runs(request: Request) -> Response:
    reader = _reader(request)
    payload = {"results_url": reader.storage.url, "runs": [asdict(run) for run in reader.runs()]}
    return _revalidated(request, _etag_of(payload), lambda: payload)


def run_detail(request: Request) -> Response:
    """One page of a run; its ETag is its counts and the page asked for (texts and run.json never change)."""
    reader = _reader(request)
    run_id = check_safe_id("run id", request.path_params["run_id"])
    offset = _int_param(request, "offset", 0, 0, 10**9)
    limit = _int_param(request, "limit", DEFAULT_PAGE_ROWS, 1, MAX_PAGE_ROWS)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"query parameter status={status!r} is not one of {', '.join(STATUSES)}")
    query = request.query_params.get("q") or None
    manifest = reader.header(run_id)
    counts = reader.counts(run_id, manifest)
    etag = _etag_of(run_id, manifest.created_at, asdict(counts), offset, limit, status, query)

    def build() -> dict[str, Any]:
        page = reader.run_page(run_id, offset=offset, limit=limit, status=status, q=query, counts=counts)
        return asdict(page)

    return _revalidated(request, etag, build)


def run_counts(request: Request) -> Response:
    """A run's summary and counts only: what the run page polls while the run is in flight."""
    reader = _reader(request)
    run_id = check_safe_id("run id", request.path_params["run_id"])
    summary = reader.summary(run_id)
    if summary is None:
        raise RunNotFoundError(f"run {run_id!r} not found under {reader.storage.url}")
    payload = {"run": asdict(summary)}
    return _revalidated(request, _etag_of(payload), lambda: payload)


def stored_file(request: Request) -> Response:
    run_id = check_safe_id("run id", request.path_params["run_id"])
    kind = request.path_params["kind"]
    prompt_id = check_safe_id("prompt id", request.path_params["prompt_id"])
    if kind not in KINDS:
        raise ApiError(404, f"no such file kind {kind!r}; one of {', '.join(KINDS)}")
    reader = _reader(request)
    store = reader.store(run_id)
    key = store.key(kind, prompt_id)
    try:
        # A result is checked before it is served: a corrupt one is answered 422 (and listed so from then on).
        body = reader.result_bytes(run_id, prompt_id) if kind == "results" else store.storage.get(key)
    except NotFoundError:
        raise ApiError(404, f"run {run_id!r} has no {kind} file for prompt {prompt_id!r}") from None
    if kind == "results":
        # The web app and a download get one layout, whatever the file was written as (the core decodes it).
        try:
            body = as_plain_json(body, source=key)
        except ResultFormatError as exc:
            raise ApiError(500, str(exc)) from None
    # A stored result is never rewritten; inseq and error files can be (a redelivered batch, a retry).
    headers = {"cache-control": "private, max-age=300" if kind == "results" else "no-store"}
    if request.query_params.get("download"):
        headers["content-disposition"] = f'attachment; filename="{run_id}_{kind}_{prompt_id}.json"'
    return Response(body, media_type="application/json", headers=headers)


def compare(request: Request) -> JSONResponse:
    run_id = request.query_params.get("run_id", "")
    prompt_id = request.query_params.get("prompt_id", "")
    if not run_id or not prompt_id:
        raise ApiError(400, "compare needs ?run_id=RUN&prompt_id=PROMPT")
    return _no_store(
        asdict(_reader(request).compare(check_safe_id("run id", run_id), check_safe_id("prompt id", prompt_id)))
    )


def api_not_found(request: Request) -> JSONResponse:
    return _error_response(404, f"no API endpoint {request.url.path}; see /api/runs")


# --- the web app -------------------------------------------------------------------------------------------


class WebApp:
    """Serves the built web app: files under `dist_dir`, and index.html for every other path.

    The fallback lets a person open or reload an addressable URL (/runs/<run_id>/<prompt_id>) directly;
    the app's router then draws that page.
    """

    def __init__(self, dist_dir: Path | None) -> None:
        self.dist_dir = dist_dir.resolve() if dist_dir is not None else None

    def serve(self, request: Request) -> Response:
        if self.dist_dir is None or not (self.dist_dir / "index.html").is_file():
            return HTMLResponse(UI_NOT_BUILT_HTML, headers={"cache-control": "no-store"})
        relative = request.path_params.get("path", "")
        candidate = (self.dist_dir / relative).resolve()
        if relative and candidate.is_file() and candidate.is_relative_to(self.dist_dir):
            # Vite names assets by content hash, so they never change under their name.
            immutable = candidate.parent.name == "assets"
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            return FileResponse(candidate, headers={"cache-control": cache})
        return FileResponse(self.dist_dir / "index.html", headers={"cache-control": "no-cache"})


# --- middleware --------------------------------------------------------------------------------------------


class HttpMiddleware:
    """An ASGI middleware that passes everything but HTTP requests straight through to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ReadOnlyGuard(HttpMiddleware):
    """Refuses, before routing, anything but GET/HEAD and any path that could name a key outside the prefix."""

    #: Percent-encodings of '/', '\\' and NUL: a decoded one could smuggle a separator into an id.
    FORBIDDEN_ENCODINGS = (b"%2f", b"%5c", b"%00")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self._problem(scope)
        if problem is not None:
            status, message = problem
            headers = {"allow": ", ".join(READ_METHODS)} if status == 405 else None
            response = _error_response(status, message)
            if headers:
                response.headers.update(headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        if scope["method"] not in READ_METHODS:
            return 405, f"the TokenLens UI is read-only; {scope['method']} is not allowed (only GET and HEAD)"
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode("utf-8")).lower()
        path: str = scope["path"]
        if any(code in raw_path for code in self.FORBIDDEN_ENCODINGS):
            return 400, "encoded '/', '\\' or NUL in the path are not allowed"
        segments = path.split("/")
        if ".." in segments or "\\" in path or "\x00" in path or "//" in path:
            return 400, "paths with '..', '//', backslashes or NUL are not allowed"
        return None


class SecurityHeaders(HttpMiddleware):
    """Adds `SECURITY_HEADERS` to every HTTP response."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the app -----------------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_response(exc.status_code, str(exc.detail))


async def _storage_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFoundError):
        return _error_response(404, str(exc))
    if isinstance(exc, OutsideRootError):  # a symbolic link out of the results directory: never followed
        return _error_response(403, "that file lies outside the results directory (a symbolic link); not served")
    if isinstance(exc, InvalidKeyError):
        return _error_response(400, str(exc))
    if isinstance(exc, StorageUnavailableError):
        return _error_response(503, f"the results storage is unavailable: {exc}")
    logger.exception("storage error while answering %s", request.url.path)
    return _error_response(502, f"the results storage failed: {exc}")


async def _tokenlens_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RunNotFoundError | PromptNotInRunError):
        return _error_response(404, str(exc))
    if isinstance(exc, RunUnreadableError):
        return _error_response(500, str(exc))
    if isinstance(exc, CorruptResultError):
        return _error_response(422, str(exc))
    return _error_response(400, str(exc))


def create_app(storage: Storage, dist_dir: Path | None = None, allowed_hosts: Iterable[str] | None = None) -> Starlette:
    """The UI's ASGI app over `storage`, serving the web app from `dist_dir` (None: API only).

    `allowed_hosts` limits the Host header (None allows any); `ui.server` passes the loopback names when it
    binds to loopback, so a web page elsewhere cannot reach the API by rebinding its DNS name to 127.0.0.1.
    """
    routes = [
        Route("/api/health", health, methods=list(READ_METHODS)),
        Route("/api/runs", runs, methods=list(READ_METHODS)),
        Route("/api/runs/{run_id}", run_detail, methods=list(READ_METHODS)),
        Route("/api/runs/{run_id}/counts", run_counts, methods=list(READ_METHODS)),
        Route("/api/runs/{run_id}/{kind}/{prompt_id}", stored_file, methods=list(READ_METHODS)),
        Route("/api/compare", compare, methods=list(READ_METHODS)),
        *run_views_routes(),
        Route("/api/{rest:path}", api_not_found, methods=list(READ_METHODS)),
        Route("/{path:path}", WebApp(dist_dir).serve, methods=list(READ_METHODS)),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(ReadOnlyGuard)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False))
    middleware.append(Middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=GZIP_LEVEL))
    reader = RunReader(storage)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        reader.close()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: _api_error,
            StorageError: _storage_error,
            TokenLensError: _tokenlens_error,
        },
        lifespan=lifespan,
    )
    app.state.reader = reader
    return app
