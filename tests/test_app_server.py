"""The app's server side without a browser: tile route, caching, session isolation, bad input, files.

Uses the cpu preset with fixed-seed random weights (mechanics, not the shipped model's quality);
pictures are random latents, so no sampling is needed except in the generation tests.
"""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data
from safetensors.torch import save as save_tensors

from app import sessionfile, spill
from app.context import Limits
from app.deepzoom import Pyramid, encode_png
from app.generate import (Cancelled, Composition, Finished, PreviewPacer, Progress, composition_layout, extend_picture,
                          generate, open_photo)
from app.handlers import Handlers, ViewerEvent, apply_box_edit, number, report_markdown
from app.server import create_app
from app.sessions import KEEP_VIEWS, Picture, Session, State
from app.store import SessionStore
from app.tiles import ByteLRU, TileWorkers
from infd_core import configs, guidance
from infd_core.geometry import Box, Size
from infd_core.regions import Region
from infd_core.pipeline import Pipeline
from infd_core.images import read_photo

EXPORT_LIMIT = 640 * 480


@pytest.fixture(scope="module")
def server():
    pipe = Pipeline.from_config(configs.cpu(), seed=0)  # the mechanics, not the shipped model's quality
    app = create_app(pipe, limits=Limits(max_export_pixels=EXPORT_LIMIT, concurrent_exports=1))
    with TestClient(app) as client:
        yield client, app.state.ctx


def new_session(ctx, seed: int = 0, canvas: Size = Size(1024, 1024)) -> Session:
    """A session showing a random latent (no sampling needed)."""
    s = ctx.store.create(canvas=canvas)
    z = torch.randn((1, *ctx.pipe.latent_shape), generator=torch.Generator().manual_seed(seed))
    s.commit(State(Picture(z, seed=seed)))
    return s


def tile_url(s: Session, level: int | str, x: int | str, y: int | str, gen: int | str | None = None) -> str:
    return f"/tiles/{s.key}/{s.view.gen if gen is None else gen}/{level}/{x}_{y}.png"


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- tiles ------------------------------------------------------------------------------------------

def test_tile_is_the_matching_part_of_a_whole_render_and_cached_immutably(server):
    client, ctx = server
    s = new_session(ctx)
    r = client.get(tile_url(s, 10, 1, 2))  # level 10 of a 1024 canvas = the canvas itself
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
    tile = png(r.content)
    assert tile.shape == (258, 258, 3)  # 256 + one pixel of overlap on both sides (an interior tile)
    field = ctx.pipe.field(s.state.picture.latent)
    whole = ctx.pipe.render(field, 1024, 1024)
    assert np.array_equal(tile, whole[511:769, 255:513])
    hits = len(ctx.cache)
    assert client.get(tile_url(s, 10, 1, 2)).content == r.content and len(ctx.cache) == hits


def test_views_of_one_picture_share_the_tiles_of_equal_levels(server):
    """Level 10 of a 1024² canvas is level 10 of a 2048² one (the whole picture at 1024²): after a
    canvas switch, and again after an undo, the new view's tiles come from the cache, and they are
    still exact parts of the whole render. Another picture never gets them."""
    client, ctx = server
    s = new_session(ctx, seed=8)
    first = client.get(tile_url(s, 10, 1, 2)).content
    s.set_canvas(Size(2048, 2048))
    assert s.view.pyramid.max_level == 11
    hits = len(ctx.cache)
    assert client.get(tile_url(s, 10, 1, 2)).content == first and len(ctx.cache) == hits
    field = ctx.pipe.field(s.state.picture.latent)
    assert np.array_equal(png(first), ctx.pipe.render(field, 1024, 1024)[511:769, 255:513])
    picture = s.state.picture
    z = torch.randn((1, *ctx.pipe.latent_shape), generator=torch.Generator().manual_seed(9))
    s.commit(State(Picture(z, seed=9)))
    other = client.get(tile_url(s, 10, 1, 2)).content
    assert other != first and len(ctx.cache) == hits + 1
    s.undo()
    assert s.view.picture is picture
    assert client.get(tile_url(s, 10, 1, 2)).content == first and len(ctx.cache) == hits + 1


def test_png_tiles_decode_to_the_rendered_pixels():
    rnd = np.random.default_rng(0)
    for shape in [(258, 258, 3), (1, 1, 3), (3, 130, 3), (130, 2, 3)]:
        rgb = rnd.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(png(encode_png(rgb)), rgb)
    smooth = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 256, 3))
    assert np.array_equal(png(encode_png(smooth)), smooth) and len(encode_png(smooth)) < 4000


def test_concurrent_tile_requests_each_get_their_own_tile(server):
    """16 requests at once (more than the pool has threads): each answer is its own part of the
    whole render, at two levels."""
    client, ctx = server
    s = new_session(ctx, seed=5)
    field = ctx.pipe.field(s.state.picture.latent)
    wholes = {10: ctx.pipe.render(field, 1024, 1024), 9: ctx.pipe.render(field, 512, 512)}
    positions = [(10, x, y) for y in range(3) for x in range(4)] + [(9, x, y) for y in range(2) for x in range(2)]

    def get(t: tuple[int, int, int]):  # like the viewer: a 503 (busy machine) is retried after Retry-After
        for _ in range(30):
            r = client.get(tile_url(s, *t))
            if r.status_code != 503:
                return r
            time.sleep(float(r.headers["retry-after"]))
        return r

    with ThreadPoolExecutor(len(positions)) as pool:
        answers = list(pool.map(get, positions))
    for (level, x, y), r in zip(positions, answers, strict=True):
        assert r.status_code == 200
        rng = s.view.pyramid.tile_range(level, x, y)
        assert np.array_equal(png(r.content), wholes[level][rng.r0:rng.r1, rng.c0:rng.c1]), (level, x, y)


def test_a_finished_run_prerenders_the_tiles_the_viewer_shows(server):
    """The viewer reports its view during a run; the finished picture's tiles there are rendered as
    soon as it is committed, before the viewer asks: exact parts of the new picture's render,
    served from the cache."""
    client, ctx = server
    s = new_session(ctx, seed=6)
    r = client.post(f"/view/{s.key}/{s.view.gen}", params=dict(level=10, x0=1, y0=1, x1=2, y1=1))
    assert r.status_code == 204
    shown = [(10, 1, 1), (10, 2, 1)]
    assert s.showing == shown
    view = list(generate(ctx, s, seed=7, steps=2))[-1].view
    ctx.workers.yield_to_tiles(max_wait=60)
    field = ctx.pipe.field(view.picture.latent)
    for level, x, y in shown:
        data = ctx.cache.get(ctx.tile_key(view, level, x, y))
        assert data is not None, (level, x, y)
        rng = view.pyramid.tile_range(level, x, y)
        assert np.array_equal(png(data), ctx.pipe.render(field, *view.pyramid.level_size(level), rng))
        assert client.get(tile_url(s, level, x, y, gen=view.gen)).content == data
    assert ctx.cache.get(ctx.tile_key(view, 10, 0, 0)) is None  # only what was shown
    assert ctx.cache.get(ctx.tile_key(view, 9, 0, 0)) is None  # not the coarser levels either


def test_view_reports_are_bounded_and_checked(server):
    client, ctx = server
    s = new_session(ctx, seed=8, canvas=Size(8192, 8192))
    assert client.post(f"/view/{s.key}/{s.view.gen}",
                       params=dict(level=13, x0=-5, y0=0, x1=99, y1=99)).status_code == 204
    assert len(s.showing) == 64 and all(lv == 13 and 0 <= x < 32 and 0 <= y < 32 for lv, x, y in s.showing)  # clipped
    for params, status in [(dict(level=14, x0=0, y0=0, x1=0, y1=0), 404), (dict(level=2, x0=0, y0=0, x1=0, y1=0), 404),
                           (dict(level="a", x0=0, y0=0, x1=0, y1=0), 422)]:
        assert client.post(f"/view/{s.key}/{s.view.gen}", params=params).status_code == status
    assert client.post(f"/view/{'x' * 32}/1", params=dict(level=13, x0=0, y0=0, x1=0, y1=0)).status_code == 404


def test_low_levels_are_whole_image_renders(server):
    client, ctx = server
    s = new_session(ctx, canvas=Size.parse("1000x600"))
    p = Pyramid(height=600, width=1000)
    assert p.max_level == 10 and str(p.level_size(10)) == "1000x600"
    assert str(p.level_size(9)) == "500x300" and p.level_size(0) == (1, 1) and p.min_level == 8
    for level in (0, 3, p.min_level):
        h, w = p.level_size(level)
        assert png(client.get(tile_url(s, level, 0, 0)).content).shape == (h, w, 3)


@pytest.mark.parametrize("level, x, y, status", [
    (11, 0, 0, 404),     # above the top level
    (-1, 0, 0, 404),
    (10, 4, 0, 404),     # one column too far (4 tiles of 256 in 1024)
    (10, 0, 99, 404),
    (10, -1, 0, 404),
    ("ten", 0, 0, 422),  # not numbers
    (10, "a", 0, 422),
    (10, 0, "1e3", 422),
    (10, 0.5, 0, 422),
])
def test_bad_tile_coordinates(server, level, x, y, status):
    client, ctx = server
    s = new_session(ctx)
    r = client.get(tile_url(s, level, x, y))
    assert r.status_code == status
    assert status == 422 or r.headers["cache-control"] == "no-store"


def test_unknown_gen_and_sessions_and_traversal(server):
    client, ctx = server
    s = new_session(ctx)
    assert client.get(tile_url(s, 10, 0, 0, gen=s.view.gen + 1)).status_code == 404
    assert client.get(tile_url(s, 10, 0, 0, gen="latest")).status_code == 422
    fake = "A" * 32
    for path in (f"/tiles/{fake}/1/10/0_0.png", "/tiles/short/1/10/0_0.png",
                 f"/tiles/{s.key[:-1]}/1/10/0_0.png", f"/tiles/..%2F..%2F{s.key}/1/10/0_0.png",
                 f"/tiles/{s.key}/1/10/0_0.jpg", "/infd/viewer/..%2F..%2Fapp.py", "/infd/osd/../../app/ui.py",
                 f"/export/{fake}/1/image.png?width=8&height=8", f"/session/{fake}/infd-session.zip"):
        assert client.get(path).status_code == 404, path
    assert client.get("/infd/viewer/viewer.js").status_code == 200
    assert client.get("/infd/osd/openseadragon.min.js").status_code == 200


def test_sessions_are_isolated(server):
    client, ctx = server
    a, b = new_session(ctx, seed=1), new_session(ctx, seed=2)
    assert a.key != b.key and a.view.gen == b.view.gen  # same tile path apart from the key
    ta, tb = client.get(tile_url(a, 10, 0, 0)).content, client.get(tile_url(b, 10, 0, 0)).content
    assert ta != tb
    ctx.store.delete(a.key)
    assert client.get(tile_url(a, 10, 0, 0)).status_code == 404  # even though the tile is cached
    assert client.get(tile_url(b, 10, 0, 0)).content == tb


def test_a_new_picture_gets_a_new_gen_and_old_views_expire(server):
    client, ctx = server
    s = new_session(ctx)
    first = s.view.gen
    for seed in range(KEEP_VIEWS):
        s.commit(State(Picture(torch.randn(1, *ctx.pipe.latent_shape), seed=seed)))
    assert s.view.gen == first + KEEP_VIEWS
    assert client.get(tile_url(s, 8, 0, 0, gen=first)).status_code == 404  # no longer kept
    assert client.get(tile_url(s, 8, 0, 0, gen=first + 1)).status_code == 200
    s.set_canvas(Size.parse("2048x1024"))
    assert s.view.gen == first + KEEP_VIEWS + 1 and client.get(tile_url(s, 11, 7, 3)).status_code == 200


# --- exports --------------------------------------------------------------------------------------

def test_export_png_is_the_whole_render_at_the_requested_size(server):
    client, ctx = server
    s = new_session(ctx)
    r = client.get(f"/export/{s.key}/{s.view.gen}/image.png?width=300&height=200")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    img = png(r.content)
    assert img.shape == (200, 300, 3)
    assert np.array_equal(img, ctx.pipe.render(ctx.pipe.field(s.state.picture.latent), 200, 300))


def test_export_deepzoom_zip_has_every_tile(server):
    client, ctx = server
    s = new_session(ctx)
    r = client.get(f"/export/{s.key}/{s.view.gen}/deepzoom.zip?width=600&height=300")
    assert r.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    p = Pyramid(height=300, width=600)
    assert sum(rows * cols for rows, cols in map(p.tile_count, range(p.max_level + 1))) == len(names) - 1
    assert names[0].endswith(".dzi") and any(n.endswith("_files/10/2_1.png") for n in names)


@pytest.mark.parametrize("query, status", [
    ("width=641&height=480", 400),     # over the limit
    ("width=100000&height=1", 400),
    ("width=0&height=10", 422),
    ("width=-5&height=10", 422),
    ("width=abc&height=10", 422),
    ("width=10", 422),                  # missing height
])
def test_bad_exports(server, query, status):
    client, ctx = server
    s = new_session(ctx)
    assert client.get(f"/export/{s.key}/{s.view.gen}/image.png?{query}").status_code == status


def test_too_many_exports_at_once(server):
    client, ctx = server
    s = new_session(ctx)
    assert ctx.exports.acquire()  # the only slot (concurrent_exports=1)
    try:
        assert client.get(f"/export/{s.key}/{s.view.gen}/image.png?width=8&height=8").status_code == 429
    finally:
        ctx.exports.release()
    assert client.get(f"/export/{s.key}/{s.view.gen}/image.png?width=8&height=8").status_code == 200


# --- session files --------------------------------------------------------------------------------

def test_session_file_round_trip(server):
    client, ctx = server
    s = new_session(ctx, seed=7, canvas=Size.parse("3000x1500"))
    ref = np.full((20, 30, 3), 200, np.uint8)
    s.commit(s.state.with_box(Region(Box(0.1, 0.2, 0.5, 0.6), prompt="a red apple", weight=2.0, id="b1")))
    s.commit(s.state.with_box(Region(Box(0.5, 0.5, 0.9, 0.9), kind="image", image=ref, placement="soft", id="b2")))
    s.commit(State(s.state.picture, s.state.boxes, "a still life"))
    r = client.get(f"/session/{s.key}/infd-session.zip")
    assert r.status_code == 200
    loaded = sessionfile.load(r.content, ctx.pipe, max_canvas_side=65536)
    assert str(loaded.canvas) == "3000x1500" and loaded.seed == 7 and not loaded.warnings
    assert torch.equal(loaded.state.picture.latent, s.state.picture.latent)
    assert loaded.state.global_prompt == "a still life"
    assert [b.to_json() for b in loaded.state.boxes] == [b.to_json() for b in s.state.boxes]
    assert np.array_equal(loaded.state.boxes[1].image, ref)


def _zip(meta: dict | bytes | None, latent: torch.Tensor | None = None, **members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if meta is not None:
            zf.writestr("session.json", meta if isinstance(meta, bytes) else json.dumps(meta))
        if latent is not None:
            zf.writestr("latent.safetensors", save_tensors({"latent": latent}))
        for name, raw in members.items():
            zf.writestr(name.replace("_", "."), raw)
    return buf.getvalue()


GOOD = {"format": "infd-session", "version": 1, "model": "x", "seed": 1, "canvas": [1024, 1024],
        "global_prompt": "", "boxes": []}


@pytest.mark.parametrize("data, message", [
    (b"not a zip", "not an infd session file"),
    (_zip(None), "no session.json"),
    (_zip(b"{broken"), "not valid JSON"),
    (_zip({**GOOD, "format": "other"}), "not an infd session"),
    (_zip({**GOOD, "version": 99}), "unsupported session file version"),
    (_zip({**GOOD, "canvas": [0, 10]}), "canvas must be"),
    (_zip({**GOOD, "canvas": [10 ** 9, 10]}), "canvas must be"),
    (_zip({**GOOD, "seed": "zero"}), "seed must be"),
    (_zip({**GOOD, "boxes": [{"id": "a", "x0": 0.5, "y0": 0, "x1": 0.2, "y1": 1}]}), "positive area"),
    (_zip({**GOOD, "boxes": [{"id": "../x", "x0": 0, "y0": 0, "x1": 1, "y1": 1}]}), "region id"),
    (_zip({**GOOD, "boxes": [{"id": "a", "x0": 0, "y0": 0, "x1": 1, "y1": 1, "kind": "magic"}]}), "kind"),
    (_zip({**GOOD, "boxes": [{"id": "a", "x0": 0, "y0": 0, "x1": 1, "y1": 1, "has_image": True}]}), "no boxes/a.png"),
    (_zip({**GOOD, "boxes": ["box"]}), "JSON object"),
    (_zip(GOOD, torch.zeros(1, 3, 8, 8)), "does not fit this model"),
    (_zip(GOOD, torch.full((1, 3, 64, 64), float("nan"))), "does not fit this model"),
    (_zip(GOOD, sketch_png=b"not a png"), "the sketch is damaged"),
    (_zip({**GOOD, "boxes": [{"id": "a", "box": [0, 0, 1, 1], "image": "/etc/passwd"}]}), "relative to the layout"),
])
def test_malformed_session_files_are_refused_with_a_reason(server, data, message):
    _, ctx = server
    with pytest.raises(ValueError, match=message):
        sessionfile.load(data, ctx.pipe, max_canvas_side=65536)


# --- state: boxes, undo/redo, eviction -------------------------------------------------------------

def test_box_edits_undo_and_redo():
    s = Session("k" * 32)
    apply_box_edit(s, {"op": "add", "rev": 1, "box": {"id": "b1", "x0": 0.1, "y0": 0.1, "x1": 0.4, "y1": 0.3}})
    apply_box_edit(s, {"op": "update", "rev": 2, "box": {"id": "b1", "x0": 0.2, "y0": 0.1, "x1": 0.5, "y1": 0.3}})
    assert s.client_rev == 2 and s.selected == "b1" and s.state.box("b1").box.x0 == 0.2
    apply_box_edit(s, {"op": "delete", "rev": 3, "id": "b1"})
    assert s.state.boxes == () and s.selected is None
    assert s.undo() and s.state.box("b1").box.x0 == 0.2
    assert s.undo() and s.state.box("b1").box.x0 == 0.1
    assert s.redo() and s.redo() and not s.redo() and s.state.boxes == ()
    for bad in ({"op": "add", "box": {"id": "b2", "x0": 0.5, "y0": 0, "x1": 0.1, "y1": 1}},
                {"op": "add", "box": {"id": "b2", "x0": "a", "y0": 0, "x1": 0.1, "y1": 1}},
                {"op": "update", "box": {"id": "nope", "x0": 0, "y0": 0, "x1": 1, "y1": 1}},
                {"op": "explode"}, "junk"):
        with pytest.raises(ValueError):
            apply_box_edit(s, bad)
    assert s.state.boxes == ()


def test_ui_numbers_are_checked():
    assert number("12", "steps", 1, 100, whole=True) == 12 and number(2.5, "weight", 0, 10) == 2.5
    for bad in (None, "", "x", 2.5, 0, 101, float("nan"), float("inf")):
        with pytest.raises(gr.Error, match="steps must be a whole number"):
            number(bad, "steps", 1, 100, whole=True)


def test_store_evicts_idle_and_oldest_sessions_but_not_busy_ones():
    now = [0.0]
    store = SessionStore(max_sessions=3, ttl=100, clock=lambda: now[0])
    a = store.create()
    now[0] = 50
    b = store.create()
    now[0] = 120  # a has been idle for 120 s > ttl
    store.create()
    with pytest.raises(KeyError):
        store.get(a.key)
    b.runner._active.acquire()  # b is the oldest, but generating
    try:
        keys = [store.create().key for _ in range(3)]
    finally:
        b.runner._active.release()
    assert len(store) == 3 and store.get(b.key) is b
    assert [k in store._sessions for k in keys] == [False, True, True]


def test_store_drops_decoded_fields_before_sessions():
    store = SessionStore(max_bytes=10 << 20)

    class FakePipe:  # decodes into 4 MB fields
        def field(self, z):
            return type("Field", (), {"phi": torch.zeros(1 << 20)})()

    s = store.create()
    pics = [Picture(torch.zeros(1, 3, 64, 64)) for _ in range(3)]
    for p in pics:
        s.commit(State(p))
        store.field(s, s.view, FakePipe())
    assert [p.field_bytes > 0 for p in pics] == [False, True, True]  # the least recently used one went
    assert store.get(s.key) is s


def test_tile_workers_run_newest_first_and_merge_duplicates():
    workers = TileWorkers(threads=1)
    gate = threading.Event()
    order: list[str] = []
    blocker = workers.submit("blocker", lambda: gate.wait() and b"")
    futures = [workers.submit(k, lambda k=k: order.append(k) or k.encode()) for k in ("a", "b", "c")]
    assert workers.submit("b", lambda: b"other") is futures[1]
    gate.set()
    assert [f.result(5) for f in futures] == [b"a", b"b", b"c"] and blocker.result(5) == b""
    assert order == ["c", "b", "a"]
    workers.yield_to_tiles(max_wait=5)
    assert not workers.busy


def test_byte_lru_is_bounded_by_bytes():
    cache = ByteLRU(10)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    cache.get("a")
    cache.put("c", b"123")
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.nbytes == 8
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None


# --- generation -----------------------------------------------------------------------------------

def cancel_after_first_event(s: Session, run) -> None:
    """Cancel a model run once it has started; it raises Cancelled and lets go of the session."""
    next(run)
    assert s.runner.running
    threading.Thread(target=s.runner.cancel).start()
    with pytest.raises(Cancelled):
        list(run)
    deadline = time.monotonic() + 10
    while s.runner.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not s.runner.running


def test_previews_are_paced_by_time_and_none_in_the_last_steps():
    now = [0.0]

    def shown(every: float, step_s: float, steps: int = 10) -> list[int]:
        pacer = PreviewPacer(every, clock=lambda: now[0])
        out = []
        for done in range(1, steps + 1):
            now[0] += step_s
            if pacer.due(done, steps):
                out.append(done)
        return out

    assert shown(0.7, 0.3) == [3, 6]  # 0.9 s apart; after step 9 only 0.3 s are left
    assert shown(0.7, 0.05) == []  # a half-second run: the final picture comes as soon as a preview would
    assert shown(0.0, 0.05) == list(range(1, 10))  # unpaced: every step but the last


def test_generate_previews_commits_and_cancels(server, monkeypatch):
    _, ctx = server
    monkeypatch.setattr(ctx, "limits", replace(ctx.limits, preview_every=0.0))
    s = ctx.store.create(canvas=Size(512, 512))
    events = list(generate(ctx, s, seed=3, steps=4))
    assert [type(e) for e in events] == [Progress] * 4 + [Finished]
    assert sum(e.preview is not None for e in events[:-1]) == 3  # every step but the last
    done = events[-1].view
    assert not done.preview and done.picture is s.state.picture and s.state.picture.seed == 3

    run = generate(ctx, s, seed=4, steps=20)
    cancel_after_first_event(s, run)
    assert s.state.picture is done.picture and s.view.picture is done.picture and not s.view.preview
    assert s.undo() and s.state.picture is None


def test_guided_generation_is_local_unless_asked_otherwise(server):
    """The "Boxes steer only near themselves" checkbox: guidance masked to the box (the default)
    or plain DPS over the whole latent; the report under the canvas says which."""
    _, ctx = server
    s = ctx.store.create(canvas=Size(512, 512))
    s.commit(State(None, boxes=(Region(Box(0.0, 0.0, 0.25, 0.25), kind="color", color=(1.0, 0.0, 0.0), id="red"),)))
    reports = {}
    for local in (True, False):
        events = list(generate(ctx, s, seed=5, steps=2, guided=True, scale=0.5, local=local))
        reports[local] = events[-1].report
    assert reports[True]["margin"] == guidance.MARGIN and reports[False]["margin"] is None
    assert f"near the boxes (margin {guidance.MARGIN:g})" in report_markdown(reports[True])
    assert "whole picture" in report_markdown(reports[False])
    assert s.state.picture.label.startswith("guided")


# --- opening a photo ------------------------------------------------------------------------------

def test_open_photo_encodes_refines_commits_and_cancels(server):
    _, ctx = server
    s = ctx.store.create(canvas=Size(512, 512))
    photo = Image.fromarray(data.chelsea())
    events = list(open_photo(ctx, s, photo, "cat.png"))
    assert [type(e) for e in events] == [Finished]
    first = s.state.picture
    assert first.label == "cat.png" and events[-1].view.picture is first
    expected = ctx.pipe.encode(photo.resize((256, 256), Image.Resampling.LANCZOS))
    assert torch.allclose(first.latent, expected.cpu())

    events = list(open_photo(ctx, s, photo, "cat.png", refine=3))
    assert [type(e) for e in events] == [Progress] * 3 + [Finished]
    assert [e.step for e in events[:-1]] == [1, 2, 3] and s.state.picture.label == "cat.png, refined 3 steps"
    assert not torch.equal(s.state.picture.latent, first.latent)
    refined = s.state.picture

    run = open_photo(ctx, s, photo, "other.png", refine=200)
    cancel_after_first_event(s, run)
    assert s.state.picture is refined and s.view.picture is refined
    assert s.undo() and s.state.picture is first  # opening a photo is an undo step


def test_an_opened_photo_gets_a_canvas_of_its_shape(server, tmp_path):
    """A 3:2 photo opened on a square canvas: the canvas becomes 3:2 with the same longest side (the
    photo is seen unsquashed); guided generation from it keeps that shape; a canvas the user then
    picks is left alone; undoing the opening brings the square back, redo the photo's; a spilled
    session keeps the shape; the handler shows the new canvas in the canvas and export fields."""
    _, ctx = server
    s = ctx.store.create(canvas=Size(512, 512))
    list(generate(ctx, s, seed=1, steps=1))
    square = s.state.picture
    assert square.photo_aspect is None and square.aspect == 1.0
    list(open_photo(ctx, s, Image.fromarray(data.chelsea()), "cat.png"))  # 451 x 300
    cat = s.state.picture
    assert cat.photo_aspect == pytest.approx(451 / 300) and cat.cells == (64, 64)
    assert str(s.canvas) == "512x341" and s.view.pyramid.size == s.canvas
    s.commit(s.state.with_box(Region(Box(0.0, 0.0, 0.25, 0.25), kind="color", color=(1.0, 0.0, 0.0), id="red")))
    list(generate(ctx, s, seed=2, steps=1, guided=True, scale=0.5))
    guided = s.state.picture
    assert guided.photo_aspect == cat.photo_aspect and str(s.canvas) == "512x341"
    s.set_canvas(Size(400, 400))
    assert s.canvas == (400, 400) and s.view.picture is guided
    s.set_canvas(Size.parse("512x341"))
    assert s.undo() and s.undo() and s.state.picture is cat and str(s.canvas) == "512x341"
    assert s.undo() and s.state.picture is square and s.canvas == (512, 512)
    assert s.redo() and s.state.picture is cat and str(s.canvas) == "512x341"
    back = spill.decode(s.key, spill.encode(s), time.time(), 65536)
    assert [p.photo_aspect for p in (st.picture for st in back.history) if p is not None][:2] == [None, cat.photo_aspect]
    with pytest.raises(ValueError, match="photo_aspect"):
        Picture(cat.latent, photo_aspect=0.0)
    strip = tmp_path / "strip.png"  # a 200:1 strip: the shorter side stops at the canvas's 16 px
    Image.new("RGB", (2000, 10), (200, 30, 30)).save(strip)
    s3 = ctx.store.create(canvas=Size(1024, 1024))
    *_, last = Handlers(ctx).open_photo(s3.key, str(strip), 0)
    assert str(s3.canvas) == "1024x16" and last[1] == "Encoded strip.png; loading the view…"

    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (40, 90, 160)).save(wide)
    s2 = ctx.store.create(canvas=Size(2048, 2048))
    *_, last = Handlers(ctx).open_photo(s2.key, str(wide), 0)
    assert str(s2.canvas) == "2048x1365" and last[2] == "custom" and last[5:] == [2048, 1365]
    assert (last[3]["value"], last[3]["visible"], last[4]["value"]) == (2048, True, 1365)


def test_uploaded_photos_are_checked(server, tmp_path):
    _, ctx = server
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not a jpeg" * 50)
    with pytest.raises(ValueError, match="garbage.jpg: not a readable image"):
        read_photo(garbage)
    big = tmp_path / "big.png"
    Image.new("RGB", (120, 100)).save(big)
    with pytest.raises(ValueError, match="big.png: the image is 120x100; at most 0.01 megapixels"):
        read_photo(big, max_pixels=10_000)
    assert read_photo(big).size == (120, 100)
    s = ctx.store.create(canvas=Size(512, 512))
    on = Handlers(ctx)
    for path, refine, match in ((None, 0, "No image received"), (str(big), -1, "refine steps must be"),
                                (str(big), 2.5, "refine steps must be"), (str(garbage), 0, "Could not open the photo")):
        with pytest.raises(gr.Error, match=match):
            list(on.open_photo(s.key, path, refine))
    assert s.state.picture is None
    updates = list(on.open_photo(s.key, str(big), 0))
    assert updates[-1][1] == "Encoded big.png; loading the view…" and s.state.picture.label == "big.png"
    # "Opened" once the viewer reports that view on screen, and only for that view
    gen = s.view.gen
    assert on.view_shown(s.key, ViewerEvent(None, {"gen": gen - 1})) != "Opened big.png."
    assert s.shown_status == (gen, "Opened big.png.")
    assert on.view_shown(s.key, ViewerEvent(None, {"gen": gen})) == "Opened big.png." and s.shown_status is None


def test_report_says_what_each_kind_asked_and_got():
    text = {"kind": "text", "prompt": "a cat", "known": False, "understood_as": "tabby 100%", "score": -1.0,
            "judge": -2.0, "before": {"score": -3.0, "judge": -2.5}, "changed": 12.5}
    md = report_markdown({"scorer": "offline", "scale": 0.2, "margin": 0.125, "held": True, "regions": [
        text, {"kind": "color", "color": [1, 0, 0], "mean_color": [0.5, 0, 0]}, {"kind": "keep", "changed": 0.4},
        {"kind": "image", "placed": "hard", "cells": 32.0}]})
    assert "the rest of the picture held" in md and "| ⚠ tabby 100% |" in md
    assert "score -1.00 (+2.00), judge -2.00 (+0.50)" in md and "| 12.5 |" in md
    assert "#ff0000 | mean #800000" in md and "placed (hard, 32.0 cells)" in md


def test_panorama_canvas_extend_undo_tiles_and_session_file(server):
    """A 2:1 canvas generates a 2:1 latent; extending it grows the latent, the canvas (at the same
    pixel density) and moves the boxes with their cells; undo brings all back; tiles of the
    panorama are parts of its whole render; a session file holds it."""
    client, ctx = server
    s = ctx.store.create(canvas=Size.parse("256x128"))
    events = list(generate(ctx, s, seed=1, steps=1))
    pano = s.state.picture
    assert isinstance(events[-1], Finished) and pano.cells == (64, 128)
    s.commit(s.state.with_box(Region(Box(0.5, 0.0, 1.0, 1.0), "keep", id="k1")))
    events = list(extend_picture(ctx, s, side="left", amount=64, seed=2, steps=1))
    wide = s.state.picture
    assert isinstance(events[-1], Finished) and wide.cells == (64, 192)
    assert torch.equal(wide.latent[..., 64:], pano.latent)
    assert str(s.canvas) == "384x128"  # 2 px per cell, as before
    b = s.state.box("k1").box
    assert (b.x0, b.x1) == pytest.approx((2 / 3, 1.0))  # the box moved with its cells
    whole = ctx.pipe.render(ctx.pipe.field(wide.latent), 128, 384)  # level 9 is the 384 x 128 canvas
    r = client.get(tile_url(s, 9, 1, 0))  # its second tile column, with the one-pixel overlap on its left
    tile = png(r.content)
    assert r.status_code == 200 and np.array_equal(tile, whole[:, 384 - tile.shape[1]:])
    r = client.get(f"/session/{s.key}/infd-session.zip")
    loaded = sessionfile.load(r.content, ctx.pipe, max_canvas_side=65536)
    assert str(loaded.canvas) == "384x128" and torch.equal(loaded.state.picture.latent, wide.latent)
    assert s.undo() and s.state.picture is pano and str(s.canvas) == "256x128" and s.state.box("k1").box.x0 == 0.5
    cancel_after_first_event(s, extend_picture(ctx, s, side="down", amount=64, seed=3, steps=20))
    assert s.state.picture is pano and s.view.picture is pano and str(s.canvas) == "256x128"  # previews undone
    with pytest.raises(ValueError, match="multiple of 8"):
        list(extend_picture(ctx, s, side="up", amount=5, seed=0, steps=1))
    *_, last = Handlers(ctx).extend(s.key, "right", 64, 4, 1)  # the canvas fields show the grown canvas
    assert str(s.canvas) == "384x128" and last[2] == "custom" and last[5:] == [384, 128]
    assert (last[3]["value"], last[3]["visible"], last[4]["value"]) == (384, True, 128)
    with pytest.raises(ValueError, match="extend side"):
        list(extend_picture(ctx, s, side="sideways", amount=8, seed=0, steps=1))


# --- compositions and the sketch ------------------------------------------------------------------

def test_generate_holds_a_composition_with_the_colour_and_sketch_boxes(server, monkeypatch):
    """Generate with a composition samples a new picture over it: the composition's 4-cell block
    means are held (exactly, where no box is), a colour box on top holds its own, a text box is
    left to Guided; the label says what the picture was composed from."""
    from infd_core import compositions
    from infd_core.diffusion import block_means

    _, ctx = server
    s = ctx.store.create(canvas=Size(512, 512))
    red = Region(Box(0.5, 0.5, 1.0, 1.0), kind="color", color=(0.8, 0.2, 0.2), id="red")
    text = Region(Box(0.0, 0.0, 0.5, 0.5), prompt="a cat", id="cat")
    s.commit(State(None, boxes=(red, text)))
    lake = compositions.example("lake")
    events = list(generate(ctx, s, seed=3, steps=3, composition=Composition(lake, "the example lake")))
    z = s.state.picture.latent
    whole, box = guidance.prepare(ctx.pipe, composition_layout(s.state, Composition(lake, "lake")))
    assert [c.region.kind for c in (whole, box)] == ["sketch", "color"]  # the text box is not composed
    assert torch.allclose(block_means(z[..., :28, :], 4), block_means(whole.low.x0[..., :28, :], 4), atol=1e-5)
    assert torch.allclose(block_means(z[..., 32:, 32:], 2), block_means(box.low.x0[..., 32:, 32:], 2), atol=1e-5)
    assert isinstance(events[-1], Finished) and events[-1].report is None
    assert s.state.picture.label == "seed 3, 3 steps, composed from the example lake"
    with pytest.raises(ValueError, match="a composition is for Generate"):
        next(generate(ctx, s, seed=3, steps=3, guided=True, composition=Composition(lake, "lake")))


def test_the_composition_choice_and_the_sketch_editor(server):
    """The dropdown's choices resolve to a picture (the seed picks a random example), 'my sketch'
    without a sketch is refused with a reason; a painted sketch is kept as one undo step."""
    from infd_core import compositions

    _, ctx = server
    on = Handlers(ctx)
    s = ctx.store.create(canvas=Size(512, 512))
    assert on.composition(s, "none", 0) is None
    assert on.composition(s, "lake", 0).name == "the example lake"
    picked = {on.composition(s, "random", seed).name for seed in range(len(compositions.names()))}
    assert picked == {f"the example {n}" for n in compositions.names()}
    with pytest.raises(gr.Error, match="no sketch yet"):
        on.composition(s, "sketch", 0)
    with pytest.raises(gr.Error, match="unknown example"):
        on.composition(s, "../../etc/passwd", 0)
    painted = np.zeros((256, 256, 3), np.uint8)
    painted[128:] = (60, 120, 40)
    out = on.use_sketch(s.key, {"background": painted, "layers": [], "composite": painted})
    assert out.composition == "sketch" and np.array_equal(s.state.sketch, painted)
    assert np.array_equal(on.composition(s, "sketch", 0).picture, painted)
    with pytest.raises(gr.Error, match="Sketch not used"):
        on.use_sketch(s.key, {"background": None, "layers": [], "composite": None})
    assert s.undo() and s.state.sketch is None  # using a sketch is an undo step
    shown = on.sketch_example("coast")
    assert np.array_equal(shown["background"], compositions.example("coast"))


def test_the_sketch_survives_session_files_and_spilling(server):
    _, ctx = server
    s = new_session(ctx, seed=2)
    painted = np.random.default_rng(0).integers(0, 256, (64, 96, 3)).astype(np.uint8)
    box = Region(Box(0.1, 0.1, 0.6, 0.6), kind="sketch", image=painted[:32, :32].copy(), coarseness=8, id="sk")
    s.commit(replace(s.state, sketch=painted, boxes=(box,)))
    loaded = sessionfile.load(sessionfile.dump(s.state, s.canvas, ctx.pipe.cfg.name), ctx.pipe, 65536)
    assert np.array_equal(loaded.state.sketch, painted)
    assert loaded.state.boxes[0].coarseness == 8 and np.array_equal(loaded.state.boxes[0].image, box.image)
    back = spill.decode(s.key, spill.encode(s), time.time(), 65536)
    assert np.array_equal(back.state.sketch, painted) and back.state.boxes[0].coarseness == 8
    assert back.history[0].sketch is None  # the states before the sketch have none
    with pytest.raises(ValueError, match="8..4096"):
        State(sketch=np.zeros((4, 4, 3), np.uint8))


def test_a_loaded_session_is_published_once_at_its_canvas(server):
    _, ctx = server
    s = new_session(ctx, seed=2)
    other = State(Picture(torch.zeros(1, 3, 64, 64), seed=9))
    gen = s.gen
    assert s.commit(other, canvas=Size.parse("900x700"))
    assert s.gen == gen + 1 and s.view.picture is other.picture  # one view, of the loaded picture
    assert (s.view.pyramid.width, s.view.pyramid.height) == (900, 700)
    assert not s.commit(other, canvas=Size.parse("800x600")) and s.gen == gen + 2  # same state, new canvas: shown again
    assert (s.view.pyramid.width, s.view.pyramid.height) == (800, 600)


def test_runs_say_how_long_they_take():
    """Before a run, the time the last run of its kind took per step, times the steps; during one,
    the time left from the mean step so far."""
    from app.context import RunClock
    from app.handlers import remaining

    clock = RunClock()
    assert clock.expect("guided", 50) is None
    clock.record("guided", 10, 5.0)
    assert clock.expect("guided", 50) == pytest.approx(25.0) and clock.expect("unguided", 50) is None
    clock.record("guided", 10, 3.0)  # the newest counts half
    assert clock.expect("guided", 10) == pytest.approx(4.0)
    assert remaining(6.0, 3, 9) == ", about 12 s left" and remaining(0.0, 0, 9) == "" and remaining(9.0, 9, 9) == ""


def test_the_apps_guided_edits_run_part_of_the_steps_and_guide_some(server):
    """With a current picture and locality on, Guided runs the last guidance.EDIT of the steps from the
    picture (SDEdit) with DPS on one step in guidance.EVERY; plain DPS runs them all."""
    _, ctx = server
    s = new_session(ctx, canvas=Size(512, 512))
    s.commit(s.state.with_box(Region(Box(0.6, 0.1, 0.95, 0.45), kind="color", color=(0, 0, 1.0), id="c")))
    events = list(generate(ctx, s, seed=2, steps=10, guided=True, scale=0.2))
    assert [e.total for e in events[:-1]] == [round(guidance.EDIT * 10)] * round(guidance.EDIT * 10)
    report = events[-1].report
    assert report["edit"] == guidance.EDIT and report["every"] == guidance.EVERY
    fresh = ctx.store.create(canvas=Size(512, 512))
    fresh.commit(replace(fresh.state, boxes=s.state.boxes))
    assert list(generate(ctx, fresh, seed=2, steps=4, guided=True, scale=0.2))[-1].report["every"] == guidance.EVERY_FRESH
    plain = list(generate(ctx, s, seed=2, steps=10, guided=True, scale=0.2, local=False))
    assert plain[-1].report["edit"] == 1.0 and len(plain) == 11


def test_a_box_changing_kind_takes_the_new_kinds_block_size(server):
    from app.handlers import commit_editor

    _, ctx = server
    s = ctx.store.create(canvas=Size(512, 512))
    s.commit(State(None, boxes=(Region(Box(0, 0, 0.5, 0.5), kind="sketch", image=np.zeros((16, 16, 3), np.uint8),
                                       coarseness=8, id="b"),)))
    commit_editor(s, "b", "sketch", "", 1.0, "#000000", "hard", 2)
    assert s.state.box("b").coarseness == 2
    commit_editor(s, "b", "color", "", 1.0, "#336699", "hard", 2)  # the field is hidden for colours
    assert s.state.box("b").coarseness is None and s.state.box("b").color is not None
