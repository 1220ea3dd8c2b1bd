"""The run-level views over HTTP: token importance, where attention goes, agreement of two runs, performance.

The numbers come from `tokenlens.run_views.RunViewCache` (one per app, made on first use), which reads only the
results prefix through the app's storage and keeps each run's sums in memory, so a second visit answers from
memory and a visit after new results arrive digests only the new files. Run ids are checked with
`tokenlens.batch.check_safe_id`; every query parameter is read from an allow-list or a bounded integer. Registered
by `ui.http_api.create_app` (before its catch-all), so the same read-only guard, host check and error handlers
answer here too.

    GET /api/views/performance                       seconds per prompt and per output token, by model x method x device
    GET /api/views/{run_id}/importance?level=token&limit=50
    GET /api/views/{run_id}/attention                shares by output position, distance profile
    GET /api/views/{run_id}/agreement?with=OTHER_RUN per-prompt Spearman and top-k overlap of two runs
"""

from __future__ import annotations

import threading

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenlens.batch import check_safe_id
from tokenlens.run_views import LEVELS, RunViewCache

READ_METHODS = ["GET", "HEAD"]
#: The most tokens one importance answer lists.
MAX_IMPORTANCE_LIMIT = 500
_cache_guard = threading.Lock()


def _views(request: Request) -> RunViewCache:
    state = request.app.state
    with _cache_guard:
        cache: RunViewCache | None = getattr(state, "run_views", None)
        if cache is None:
            cache = state.run_views = RunViewCache(state.reader.storage)
    return cache


def _bounded_int(request: Request, name: str, default: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    # isdigit() alone lets through digits int() refuses ("²"): ASCII digits only, or it would be a 500.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= high:
        raise HTTPException(400, f"{name} must be a whole number from 1 to {high}, not {text[:40]!r}")
    return int(text)


def _answer(payload: object) -> JSONResponse:
    # Results arrive while a run is in flight: always ask again (the cache makes asking again cheap).
    return JSONResponse(payload, headers={"cache-control": "no-store"})


def importance(request: Request) -> JSONResponse:
    run_id = check_safe_id("run id", request.path_params["run_id"])
    level = request.query_params.get("level", "token")
    if level not in LEVELS:
        raise HTTPException(400, f"unknown level {level[:40]!r}; use one of {', '.join(LEVELS)}")
    limit = _bounded_int(request, "limit", 50, MAX_IMPORTANCE_LIMIT)
    return _answer(_views(request).importance(run_id, level, limit))


def attention(request: Request) -> JSONResponse:
    run_id = check_safe_id("run id", request.path_params["run_id"])
    return _answer(_views(request).attention(run_id))


def agreement(request: Request) -> JSONResponse:
    run_id = check_safe_id("run id", request.path_params["run_id"])
    other = request.query_params.get("with", "")
    if not other:
        raise HTTPException(400, "agreement needs a second run: ?with=OTHER_RUN_ID")
    other_run_id = check_safe_id("run id", other)
    return _answer(_views(request).agreement(run_id, other_run_id))


def performance(request: Request) -> JSONResponse:
    return _answer(_views(request).performance())


def run_views_routes() -> list[Route]:
    """The views' routes, for `ui.http_api.create_app` to place before its catch-all."""
    return [
        Route("/api/views/performance", performance, methods=READ_METHODS),
        Route("/api/views/{run_id}/importance", importance, methods=READ_METHODS),
        Route("/api/views/{run_id}/attention", attention, methods=READ_METHODS),
        Route("/api/views/{run_id}/agreement", agreement, methods=READ_METHODS),
    ]
