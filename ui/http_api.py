"""The read-only HTTP API over a results URL, and the app that serves it together with the built web UI.

Every read goes through `tokenlens.results.RunStore`, so the UI sees exactly the storage layout the workers
write. Only GET and HEAD are answered. Run and prompt ids are checked with `tokenlens.batch.is_safe_id`, and
request paths with `..`, encoded slashes, backslashes or NUL are refused before routing, so no request can name
a key outside the results prefix. Responses carry the storage URL (which never holds credentials) and the
stored files, nothing else about the server.

    GET /api/health                                  the results URL being served
    GET /api/runs                                    every run: manifest summary and done/failed/pending counts
    GET /api/runs/{run_id}                           one run: manifest, counts, every prompt with its status
    GET /api/runs/{run_id}/{kind}/{prompt_id}        a stored file as-is (kind: results, inseq, errors)
    GET /api/compare?run_id=R&prompt_id=P            the same prompt in other runs (by prompt id, else by text)
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
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

from storage_backends import InvalidKeyError, NotFoundError, Storage, StorageError, StorageUnavailableError
from tokenlens import __version__
from tokenlens.batch import SAFE_ID_HELP, is_safe_id
from tokenlens.errors import RunNotFoundError, TokenLensError
from tokenlens.results import KINDS, RunStore, list_run_ids
from tokenlens.schema import ErrorRecord, RunManifest

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS = ("GET", "HEAD")
#: Storage reads in flight at once while building a run's prompt list (S3 round trips dominate).
READ_WORKERS = 8
#: Below this many bytes a JSON body is sent uncompressed (gzip would not pay for itself).
GZIP_MINIMUM_BYTES = 1024
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


def _checked(label: str, value: str) -> str:
    if not is_safe_id(value):
        raise ApiError(400, f"{label} {value!r} is not a valid id ({SAFE_ID_HELP})")
    return value


# --- reading runs ------------------------------------------------------------------------------------------


def prompt_text_from_result(raw: bytes) -> str | None:
    """The ``metadata.prompt`` of a stored TokenLens JSON file, without parsing its (large) matrices.

    Results are written as ``{"metadata":{...},"data":...}``: decoding just the metadata object skips the
    matrices, which are nearly all of the file. Any other layout falls back to a full parse.
    """
    text = raw.decode("utf-8", errors="replace")
    head = '{"metadata":'
    metadata: Any = None
    if text.startswith(head):
        try:
            metadata, _end = json.JSONDecoder().raw_decode(text, len(head))
        except json.JSONDecodeError:
            metadata = None
    if metadata is None:
        try:
            metadata = json.loads(text).get("metadata")
        except (json.JSONDecodeError, AttributeError):
            return None
    prompt = metadata.get("prompt") if isinstance(metadata, dict) else None
    return prompt if isinstance(prompt, str) else None


class RunReader:
    """Reads runs for the API, remembering the prompt text of each stored result.

    Results are create-only (a stored result is never rewritten), so a prompt's text, once read, stays true;
    that makes the run page and compare cheap after the first visit even on S3.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._texts: dict[tuple[str, str], str | None] = {}
        self._prompt_files_read: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="tokenlens-ui-read")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def store(self, run_id: str) -> RunStore:
        return RunStore(self.storage, _checked("run id", run_id))

    def manifest(self, run_id: str) -> RunManifest:
        store = self.store(run_id)
        try:
            return store.read_manifest()
        except RunNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:  # pydantic's ValidationError, a corrupt run.json
            raise ApiError(500, f"run {run_id!r} has an unreadable run.json: {exc}") from None

    def summary(self, run_id: str) -> dict[str, Any]:
        """A run's manifest essentials and its progress, as storage alone knows it."""
        store = self.store(run_id)
        try:
            manifest = store.read_manifest()
        except (TokenLensError, ValueError) as exc:
            return {"run_id": run_id, "error": f"unreadable run.json: {exc}"}
        done = store.ids("results")
        failed = store.ids("errors") - done
        return _summary(manifest, done, failed)

    def runs(self) -> list[dict[str, Any]]:
        run_ids = sorted(list_run_ids(self.storage))
        summaries = list(self._pool.map(self.summary, run_ids))
        # Newest first: that is the run a person just started and wants to watch.
        summaries.sort(key=lambda s: (s.get("created_at") or "", s["run_id"]), reverse=True)
        return summaries

    def prompt_texts(self, run_id: str, prompt_ids: Iterable[str]) -> dict[str, str | None]:
        """The text of each given prompt: from the run's prompts.jsonl, else from its stored result.

        Read once, then remembered (a run's prompt set and its results never change).
        """
        store = self.store(run_id)
        wanted = list(prompt_ids)
        with self._lock:
            known_run = run_id in self._prompt_files_read
        if not known_run:
            try:
                from_file = {pid: record.prompt for pid, record in store.read_prompts().items()}
            except ValueError:  # an unreadable prompts.jsonl: fall back to the results
                from_file = {}
            with self._lock:
                self._prompt_files_read.add(run_id)
                self._texts.update({(run_id, pid): text for pid, text in from_file.items()})
        with self._lock:
            missing = [pid for pid in wanted if (run_id, pid) not in self._texts]

        def read(prompt_id: str) -> tuple[str, str | None]:
            try:
                return prompt_id, prompt_text_from_result(self.storage.get(store.key("results", prompt_id)))
            except NotFoundError:
                return prompt_id, None

        for prompt_id, text in self._pool.map(read, missing):
            if text is not None:
                with self._lock:
                    self._texts[(run_id, prompt_id)] = text
        with self._lock:
            return {pid: self._texts.get((run_id, pid)) for pid in wanted}

    def errors(self, run_id: str, prompt_ids: Iterable[str]) -> dict[str, ErrorRecord | None]:
        store = self.store(run_id)

        def read(prompt_id: str) -> tuple[str, ErrorRecord | None]:
            try:
                return prompt_id, store.read_error(prompt_id)
            except NotFoundError:  # cleared by a retry since the listing
                return prompt_id, None
            except ValueError as exc:
                record = ErrorRecord(
                    run_id=run_id, prompt_id=prompt_id, prompt="", error_type="UnreadableErrorRecord", message=str(exc)
                )
                return prompt_id, record

        return dict(self._pool.map(read, list(prompt_ids)))

    def run_detail(self, run_id: str) -> dict[str, Any]:
        manifest = self.manifest(run_id)
        store = self.store(run_id)
        done = store.ids("results")
        failed = store.ids("errors") - done
        listed = list(dict.fromkeys(manifest.prompt_ids))
        texts = self.prompt_texts(run_id, done | set(listed))
        errors = self.errors(run_id, failed)
        # Manifest order first (the order of the prompt set), then anything stored that it does not list.
        extra = sorted((done | failed) - set(listed))
        prompts = []
        for prompt_id in listed + extra:
            entry: dict[str, Any] = {"prompt_id": prompt_id, "prompt": None, "error": None}
            if prompt_id in done:
                entry["status"] = "done"
                entry["prompt"] = texts.get(prompt_id)
            elif prompt_id in failed:
                entry["prompt"] = texts.get(prompt_id)
                entry["status"] = "failed"
                record = errors.get(prompt_id)
                if record is not None:
                    entry["prompt"] = entry["prompt"] or record.prompt or None
                    entry["error"] = {
                        "error_type": record.error_type,
                        "message": record.message,
                        "attempts": record.attempts,
                        "timestamp": record.timestamp,
                    }
            else:
                entry["status"] = "pending"
                entry["prompt"] = texts.get(prompt_id)
            prompts.append(entry)
        return {
            "run": _summary(manifest, done, failed),
            "manifest": manifest.model_dump(mode="json"),
            "prompts": prompts,
        }

    def prompt_text(self, run_id: str, prompt_id: str) -> tuple[str | None, str | None]:
        """(text, status) of one prompt of a run; status None if the run has neither a result nor an error."""
        store = self.store(run_id)
        if store.has_result(prompt_id):
            return self.prompt_texts(run_id, [prompt_id])[prompt_id], "done"
        try:
            return store.read_error(prompt_id).prompt or None, "failed"
        except NotFoundError:
            return None, None
        except ValueError:
            return None, "failed"

    def compare(self, run_id: str, prompt_id: str) -> dict[str, Any]:
        """The prompt's runs: this one first, then every other run that has the same prompt id, else the same text."""
        base_manifest = self.manifest(run_id)
        _checked("prompt id", prompt_id)
        text, status = self.prompt_text(run_id, prompt_id)
        if status is None:
            raise ApiError(404, f"run {run_id!r} has no result or error for prompt {prompt_id!r}")
        entries = [_compare_entry(base_manifest, prompt_id, "self", status, same_text=True)]
        for other_id in sorted(list_run_ids(self.storage)):
            if other_id == run_id:
                continue
            other = self.store(other_id)
            try:
                manifest = other.read_manifest()
            except (TokenLensError, ValueError):
                continue
            other_text, other_status = self.prompt_text(other_id, prompt_id)
            if other_status is not None:
                same = text is not None and other_text == text
                entries.append(_compare_entry(manifest, prompt_id, "id", other_status, same_text=same))
                continue
            if text is None:
                continue
            done = sorted(other.ids("results"))
            texts = self.prompt_texts(other_id, done)
            match = next((pid for pid in done if texts.get(pid) == text), None)
            if match is not None:
                entries.append(_compare_entry(manifest, match, "text", "done", same_text=True))
        return {"run_id": run_id, "prompt_id": prompt_id, "prompt": text, "entries": entries}


def _summary(manifest: RunManifest, done: set[str], failed: set[str]) -> dict[str, Any]:
    known = set(manifest.prompt_ids) | done | failed
    prompt_count = max(manifest.prompt_count, len(known))
    pending = max(prompt_count - len(done) - len(failed), 0)
    return {
        "run_id": manifest.run_id,
        "model": manifest.model,
        "method": manifest.method,
        "engine": manifest.engine,
        "mode": manifest.mode,
        "source": manifest.source,
        "created_at": manifest.created_at,
        "prompt_count": prompt_count,
        "done": len(done),
        "failed": len(failed),
        "pending": pending,
        "complete": pending == 0,
    }


def _compare_entry(
    manifest: RunManifest, prompt_id: str, matched_by: str, status: str, same_text: bool
) -> dict[str, Any]:
    return {
        "run_id": manifest.run_id,
        "prompt_id": prompt_id,
        "model": manifest.model,
        "method": manifest.method,
        "engine": manifest.engine,
        "created_at": manifest.created_at,
        "matched_by": matched_by,
        "status": status,
        "same_text": same_text,
    }


# --- endpoints ---------------------------------------------------------------------------------------------


def _reader(request: Request) -> RunReader:
    reader: RunReader = request.app.state.reader
    return reader


def _no_store(payload: Any) -> JSONResponse:
    # Progress changes while a run is in flight: never let a cache answer for storage.
    return JSONResponse(payload, headers={"cache-control": "no-store"})


def health(request: Request) -> JSONResponse:
    reader = _reader(request)
    return _no_store({"status": "ok", "results_url": reader.storage.url, "version": __version__})


def runs(request: Request) -> JSONResponse:
    reader = _reader(request)
    return _no_store({"results_url": reader.storage.url, "runs": reader.runs()})


def run_detail(request: Request) -> JSONResponse:
    return _no_store(_reader(request).run_detail(request.path_params["run_id"]))


def stored_file(request: Request) -> Response:
    run_id = _checked("run id", request.path_params["run_id"])
    kind = request.path_params["kind"]
    prompt_id = _checked("prompt id", request.path_params["prompt_id"])
    if kind not in KINDS:
        raise ApiError(404, f"no such file kind {kind!r}; one of {', '.join(KINDS)}")
    store = _reader(request).store(run_id)
    try:
        body = store.storage.get(store.key(kind, prompt_id))
    except NotFoundError:
        raise ApiError(404, f"run {run_id!r} has no {kind} file for prompt {prompt_id!r}") from None
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
    return _no_store(_reader(request).compare(run_id, prompt_id))


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


class ReadOnlyGuard:
    """Refuses, before routing, anything but GET/HEAD and any path that could name a key outside the prefix."""

    #: Percent-encodings of '/', '\\' and NUL: a decoded one could smuggle a separator into an id.
    FORBIDDEN_ENCODINGS = (b"%2f", b"%5c", b"%00")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

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
    if isinstance(exc, InvalidKeyError):
        return _error_response(400, str(exc))
    if isinstance(exc, StorageUnavailableError):
        return _error_response(503, f"the results storage is unavailable: {exc}")
    logger.exception("storage error while answering %s", request.url.path)
    return _error_response(502, f"the results storage failed: {exc}")


async def _tokenlens_error(request: Request, exc: Exception) -> Response:
    return _error_response(404 if isinstance(exc, RunNotFoundError) else 400, str(exc))


def create_app(storage: Storage, dist_dir: Path | None = None, allowed_hosts: Iterable[str] | None = None) -> Starlette:
    """The UI's ASGI app over `storage`, serving the web app from `dist_dir` (None: API only).

    `allowed_hosts` limits the Host header (None allows any); `ui.server` passes the loopback names when it
    binds to loopback, so a web page elsewhere cannot reach the API by rebinding its DNS name to 127.0.0.1.
    """
    routes = [
        Route("/api/health", health, methods=list(READ_METHODS)),
        Route("/api/runs", runs, methods=list(READ_METHODS)),
        Route("/api/runs/{run_id}", run_detail, methods=list(READ_METHODS)),
        Route("/api/runs/{run_id}/{kind}/{prompt_id}", stored_file, methods=list(READ_METHODS)),
        Route("/api/compare", compare, methods=list(READ_METHODS)),
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
