"""The Starlette app: routes, page rendering and the request rules of ``security``.

Handlers are plain functions, so Starlette runs them in its thread pool (DuckDB calls block);
each request reads through its own cursor of ``CatalogAccess.read`` (requests run side by side),
and what does not change between commits is read once per catalog state (``cached_reads``): a
grid page already rendered for the same query and catalog state is served as it was.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import anyio.to_thread
import duckdb
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vidcorpus.catalog.safe_sql import RefusedSQL, check_predicate, first_line
from vidcorpus.catalog.store import CatalogError
from vidcorpus.serve.preview import Previews
from vidcorpus.serve import labels as labels_mod
from vidcorpus.serve import clip_bytes, grid_queries
from vidcorpus.serve.access import CatalogAccess
from vidcorpus.serve.cached_reads import CachedReads
from vidcorpus.serve.warmer import Warmer
from vidcorpus.serve.neighbours import Neighbours
from vidcorpus.serve.pages import error_page, jinja_env
from vidcorpus.serve.routes_measure import measure_routes
from vidcorpus.serve.security import WRITE_HEADER, Refused, check_id, host_ok, inside_roots, token_ok

TOKEN_COOKIE = "vidcorpus_token"


REQUEST_THREADS = 8


@dataclass
class ServeSettings:
    """What ``vidcorpus serve`` was started with."""

    catalog: str
    roots: list[str] = field(default_factory=list)  # folders (or URL prefixes) media may be served from
    host: str = "127.0.0.1"
    token: str | None = None
    who: str = "anonymous"
    query_threads: int | None = None  # DuckDB threads per query; None: DuckDB's default (every core)
    # threads running the (blocking) handlers; None: anyio's default, 40. A page's Python holds the GIL,
    # so more threads only switch more: 8 used ~10% less CPU per page than 40 (docs/benchmarks.md)
    request_threads: int | None = REQUEST_THREADS


class _CursorCatalog:
    """The two calls ``check_predicate`` makes, over one request's cursor."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def query(self, sql: str, params: list | None = None):
        return (self.con.sql(sql, params=params) if params else self.con.sql(sql)).to_arrow_table()

    def query_dicts(self, sql: str, params: list | None = None) -> list[dict]:
        return self.query(sql, params).to_pylist()


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; media-src 'self'; "
                                                "style-src 'self'; script-src 'self'; frame-ancestors 'none'")}


_SECURITY_HEADER_BYTES = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class Guard:
    """Host header, token and write-header rules (``security``) before any handler runs.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` runs each request through a task
    group and memory streams, a measurable share of a cached page's CPU."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        s: ServeSettings = request.app.state.settings
        refused = None
        given = None
        if s.token:  # (without a token, nothing to look for: the query string and cookies stay unparsed)
            given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip() or None)
        if not host_ok(s.host, request.headers.get("host")):
            refused = PlainTextResponse("refused: unknown Host header", status_code=400)
        elif not token_ok(s.token, given):
            refused = PlainTextResponse("refused: this server needs its token (?token=...)", status_code=401)
        elif request.method not in ("GET", "HEAD") and request.headers.get(WRITE_HEADER) != "1":
            refused = PlainTextResponse(f"refused: writes need the {WRITE_HEADER} header", status_code=403)
        extra = _SECURITY_HEADER_BYTES
        if refused is None and s.token and request.query_params.get("token"):
            cookie = Response()
            cookie.set_cookie(TOKEN_COOKIE, s.token, httponly=True, samesite="strict")
            extra = [*extra, *((k, v) for k, v in cookie.raw_headers if k == b"set-cookie")]

        async def send_guarded(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if refused is not None:
            return await refused(scope, receive, send_guarded)
        await self.app(scope, receive, send_guarded)


def _float(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise Refused(f"{name} is not a number: {value[:40]!r}") from None


def grid_query(request: Request, con: duckdb.DuckDBPyConnection, scores: list[str]) -> grid_queries.GridQuery:
    """The grid's filters from the query string; every name and value checked."""
    p = request.query_params
    q = grid_queries.GridQuery(source=p.get("source", ""), decision=p.get("decision", ""), reason=p.get("reason", ""),
                          sort=p.get("sort") or "clip_id", descending=p.get("desc") == "1")
    for key in p:
        if key.startswith(("min_", "max_")):
            name = key[4:]
            if name not in scores and name not in grid_queries.SORTABLE_CLIP_COLUMNS:
                raise Refused(f"no score named {name[:40]!r}")
            lo, hi = q.ranges.get(name, (None, None))
            value = _float(p.get(key), key)
            q.ranges[name] = (value, hi) if key.startswith("min_") else (lo, value)
    if q.source:
        check_id(q.source, "source id")
    try:
        q.page = max(1, int(p.get("page") or 1))
        q.per_page = max(1, min(grid_queries.MAX_PER_PAGE, int(p.get("per_page") or 48)))
    except ValueError:
        raise Refused("page and per_page are whole numbers") from None
    where = (p.get("where") or "").strip()
    if where:
        q.where = checked_where(request, con, where)
    return q


def checked_where(request: Request, con: duckdb.DuckDBPyConnection, where: str) -> str:
    cache: dict = request.app.state.where_cache
    if where not in cache:
        try:
            cache[where] = check_predicate(_CursorCatalog(con), where)
        except RefusedSQL as e:
            raise Refused(str(e)) from None
        except duckdb.Error as e:
            raise Refused(f"SQL error: {first_line(str(e))}") from None
        if len(cache) > 256:
            cache.pop(next(iter(cache)))
    return cache[where]


CACHE_HEADER = "X-Vidcorpus-Cache"
"""How a page was made: ``page`` (rendered before, same catalog state), ``index`` (answered from the
grid's columns in memory, ``grid_index``), ``order`` (the query's order was known: one 48-row lookup),
``miss`` (read from the catalog)."""


def _page_key(request: Request) -> tuple:
    return (request.url.path, tuple(sorted((k, v) for k, v in request.query_params.multi_items() if k != "token")))


def index(request: Request) -> Response:
    access: CatalogAccess = request.app.state.access
    reads: CachedReads = request.app.state.reads
    how = ["page"]

    def page(con: duckdb.DuckDBPyConnection, stamp) -> str:
        facts = reads.facts(con, stamp)
        q = grid_query(request, con, facts.scores)
        try:
            rows, total, made = reads.grid(con, stamp, q, facts.scores)
        except ValueError as e:
            raise Refused(str(e)) from None
        except duckdb.Error as e:
            raise Refused(f"SQL error: {first_line(str(e))}") from None
        how[0] = made
        facets = reads.facets(con, stamp, facts.scores)
        pages = max(1, -(-total // q.per_page))
        args = {k: v for k, v in request.query_params.items() if k not in ("page", "token")}
        return jinja_env.get_template("grid.html").render(
            rows=rows, total=total, q=q, scores=facts.scores, facets=facets, pages=pages, args=args,
            source_options=reads.options(stamp, "sources", facets["sources"], q.source),
            reason_options=reads.options(stamp, "reasons", facets["reasons"], q.reason),
            label_counts=facts.label_counts, recipe=facts.recipe.id if facts.recipe else None,
            writable=access.writable, count_cap=grid_queries.COUNT_CAP)

    with access.read() as con:
        stamp = access.stamp
        html, _ = reads.pages.get(stamp, _page_key(request), lambda: page(con, stamp))
    return HTMLResponse(html, headers={CACHE_HEADER: how[0]})


def clip_page(request: Request) -> Response:
    clip_id = check_id(request.path_params["clip_id"])
    access: CatalogAccess = request.app.state.access
    reads: CachedReads = request.app.state.reads
    neighbours = request.app.state.neighbours
    key = _page_key(request)
    with access.read() as con:
        stamp = access.stamp
        kept = reads.clip_pages.peek(stamp, key)  # the same clip page, already rendered in this catalog state
        if kept is not None:
            return HTMLResponse(kept, headers={CACHE_HEADER: "page"})
        facts = reads.facts(con, stamp)
        rows = reads.clip_rows(con, stamp, facts.tables)
        detail = grid_queries.clip_detail(con, clip_id, facts.tables, facts.recipe, facts.scores,
                                     timeline_of=lambda source: reads.timeline(con, stamp, source, facts.tables),
                                     labels_of=lambda clip: rows.labels_of(con, clip),
                                     shard_of=lambda shard: rows.shard_of(con, shard),
                                     decisions_of=lambda clip: reads.decisions(con, stamp, clip))
        plan = neighbours.index_of(con, clip_id, detail["embedding_model"]) if detail is not None else None
    if detail is None:
        return error_page(f"no clip {clip_id} in the catalog", 404)
    detail["near"], detail["near_note"] = [], plan if isinstance(plan, str) else ""
    if isinstance(plan, tuple):  # the embedding files are read outside the catalog's request
        near = neighbours.nearest(clip_id, plan)
        with access.read() as con:
            info = {r[0]: r[1:] for r in con.execute(
                "SELECT clip_id, kept, reason FROM clips_wide WHERE clip_id IN (SELECT unnest(?::VARCHAR[]))",
                [[c for c, _ in near]]).fetchall()} if near else {}
        detail["near"] = [{"clip_id": c, "sim": s, "kept": info.get(c, (None, None))[0],
                           "reason": info.get(c, (None, None))[1]} for c, s in near]
    html = jinja_env.get_template("clip.html").render(d=detail, c=detail["clip"], reasons=labels_mod.REASONS,
                                                 writable=access.writable,
                                                 origin=request.query_params.get("origin", "browse"))
    reads.clip_pages.put(stamp, key, html)  # kept until the catalog changes (a label, a job's commit)
    return HTMLResponse(html, headers={CACHE_HEADER: "miss"})


def _served(request: Request, window: clip_bytes.Window) -> Response:
    try:
        rng = clip_bytes.parse_range(request.headers.get("range"), window.size)
    except ValueError:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{window.size}"})
    start, end = rng if rng else (0, window.size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1), "Cache-Control": "private, max-age=3600"}
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end}/{window.size}"
    return StreamingResponse(clip_bytes.read_window(window, start, end), status_code=206 if rng else 200,
                             headers=headers, media_type=window.media_type)


def clip_media(request: Request) -> Response:
    """The clip's bytes: ``?from=file`` (the extracted clip), ``shard`` (its tar member), default either."""
    clip_id = check_id(request.path_params["clip_id"])
    source = request.query_params.get("from", "auto")
    if source not in ("auto", "file", "shard"):
        raise Refused("from is file, shard or auto")
    s: ServeSettings = request.app.state.settings
    with request.app.state.access.read() as con:
        rows = con.execute("SELECT w.clip_path, w.media_type, w.shard_id, s.source_path, w.first_frame, w.last_frame, "
                           "s.fps FROM clips_wide w LEFT JOIN sources s USING (source_id) WHERE w.clip_id = ?",
                           [clip_id]).fetchall()
        shards = [(s["url"], s["sha256"]) for s in grid_queries.clip_shard(con, rows[0][2])] if rows else []
    if not rows:
        return error_page(f"no clip {clip_id} in the catalog", 404)
    clip_path, media_type, _shard, source_path, first, last, fps = rows[0]
    problems = []
    if source in ("auto", "file") and clip_path:
        if not inside_roots(clip_path, s.roots):
            problems.append("the clip's file lies outside the served folders")
        else:
            try:
                return _served(request, clip_bytes.file_window(clip_path))
            except clip_bytes.MediaError as e:
                problems.append(str(e))
    if source in ("auto", "shard"):
        ext = "jpg" if media_type == "image" else "mp4"
        for url, sha in shards:
            if not inside_roots(url, s.roots):
                problems.append("the shard lies outside the served folders")
                continue
            try:
                return _served(request, request.app.state.shards.member(url, sha, f"{clip_id}.{ext}"))
            except clip_bytes.MediaError as e:
                problems.append(str(e))
    if source == "auto" and not clip_path and not shards and media_type == "video" and source_path:
        # never extracted (a recipe dropped it before encoding): a preview from its source frames
        if not inside_roots(source_path, s.roots):
            problems.append("the clip's source lies outside the served folders")
        else:
            try:
                return _served(request, request.app.state.previews.window(clip_id, source_path, first, last, fps))
            except clip_bytes.MediaError as e:
                problems.append(str(e))
    return PlainTextResponse("; ".join(problems) or f"clip {clip_id} has no file and no shard", status_code=404)


def still_media(request: Request) -> Response:
    clip_id = check_id(request.path_params["clip_id"])
    s: ServeSettings = request.app.state.settings
    with request.app.state.access.read() as con:
        rows = con.execute("SELECT first_frame_path FROM clips_wide WHERE clip_id = ?", [clip_id]).fetchall()
    if not rows or not rows[0][0] or not inside_roots(rows[0][0], s.roots):
        return Response(status_code=404)
    try:
        return _served(request, clip_bytes.file_window(rows[0][0]))
    except clip_bytes.MediaError:
        return Response(status_code=404)


async def post_label(request: Request) -> Response:
    try:
        body = await request.json()
    except (ValueError, json.JSONDecodeError):
        raise Refused("a label is a JSON object {clip_id, label, reason}") from None
    if not isinstance(body, dict):
        raise Refused("a label is a JSON object {clip_id, label, reason}")

    s: ServeSettings = request.app.state.settings
    row = await run_in_threadpool(labels_mod.add_label, request.app.state.access, str(body.get("clip_id", "")),
                                  str(body.get("label", "")), body.get("reason"), s.who,
                                  str(body.get("origin") or "browse"))
    return JSONResponse({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})


def _on_refused(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith(("/api/", "/media/")):
        return PlainTextResponse(f"refused: {exc}", status_code=400)
    return error_page(str(exc), 400)


def _on_catalog(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"catalog unavailable: {exc}", status_code=503)


def make_app(settings: ServeSettings, access: CatalogAccess | None = None) -> Starlette:
    static = StaticFiles(packages=[("vidcorpus.serve", "static")])
    routes = [
        Route("/", index),
        Route("/clip/{clip_id}", clip_page),
        Route("/media/clip/{clip_id}", clip_media),
        Route("/media/still/{clip_id}", still_media),
        Route("/api/labels", post_label, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        *measure_routes(),
        Mount("/static", app=static, name="static"),
    ]
    access = access or CatalogAccess(settings.catalog, query_threads=settings.query_threads)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if settings.request_threads:  # the pool Starlette runs the (blocking) handlers in
            anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        app.state.request_threads = anyio.to_thread.current_default_thread_limiter().total_tokens
        yield
        if app.state.reads.warmer is not None:
            app.state.reads.warmer.stop()
        access.close()  # the read connection the last requests left open (and the warmer's last load)

    app = Starlette(routes=routes, middleware=[Middleware(Guard)], lifespan=lifespan,
                    exception_handlers={Refused: _on_refused, CatalogError: _on_catalog})
    app.state.settings = settings
    app.state.access = access
    app.state.reads = CachedReads(Warmer(access) if access.writable else None)  # (a snapshot: no row ids)
    app.state.shards = clip_bytes.ShardIndex()
    app.state.previews = Previews()
    app.state.where_cache = {}
    app.state.neighbours = Neighbours(settings.roots)
    return app
