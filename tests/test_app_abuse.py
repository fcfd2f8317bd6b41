"""The app under aborts, floods and crafted files (issue 17), against a live uvicorn server on loopback.

* an export whose client goes away, or stops reading, frees its slot within seconds; a busy
  export answers 429 and says why (all slots taken, or this client's);
* every number a request carries (tile path parts, query parameters, session JSON, UI fields) is
  checked before any arithmetic: crafted ones of any magnitude get a 4xx (a property test);
* a session file whose zip header lies about its size is refused with bounded memory;
* a flood of new sessions from one address neither evicts nor loses an earlier user's session;
* tile requests: a full queue answers 503 + Retry-After at once, an abandoned request is dropped,
  and a bounded load test (``slow``) sees no request slower than 5 s;
* the viewer (``slow``, Chromium): retries a 503 after Retry-After, and cancels a tile request
  OpenSeadragon has timed out, counting the job once.
"""
from __future__ import annotations

import io
import json
import os
import socket
import stat
import statistics
import struct
import subprocess
import sys
import threading
import time
import types
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import sessionfile
from app.context import Limits
from app.exports import ExportSlots, ExportStopped
from app.handlers import Handlers
from app.server import create_app
from app.sessions import Picture, SessionNotFound, State
from app.store import SessionStore, TooManySessions
from app.tiles import Overloaded, TileWorkers
from infd_core import configs
from infd_core.checkpoint import latent_bytes
from infd_core.geometry import Box, Size
from infd_core.regions import Region
from infd_core.pipeline import Pipeline

from infd_devkit.live import serve

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(concurrent_exports=1, max_export_pixels=4096 * 4096)


@pytest.fixture(scope="module")
def live():
    """The app on a free localhost port, served by uvicorn on a thread: (base URL, port, context)."""
    pipe = Pipeline.from_config(configs.cpu(), seed=0)  # mechanics, not the shipped model's quality
    app = create_app(pipe, limits=LIMITS)
    with serve(app) as (base, port):
        yield base, port, app.state.ctx


def new_session(ctx, seed: int = 0, canvas: Size = Size(1024, 1024), client: str | None = None):
    s = ctx.store.create(canvas=canvas, client=client)
    z = torch.randn((1, *ctx.pipe.latent_shape), generator=torch.Generator().manual_seed(seed))
    s.commit(State(Picture(z, seed=seed)))
    return s


def open_stream(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A raw GET of ``path``; returns the socket and the bytes read until the body has begun."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) == 0:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {got[:200]!r}"
        got += chunk
    return sock, got


def wait_until(cond, timeout: float) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - t0


# --- exports ----------------------------------------------------------------------------------------

def test_an_aborted_export_frees_its_slot_within_5s(live):
    base, port, ctx = live
    s = new_session(ctx)
    path = f"/export/{s.key}/{s.view.gen}/image.png?width=4096&height=4096"
    sock, got = open_stream(port, path)
    assert got.startswith(b"HTTP/1.1 200") and b"\x89PNG" in got
    assert ctx.exports.free == 0
    busy = requests.get(base + path, timeout=30)  # the only slot is taken: a clear 429
    assert busy.status_code == 429 and "too many exports" in busy.json()["detail"]
    assert busy.headers["retry-after"]
    with pytest.raises(gr.Error, match="too many exports"):  # the UI says so before starting a download
        Handlers(ctx).export(s.key, 64, 64, "PNG")
    sock.close()  # the user cancels the download
    released = wait_until(lambda: ctx.exports.free == 1, timeout=5)
    print(f"\nslot released {released:.2f} s after the client closed the export")
    r = requests.get(base + f"/export/{s.key}/{s.view.gen}/image.png?width=64&height=48", timeout=60)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    wait_until(lambda: ctx.exports.free == 1, timeout=5)  # a finished export frees its slot too


def test_an_export_past_its_deadline_stops_and_frees_its_slot():
    now = [0.0]
    slots = ExportSlots(1)
    job = slots.start(10, clock=lambda: now[0])
    assert job is not None and slots.free == 0 and slots.start(10) is None
    job.check()
    now[0] = 11
    with pytest.raises(ExportStopped):
        job.check()
    assert slots.free == 1
    job.finish()  # the response's own finish after that frees nothing twice
    assert slots.free == 1


def test_two_slow_readers_do_not_hold_the_export_slots():
    """Two clients start exports and stop reading after the first bytes: each slot is freed once its
    client has taken no data for ``export_stall`` s, and a third user's export then runs; one client
    address holds at most ``exports_per_client`` slots, and the refusal says so."""
    limits = Limits(concurrent_exports=2, exports_per_client=2, export_stall=1.0, max_export_pixels=4096 * 4096)
    app = create_app(Pipeline.from_config(configs.cpu(), seed=0), limits=limits)
    ctx = app.state.ctx
    with serve(app) as (base, port):
        s = new_session(ctx)
        path = f"/export/{s.key}/{s.view.gen}/image.png?width=4096&height=4096"
        readers = [open_stream(port, path)[0] for _ in range(2)]  # both read the headers and stop
        assert ctx.exports.free == 0
        busy = requests.get(base + path, timeout=30)
        assert busy.status_code == 429 and "too many exports" in busy.json()["detail"]
        freed = wait_until(lambda: ctx.exports.free == 2, timeout=15)
        print(f"\nboth slots freed {freed:.2f} s after their clients stopped reading (stall limit 1 s)")
        r = requests.get(base + f"/export/{s.key}/{s.view.gen}/image.png?width=64&height=48", timeout=60)
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        for sock in readers:
            sock.close()
    slots = ExportSlots(3, per_client=1)
    assert slots.acquire("10.0.0.1") and not slots.acquire("10.0.0.1") and slots.acquire("10.0.0.2")
    assert "you have 1 export running" in slots.refusal("10.0.0.1")
    assert slots.acquire("10.0.0.3") and "too many exports" in slots.refusal("10.0.0.4")
    slots.release("10.0.0.1")
    assert slots.refusal("10.0.0.1") is None


# --- crafted numbers ----------------------------------------------------------------------------

HUGE = st.one_of(st.integers(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                 st.sampled_from([-16_000_000_000, -(2 ** 63), 2 ** 63, 2 ** 80, 10 ** 40, -1]))
TEXT = st.text(alphabet="0123456789-+.eExa_%/ ", min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(level=st.one_of(HUGE, TEXT), x=st.one_of(HUGE, TEXT), y=st.one_of(HUGE, TEXT))
def test_crafted_tile_coordinates_are_refused_before_any_arithmetic(live, crafted, level, x, y):
    """Any level, column and row (integers of any size and sign, texts): a 4xx, never a 5xx, and
    the server answers a good tile right after (bench/crafted.py times these and their memory)."""
    base, s = live[0], crafted
    r = requests.get(f"{base}/tiles/{s.key}/{s.view.gen}/{level}/{x}_{y}.png", timeout=30)
    tile_exists = (isinstance(level, int) and 0 <= level <= 10 and isinstance(x, int) and isinstance(y, int)
                   and 0 <= x < 2 ** max(level - 8, 0) and 0 <= y < 2 ** max(level - 8, 0))  # 1024²: 4x4 at 10
    if all(isinstance(v, int) for v in (level, x, y)):
        assert r.status_code == 200 if tile_exists else 400 <= r.status_code < 500, (level, x, y, r.status_code)
    else:  # a text may still parse as a number ("0", "+1"): whatever it is, no server error
        assert r.status_code in (200, 404, 422), (level, x, y, r.status_code)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gen=st.one_of(HUGE, TEXT), width=st.one_of(HUGE, TEXT), height=st.one_of(HUGE, TEXT),
       view=st.lists(HUGE, min_size=5, max_size=5))
def test_crafted_versions_export_sizes_and_view_reports_are_refused(live, crafted, gen, width, height, view):
    base, s = live[0], crafted
    good_gen = isinstance(gen, int) and gen == s.view.gen
    for path in (f"/export/{s.key}/{gen}/image.png?width={width}&height={height}",
                 f"/export/{s.key}/{gen}/deepzoom.zip?width={width}&height={height}",
                 f"/tiles/{s.key}/{gen}/10/0_0.png"):
        r = requests.get(base + path, timeout=30)
        assert r.status_code < 500, (path, r.status_code)
        if not good_gen and not isinstance(gen, str):
            assert 400 <= r.status_code < 500, (path, r.status_code)
    level, x0, y0, x1, y1 = view
    r = requests.post(f"{base}/view/{s.key}/{s.view.gen}?level={level}&x0={x0}&y0={y0}&x1={x1}&y1={y1}", timeout=30)
    assert r.status_code == 204 if 8 <= level <= 10 else 400 <= r.status_code < 500
    assert requests.get(f"{base}/tiles/{s.key}/{s.view.gen}/10/0_0.png", timeout=30).status_code == 200


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(HUGE, TEXT, st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans()))
def test_crafted_ui_fields_and_session_numbers_get_a_reason(live, value):
    """A UI field or a session file's seed of any value: accepted within its bounds, else a message."""
    from app.handlers import number
    from app.numbers import MAX_SEED, whole

    try:
        got = number(value, "seed", 0, MAX_SEED, whole=True)
    except gr.Error as e:
        assert "seed must be a whole number from 0 to" in str(e)
    else:
        assert 0 <= got <= MAX_SEED and isinstance(got, int)
    try:
        whole(value, "seed", 0, MAX_SEED)
    except ValueError as e:
        assert "seed must be" in str(e) and len(str(e)) < 200  # a huge integer is named by its size
    data = _session_zip({"seed": value})
    try:
        loaded = sessionfile.load(data, live[2].pipe, max_canvas_side=8192)
    except ValueError as e:
        assert "seed must be" in str(e)
    else:
        assert loaded.seed is None or 0 <= loaded.seed <= MAX_SEED


def _session_zip(overrides: dict) -> bytes:
    meta = {"format": "infd-session", "version": 2, "model": "cpu", "seed": 1, "canvas": [1024, 1024],
            "global_prompt": "", "boxes": [], **overrides}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("session.json", json.dumps(meta))
    return buf.getvalue()


@pytest.fixture(scope="module")
def crafted(live):
    """One session (a 1024² canvas: levels 8-10 have tiles) for all the generated requests."""
    return new_session(live[2], canvas=Size(1024, 1024))


def test_session_files_with_out_of_range_numbers_or_latents_are_refused(live):
    """A seed beyond what the browser can be sent back, a latent of 1e30: clear errors, nothing loaded."""
    _, _, ctx = live
    for overrides, message in (({"seed": 2 ** 80}, "seed must be a whole number from 0 to 4294967295"),
                               ({"seed": -1}, "seed must be"), ({"canvas": [2 ** 80, 10]}, "canvas must be")):
        with pytest.raises(ValueError, match=message):
            sessionfile.load(_session_zip(overrides), ctx.pipe, max_canvas_side=8192)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("session.json", json.dumps({"format": "infd-session", "version": 2, "model": "cpu", "seed": 1,
                                                "canvas": [1024, 1024], "global_prompt": "", "boxes": []}))
        zf.writestr("latent.safetensors", latent_bytes(torch.full((1, 3, 64, 64), 1e30)))
    with pytest.raises(ValueError, match="beyond this model's range"):
        sessionfile.load(buf.getvalue(), ctx.pipe, max_canvas_side=8192)


# --- session files ----------------------------------------------------------------------------------

def lying_zip(inflated: int = 1 << 30, claimed: int = 1000) -> bytes:
    """A zip whose ``session.json`` claims ``claimed`` bytes but inflates to ``inflated`` (spaces)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b" " * (1 << 20)
    data = b"".join([comp.compress(block) for _ in range(inflated >> 20)] + [comp.flush()])
    name = b"session.json"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(data), claimed, len(name), 0) + name
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, len(data), claimed, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end


MEASURE = """
import json, sys, types
from app import sessionfile
from infd_core.checkpoint import latent_bytes
data = open(sys.argv[1], "rb").read()
pipe = types.SimpleNamespace(cfg=types.SimpleNamespace(name="x"))  # refused before the model is needed
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
except OSError:
    pass
before = status("VmHWM")
try:
    sessionfile.load(data, pipe, max_canvas_side=65536)
    message = None
except ValueError as e:
    message = str(e)
print(json.dumps({"growth": status("VmHWM") - before, "message": message}))
"""


def test_a_session_zip_with_a_lying_header_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.zip"
    path.write_bytes(lying_zip())
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("session.json").file_size == 1000
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS growth {result['growth'] / 2**20:.1f} MB: {result['message']}")
    assert result["message"] and ("damaged" in result["message"] or "too large" in result["message"])
    assert "/" not in result["message"].replace("32/", "")  # no server paths
    assert result["growth"] < 100 << 20


def test_session_json_is_read_in_bounded_chunks_and_nesting_is_checked():
    def zipped(raw: bytes) -> bytes:
        import io
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("session.json", raw)
        return buf.getvalue()

    pipe = types.SimpleNamespace(cfg=types.SimpleNamespace(name="x"))
    with pytest.raises(ValueError, match="too large"):  # honest header, over the cap
        sessionfile.load(zipped(b" " * (sessionfile.MAX_JSON + 1)), pipe, 65536)
    with pytest.raises(ValueError, match="nested too deeply"):
        sessionfile.load(zipped(b"[" * 100_000 + b"]" * 100_000), pipe, 65536)
    with pytest.raises(ValueError, match="session.json: JSON nested deeper"):
        sessionfile.load(zipped(json.dumps({"format": "infd-session", "x": [[[[[[[[[[[1]]]]]]]]]]]}).encode()),
                         pipe, 65536)


# --- sessions: floods, spilling, restoring --------------------------------------------------------

def make_rich(store: SessionStore, client: str) -> tuple:
    """A session with pictures, boxes (one with a reference image), a prompt and an undone step."""
    s = store.create(canvas=Size.parse("3000x1500"), client=client)
    ref = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    for seed in (1, 2):
        s.commit(State(Picture(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)), seed=seed,
                               label=f"seed {seed}")))
    s.commit(s.state.with_box(Region(Box(0.1, 0.2, 0.5, 0.6), kind="text", prompt="a red apple", weight=2.0, id="b1")))
    s.commit(s.state.with_box(Region(Box(0.5, 0.5, 0.9, 0.9), kind="image", image=ref, id="b2")))
    s.commit(State(s.state.picture, s.state.boxes, "a still life"))
    s.commit(State(s.state.picture, (), "emptied"))
    assert s.undo()
    s.selected, s.client_rev = "b2", 7
    snapshot = {"index": s.index, "gen": s.view.gen, "canvas": s.canvas,
                "history": [([b.to_json() for b in st.boxes], st.global_prompt,
                             None if st.picture is None else (st.picture.latent.clone(), st.picture.seed))
                            for st in s.history]}
    return s, ref, snapshot


def assert_same(s, ref, snap) -> None:
    assert (s.index, s.view.gen, s.canvas, s.selected, s.client_rev) == (snap["index"], snap["gen"],
                                                                          snap["canvas"], "b2", 7)
    assert len(s.history) == len(snap["history"])
    for st, (boxes, prompt, pic) in zip(s.history, snap["history"], strict=True):
        assert [b.to_json() for b in st.boxes] == boxes and st.global_prompt == prompt
        assert (st.picture is None) == (pic is None)
        if pic is not None:
            assert torch.equal(st.picture.latent, pic[0]) and st.picture.seed == pic[1]
    assert np.array_equal(s.state.box("b2").image, ref)
    assert s.history[-2].picture is s.history[-1].picture  # sharing survives
    assert s.redo() and s.state.global_prompt == "emptied" and s.undo()


def test_a_flood_of_new_sessions_neither_evicts_nor_loses_an_earlier_user():
    now = [0.0]
    store = SessionStore(max_sessions=8, clock=lambda: now[0], per_minute=30)
    s, ref, snap = make_rich(store, client="10.0.0.2")
    admitted = refused = 0
    for _ in range(200):  # one address, a new session every second for 200 s
        now[0] += 1
        try:
            store.create(client="10.0.0.1")
            admitted += 1
        except TooManySessions:
            refused += 1
    assert 90 <= admitted <= 130 and admitted + refused == 200  # about 30 a minute
    assert len(store) <= 8 and store.spilled >= admitted - 8
    assert s.key not in store._sessions  # spilled, not lost
    spill_dir = store._disk.path
    assert stat.S_IMODE(spill_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((spill_dir / f"{s.key}.zip").stat().st_mode) == 0o600
    size = (spill_dir / f"{s.key}.zip").stat().st_size
    assert size < 2 * 52_000 + 10_000, size  # two latents of 48 KB, the reference image, the JSON
    restored = store.get(s.key)
    assert restored is not s and restored.key == s.key
    assert_same(restored, ref, snap)
    assert not (spill_dir / f"{s.key}.zip").exists() and len(store) <= 8
    store.delete(restored.key)
    with pytest.raises(SessionNotFound):
        store.get(restored.key)
    store.close()
    assert not spill_dir.exists()


def test_spilled_sessions_expire_and_the_disk_is_bounded():
    now = [0.0]
    store = SessionStore(max_sessions=1, ttl=100, clock=lambda: now[0], max_spilled=3, max_canvas_side=8192)
    keys = []
    for _ in range(6):
        now[0] += 1
        keys.append(store.create().key)
    assert len(store) == 1 and store.spilled == 3  # the two oldest on disk were deleted (logged)
    with pytest.raises(SessionNotFound):
        store.get(keys[0])
    restored = store.get(keys[2])
    assert restored.key == keys[2]
    assert restored.max_side == store.get(keys[5]).max_side == 8192  # the server's canvas limit, restored or not
    now[0] += 200
    store.enforce()
    assert store.spilled == 0
    store.close()


def test_the_page_load_passes_the_client_address(live):
    _, _, ctx = live
    on = Handlers(ctx)
    request = types.SimpleNamespace(client=types.SimpleNamespace(host="192.0.2.7"))
    for _ in range(ctx.limits.sessions_per_minute):
        on.load(request)
    with pytest.raises(gr.Error, match="too many new sessions"):
        on.load(request)
    on.load(types.SimpleNamespace(client=types.SimpleNamespace(host="192.0.2.8")))  # another address is fine


def test_a_spilled_session_serves_its_tiles_again(live):
    base, _, ctx = live
    s = new_session(ctx, seed=3)
    url = f"{base}/tiles/{s.key}/{s.view.gen}/10/0_0.png"
    assert ctx.store._spill(s) and s.key not in ctx.store._sessions
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert s.key in ctx.store._sessions


# --- tiles: bounded queue, abandoned requests, fairness ---------------------------------------------

def test_tile_workers_drop_withdrawn_jobs_bound_the_queue_and_let_old_jobs_go_first():
    now = [0.0]
    workers = TileWorkers(threads=1, max_queue=3, starve_after=1.0, clock=lambda: now[0])
    gate, order = threading.Event(), []
    blocker = workers.submit("blocker", lambda: gate.wait() and b"")
    wait_until(lambda: workers.pending == 0, 5)  # the blocker is running
    old = workers.submit("old", lambda: order.append("old") or b"")
    now[0] = 2.0  # "old" has now waited longer than starve_after
    gone = workers.submit("gone", lambda: order.append("gone") or b"")
    new = workers.submit("new", lambda: order.append("new") or b"")
    with pytest.raises(Overloaded):
        workers.submit("more", lambda: b"")
    assert workers.submit("new", lambda: b"") is new  # joining a queued render is always allowed
    workers.withdraw("new", new)  # one of two waiters left: still rendered
    workers.withdraw("gone", gone)  # its only waiter left: dropped
    assert gone.cancelled() and workers.pending == 2
    gate.set()
    assert blocker.result(5) == b"" and old.result(5) == b"" and new.result(5) == b""
    assert order == ["old", "new"]


def test_a_full_tile_queue_answers_503_with_retry_after_at_once(live):
    base, _, ctx = live
    s = new_session(ctx, seed=4)
    gate = threading.Event()
    jobs = [("block", i) for i in range(ctx.limits.tile_threads)]
    futures = [ctx.workers.submit(k, lambda: gate.wait() and b"") for k in jobs]
    wait_until(lambda: ctx.workers.pending == 0, 5)
    fillers = [ctx.workers.submit(("fill", i), lambda: b"") for i in range(ctx.limits.tile_queue)]
    try:
        t0 = time.monotonic()
        r = requests.get(f"{base}/tiles/{s.key}/{s.view.gen}/10/1_1.png", timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == str(ctx.limits.tile_retry_after)
        assert time.monotonic() - t0 < 1
    finally:
        for k, f in zip([("fill", i) for i in range(len(fillers))], fillers):
            ctx.workers.withdraw(k, f)
        gate.set()
    for f in futures:
        f.result(5)


def test_a_tile_request_whose_client_left_is_dropped(live):
    _, port, ctx = live
    s = new_session(ctx, seed=5)
    gate = threading.Event()
    blockers = [ctx.workers.submit(("block2", i), lambda: gate.wait() and b"") for i in range(ctx.limits.tile_threads)]
    wait_until(lambda: ctx.workers.pending == 0, 5)
    rendered = []
    original = ctx.tile_png
    ctx.tile_png = lambda *a: rendered.append(a) or original(*a)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /tiles/{s.key}/{s.view.gen}/10/2_2.png HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: ctx.workers.pending == 1, 5)
        sock.close()
        gone = wait_until(lambda: ctx.workers.pending == 0, 5)  # withdrawn while the workers were busy
        print(f"\nabandoned tile request dropped after {gone:.2f} s")
    finally:
        gate.set()
        for f in blockers:
            f.result(5)
        ctx.tile_png = original
    time.sleep(0.2)
    assert rendered == []


def load_test(base: str, key: str, gen: int, levels: range, clients: int, seconds: float) -> dict:
    """``clients`` threads fetch random tiles for ``seconds`` (503: wait Retry-After, retry, as the viewer
    does); returns latencies of every answer, errors and time-outs."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        http = requests.Session()
        weights = np.array([4.0 ** max(0, level - 8) for level in levels])  # a tile drawn uniformly
        while time.monotonic() < stop:
            level = int(rng.choice(levels, p=weights / weights.sum()))
            n = 1 << max(0, level - 8)
            url = f"{base}/tiles/{key}/{gen}/{level}/{rng.integers(n)}_{rng.integers(n)}.png"
            t0 = time.monotonic()
            try:
                r = http.get(url, timeout=30)
            except requests.RequestException as e:
                with lock:
                    errors.append(type(e).__name__)
                continue
            dt = time.monotonic() - t0
            with lock:
                latencies.append(dt)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 503:
                time.sleep(float(r.headers.get("retry-after", 1)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    wall = time.monotonic() - t0
    q = np.quantile(latencies, [0.5, 0.95, 0.99]) if latencies else [float("nan")] * 3
    return {"clients": clients, "seconds": seconds, "requests": len(latencies), "statuses": statuses,
            "errors": errors, "p50": q[0], "p95": q[1], "p99": q[2], "max": max(latencies, default=0),
            "tiles_per_s": statuses.get(200, 0) / wall, "mean": statistics.fmean(latencies) if latencies else 0}


@pytest.mark.slow
def test_tile_load_has_no_slow_request_and_no_timeout(live):
    """20 clients x 20 s on one 8192² session (INFD_LOAD_CLIENTS / INFD_LOAD_SECONDS for longer runs)."""
    base, _, ctx = live
    clients = int(os.environ.get("INFD_LOAD_CLIENTS", 20))
    seconds = float(os.environ.get("INFD_LOAD_SECONDS", 20))
    s = new_session(ctx, seed=6, canvas=Size(8192, 8192))
    stats = load_test(base, s.key, s.view.gen, range(8, 14), clients, seconds)
    print(f"\nload {clients} clients x {seconds:g} s: {stats['requests']} answers {stats['statuses']}, "
          f"p50 {stats['p50']:.3f} s, p95 {stats['p95']:.3f} s, p99 {stats['p99']:.3f} s, max {stats['max']:.3f} s, "
          f"{stats['tiles_per_s']:.1f} tiles/s, errors {len(stats['errors'])}")
    assert not stats["errors"]
    assert stats["statuses"].get(200, 0) > 0 and set(stats["statuses"]) <= {200, 503}
    assert stats["max"] < 5


# --- user errors ------------------------------------------------------------------------------------

def test_a_bad_photo_error_names_no_server_path_and_the_upload_is_deleted(live, tmp_path, monkeypatch, caplog):
    _, _, ctx = live
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    upload = cache / "0123abcd" / "holiday.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"not an image at all")
    s = new_session(ctx, seed=8)
    with caplog.at_level("INFO", logger="app.handlers"), pytest.raises(gr.Error) as err:
        next(Handlers(ctx).open_photo(s.key, str(upload), 0))
    assert "holiday.png" in err.value.message and str(tmp_path) not in err.value.message
    assert not err.value.print_exception  # no traceback in the log ...
    assert [r.getMessage() for r in caplog.records] == [f"user error: {err.value.message}"]  # ... one line
    assert not upload.exists()
    outside = tmp_path / "elsewhere.png"  # a path outside Gradio's cache is never deleted
    outside.write_bytes(b"junk")
    with pytest.raises(gr.Error):
        next(Handlers(ctx).open_photo(s.key, str(outside), 0))
    assert outside.exists()


@pytest.mark.slow
def test_the_viewer_retries_tiles_after_503_retry_after(live):
    """Every tile's first request is answered 503 + Retry-After: 1; the view still fills completely."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed")
    base, _, _ = live
    refused: set[str] = set()
    loaded: set[str] = set()

    def busy_once(route):
        url = route.request.url
        if url not in refused:
            refused.add(url)
            route.fulfill(status=503, headers={"Retry-After": "1"}, body="busy")
        else:
            loaded.add(url)
            route.continue_()

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.route("**/tiles/**", busy_once)
        page.goto(base)
        page.wait_for_function("window.infd && infd.state.value && infd.state.value.session", timeout=60_000)
        page.locator("#infd-steps input").fill("2")
        page.locator("#infd-generate").click()
        page.wait_for_function("""() => {
            const w = infd.viewer.world, s = infd.state;
            return s.pendingKey === null && s.shownKey !== null && w.getItemCount() === 1
                && w.getItemAt(0).getFullyLoaded() && !infd.state.value.image.preview;
        }""", timeout=180_000)
        browser.close()
    assert refused and loaded and loaded <= refused


SLOW_FIRST_TILES = """() => {
  // the first request of every tile fails after 1.5 s unless the viewer cancels it first
  const real = window.fetch, seen = new Set();
  window.__slow = {cancelled: 0, failed: 0};
  window.fetch = (url, opts) => {
    if (!String(url).includes('tiles/') || seen.has(url)) return real(url, opts);
    seen.add(url);
    return new Promise((resolve, reject) => {
      const late = setTimeout(() => { window.__slow.failed++; reject(new TypeError('network')); }, 1500);
      opts.signal.addEventListener('abort', () => {
        clearTimeout(late); window.__slow.cancelled++; reject(new DOMException('cancelled', 'AbortError'));
      });
    });
  };
}"""


@pytest.mark.slow
def test_a_tile_past_the_viewers_timeout_is_cancelled_and_counted_once(live):
    """OpenSeadragon fails a tile job itself after its timeout; the viewer then cancels the request,
    and the request's own late failure does not end the job a second time (which would count it
    twice in the image loader: jobsInProgress below 0, more requests at once than it allows)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed")
    base, _, _ = live
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.add_init_script(f"({SLOW_FIRST_TILES})()")
        page.goto(base)
        page.wait_for_function("window.infd && infd.state.value && infd.state.value.session", timeout=60_000)
        page.evaluate("""() => {
            // the viewer's and the navigator's loaders (the navigator fetches the same tiles with its
            // own loader: under load its request for a tile can come first and be the slow one)
            const loaders = [infd.viewer.imageLoader, infd.viewer.navigator.imageLoader];
            for (const loader of loaders) loader.timeout = 300;  // jobs time out long before the slow requests fail
            window.__minJobs = 0;
            setInterval(() => {
                for (const loader of loaders) window.__minJobs = Math.min(window.__minJobs, loader.jobsInProgress);
            }, 2);
        }""")
        page.locator("#infd-steps input").fill("2")
        page.locator("#infd-generate").click()
        page.wait_for_function("window.__slow.cancelled + window.__slow.failed >= 4", timeout=180_000)
        page.wait_for_timeout(2000)  # past the slow requests' own failure
        slow, min_jobs = page.evaluate("window.__slow"), page.evaluate("window.__minJobs")
        browser.close()
    assert slow["failed"] == 0, slow  # every timed-out request was cancelled before it failed by itself
    assert min_jobs == 0
