"""The web server: tile, export and session-file routes, the viewer's static files, the Gradio UI.

Routes (outside Gradio's queue; the unguessable session key in the URL is the access check):

* ``GET /tiles/{key}/{gen}/{level}/{x}_{y}.png``: a Deep Zoom tile of view ``gen`` of a session
  (see :mod:`app.deepzoom`). A view never changes, so tiles are sent ``immutable`` and kept in
  a byte-bounded LRU; misses are rendered on the tile pool, newest request first (see
  :mod:`app.tiles`). A full queue, or a render not ready within ``Limits.tile_wait``, gets 503
  with ``Retry-After`` (the viewer retries then); a request whose client left is withdrawn.
* ``GET /export/{key}/{gen}/image.png?width=&height=``: the whole image at any size within the
  limit, streamed strip by strip; ``.../deepzoom.zip`` the same as a Deep Zoom folder.
* ``GET /session/{key}/infd-session.zip``: the session file (image, boxes, prompts).
* ``POST /view/{key}/{gen}?level=&x0=&y0=&x1=&y1=``: the tiles the viewer shows (during a run), so
  that the finished picture's tiles are rendered before the viewer asks for them.
* ``/infd/osd/`` (vendored OpenSeadragon) and ``/infd/viewer/`` (viewer.js, viewer.css).

Bad input gets a 4xx with a JSON ``detail``: unknown/expired session or view and tiles outside
the pyramid 404, non-numeric parameters 422, exports over the limit 400, too many exports 429
(an export holds its slot until its response ends: done, client gone, or ``Limits.export_seconds``).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from infd_core import configs
from infd_core.geometry import MAX_SIDE, Size
from infd_core.pipeline import Pipeline, assets_dir, default_model_dir

from .context import AppContext, Limits, client_of
from .deepzoom import stream_deepzoom_zip, stream_png
from .exports import ExportJob, ExportResponse
from .sessionfile import dump as dump_session
from .sessions import Session, SessionNotFound, View
from .tiles import Overloaded
from .ui import STATIC, build_ui

IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}
POLL = 0.25  # seconds between checks that a client waiting for a tile is still connected
NO_STORE = {"Cache-Control": "no-store"}


def _lookup(ctx: AppContext, key: str, gen: int) -> tuple[Session, View]:
    try:
        session = ctx.store.get(key)
    except SessionNotFound as e:
        raise HTTPException(404, e.args[0], headers=NO_STORE) from None
    view = session.get_view(gen)
    if view is None:
        raise HTTPException(404, "no such image version (it was replaced; reload the view)", headers=NO_STORE)
    return session, view


def _export_job(ctx: AppContext, client: str | None) -> ExportJob:
    job = ctx.exports.start(ctx.limits.export_seconds, client=client, stall_s=ctx.limits.export_stall)
    if job is None:
        why = ctx.exports.refusal(client) or "no export slot is free; try again in a moment"
        raise HTTPException(429, why, headers={**NO_STORE, "Retry-After": "10"})
    return job


def _overloaded(ctx: AppContext) -> HTTPException:
    retry = str(ctx.limits.tile_retry_after)
    return HTTPException(503, "the server is busy; retry shortly", headers={**NO_STORE, "Retry-After": retry})


async def _wait_for_tile(request: Request, ctx: AppContext, cache_key: tuple, render: Callable[[], bytes]) -> bytes:
    """The rendered tile; 503 if the queue is full or the render takes over ``tile_wait`` s.

    While waiting, checks every :data:`POLL` s whether the client is still there; if it left,
    the request withdraws (its render is dropped if nobody else waits for it).
    """
    try:
        job = ctx.workers.submit(cache_key, render)
    except Overloaded:
        raise _overloaded(ctx) from None
    waiting = asyncio.wrap_future(job)
    deadline = asyncio.get_running_loop().time() + ctx.limits.tile_wait
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=POLL)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                raise HTTPException(499, "client closed the request", headers=NO_STORE)
            if asyncio.get_running_loop().time() > deadline:
                raise _overloaded(ctx)
    finally:
        if not waiting.done():
            ctx.workers.withdraw(cache_key, job)


def add_routes(app: FastAPI, ctx: AppContext) -> None:
    """The tile, export and session-file routes."""

    @app.get("/tiles/{key}/{gen}/{level}/{x}_{y}.png")
    async def tile(request: Request, key: str, gen: int, level: int, x: int, y: int) -> Response:
        session, view = _lookup(ctx, key, gen)
        try:
            cache_key = ctx.tile_key(view, level, x, y)  # a tile outside the pyramid: ValueError
        except ValueError as e:
            raise HTTPException(404, str(e), headers=NO_STORE) from None
        data = ctx.cache.get(cache_key)
        if data is None:
            data = await _wait_for_tile(request, ctx, cache_key, lambda: ctx.tile_png(session, view, level, x, y))
            ctx.cache.put(cache_key, data)
        return Response(data, media_type="image/png", headers=IMMUTABLE)

    @app.post("/view/{key}/{gen}")
    def view_region(key: str, gen: int, level: int, x0: int, y0: int, x1: int, y1: int) -> Response:
        """The viewer shows tiles ``x0..x1``, ``y0..y1`` of ``level`` of view ``gen`` (and coarser
        levels under them): where the next picture's tiles are rendered first."""
        session, view = _lookup(ctx, key, gen)
        try:
            session.show_tiles(view.pyramid.view_tiles(level, x0, y0, x1, y1))
        except ValueError as e:
            raise HTTPException(404, str(e), headers=NO_STORE) from None
        return Response(status_code=204, headers=NO_STORE)

    def export(request: Request, key: str, gen: int, size: Size, deepzoom: bool) -> StreamingResponse:
        session, view = _lookup(ctx, key, gen)
        try:
            ctx.check_export(size)
        except ValueError as e:
            raise HTTPException(400, str(e), headers=NO_STORE) from None
        field_ = ctx.store.field(session, view, ctx.pipe)  # cheap (one decoder pass) next to the export
        job = _export_job(ctx, client_of(request))

        def before_strip() -> None:  # stop rendering once the response is over; let tiles go first
            job.check()
            ctx.workers.yield_to_tiles()

        seed = view.picture.seed
        stem = f"infd-{'seed' + str(seed) if seed is not None else 'image'}-{size}"
        if deepzoom:
            chunks = stream_deepzoom_zip(ctx.pipe, field_, size, name=stem, before_tile=before_strip)
            media, name = "application/zip", f"{stem}-deepzoom.zip"
        else:
            chunks = stream_png(ctx.pipe, field_, size, before_strip=before_strip)
            media, name = "image/png", f"{stem}.png"
        headers = {**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'}
        return ExportResponse(chunks, job, media_type=media, headers=headers)

    @app.get("/export/{key}/{gen}/image.png")
    def export_png(request: Request, key: str, gen: int, width: int = Query(gt=0, le=MAX_SIDE),
                   height: int = Query(gt=0, le=MAX_SIDE)) -> StreamingResponse:
        return export(request, key, gen, Size(height, width), deepzoom=False)

    @app.get("/export/{key}/{gen}/deepzoom.zip")
    def export_deepzoom(request: Request, key: str, gen: int, width: int = Query(gt=0, le=MAX_SIDE),
                        height: int = Query(gt=0, le=MAX_SIDE)) -> StreamingResponse:
        return export(request, key, gen, Size(height, width), deepzoom=True)

    @app.get("/session/{key}/infd-session.zip")
    def session_file(key: str) -> Response:
        try:
            session = ctx.store.get(key)
        except SessionNotFound as e:
            raise HTTPException(404, e.args[0], headers=NO_STORE) from None
        with session.lock:
            data = dump_session(session.state, session.canvas, ctx.model_name)
        headers = {**NO_STORE, "Content-Disposition": 'attachment; filename="infd-session.zip"'}
        return Response(data, media_type="application/zip", headers=headers)


def load_pipeline(model: str | Path | None = None, *, device: str = "cpu",
                  precision: str = "auto") -> tuple[Pipeline, str]:
    """The model to serve and a note for the UI header.

    ``model`` None means the default model folder; if that is not installed (yet), a randomly
    initialised pipeline of the cpu preset is used, noted as "random weights". An explicit
    ``model`` that cannot be loaded raises :class:`~infd_core.checkpoint.CheckpointError`.
    """
    if model is None and not default_model_dir().is_dir():
        return Pipeline.from_config(configs.cpu(), seed=0, device=device, precision=precision), "random weights"
    return Pipeline.load(model, device=device, precision=precision), ""


def create_app(pipe: Pipeline, *, limits: Limits | None = None, scorer: str | None = None,
               model_note: str = "") -> FastAPI:
    """The whole app around ``pipe`` (tests inject a small random pipeline here).

    The context is available as ``app.state.ctx`` (sessions, caches, limits).
    """
    ctx = AppContext(pipe, limits or Limits(), scorer_spec=scorer, model_note=model_note)
    app = FastAPI(title="infd", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    add_routes(app, ctx)
    app.mount("/infd/osd", StaticFiles(directory=assets_dir() / "openseadragon"), name="openseadragon")
    app.mount("/infd/viewer", StaticFiles(directory=STATIC), name="viewer")
    demo = build_ui(ctx)
    gr.mount_gradio_app(app, demo, path="/", ssr_mode=False, css_paths=[STATIC / "viewer.css"],
                        max_file_size="64mb", footer_links=[], theme=gr.themes.Soft())
    return app

