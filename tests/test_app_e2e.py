"""The app end to end: a real server and headless Debian Chromium (driven by playwright; no
browser download), fully offline, with the shipped model (the walk-through makes the README's
screenshots).

One browser session walks through what a user does: generate (over the seed's example
composition), zoom, draw a box with a prompt, guided generation, undo, export, open a photo;
another paints a sketch, generates over it and zooms in. Screenshots go to ``artifacts/``
(gitignored); the tile timings to ``artifacts/app-timings.json``. The README's screenshots are
``INFD_E2E_STEPS=30 pytest tests/test_app_e2e.py`` then ``app-09-sketch-generated.png``,
``app-05-guided.png``, ``app-10-sketch-1to1.png`` and ``app-07-photo.png`` copied (256-colour PNG)
to ``assets/screenshots/app-sketch.png`` (the README's first) / ``app-canvas.png`` /
``app-zoom-1to1.png`` / ``app-photo.png``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from app.generate import generate
from app.server import create_app, load_pipeline
from app.sessions import Picture, State
from infd_core.geometry import Size

from infd_devkit.live import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TILE = re.compile(r"/tiles/[\w-]+/(\d+)/(\d+)/(\d+)_(\d+)\.png$")
STEPS = os.environ.get("INFD_E2E_STEPS", "4")  # more for README screenshots (assets/screenshots/)


@pytest.fixture(scope="module")
def live():
    """The app on a free localhost port, served by uvicorn on a thread."""
    pipe, note = load_pipeline()
    app = create_app(pipe, model_note=note)
    with serve(app) as (base, port):
        yield base, app.state.ctx


@pytest.fixture(scope="module")
def browser_page(live):
    """A Chromium page that may only talk to the local server; records tile responses and outside requests."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    base, _ = live
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 860}, accept_downloads=True)
        outside: list[str] = []

        def only_local(route):
            if urlparse(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        page = context.new_page()
        page.tiles, page.outside = {}, outside  # url -> PNG bytes of every tile loaded (read in tiles_of)
        page.missing, page.errors = [], []  # tile URLs answered 404 (outside the pyramid); console errors

        def on_response(response):
            if TILE.search(response.url) and response.status == 200:
                page.tiles[response.url] = None  # the viewer reads tiles as blobs, which playwright cannot replay
            if TILE.search(response.url) and response.status == 404:
                page.missing.append(response.url)

        page.on("response", on_response)
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.dialogs = []  # e.g. "leave the page?" (beforeunload): dismissed, recorded

        def on_dialog(dialog):
            page.dialogs.append(dialog.type)
            dialog.accept() if page.leaving else dialog.dismiss()

        page.leaving = False
        page.on("dialog", on_dialog)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"))


def wait_settled(page, timeout: float = 120_000) -> None:
    """Until the newest image is on screen and every tile of the current view has loaded."""
    page.wait_for_function("""() => {
        const w = infd.viewer.world, s = infd.state;
        return s.pendingKey === null && s.shownKey !== null && w.getItemCount() === 1
            && w.getItemAt(0).getFullyLoaded();
    }""", timeout=timeout)


def wait_status(page, text: str, timeout: float = 180_000) -> None:
    """Until the status line says ``text``; on a timeout, the error says what it said instead."""
    try:
        page.wait_for_function("t => document.querySelector('#infd-status').innerText.includes(t)", arg=text,
                               timeout=timeout)
    except Exception as e:
        raise AssertionError(f"status never said {text!r}; it says {page.inner_text('#infd-status')!r}") from e


def tiles_of(page, gen: int) -> dict[tuple[int, int, int], bytes]:
    """The tiles of generation ``gen`` the browser loaded, by (level, x, y): their bytes fetched
    again from the same URLs (tile URLs are immutable)."""
    out = {}
    for url in list(page.tiles):
        g, level, x, y = map(int, TILE.search(url).groups())
        if g == gen:
            if page.tiles[url] is None:
                with urllib.request.urlopen(url, timeout=60) as r:
                    page.tiles[url] = r.read()
            out[(level, x, y)] = page.tiles[url]
    return out


def levels(page, gen: int) -> set[int]:
    return {level for level, _, _ in tiles_of(page, gen)}


def new_tiles(page, old: int) -> tuple[int, list[bool]]:
    """Once the newest image has settled: its generation, and for each tile position both it and
    generation ``old`` loaded, whether the two tiles differ."""
    wait_settled(page)
    new = shown_gen(page)
    before, after = tiles_of(page, old), tiles_of(page, new)
    return new, [before[k] != after[k] for k in sorted(set(before) & set(after))]


def settled(page) -> bool:
    return page.evaluate("""() => {
        const w = infd.viewer.world, s = infd.state;
        return s.pendingKey === null && s.shownKey !== null && w.getItemCount() === 1
            && w.getItemAt(0).getFullyLoaded();
    }""")


MAIN_ACTIONS = ["#infd-generate", "#infd-guided", "#infd-cancel"]


def assert_fits(page, selectors: list[str]) -> None:
    """The side panel needs no inner scrolling and each of ``selectors`` lies within the window."""
    page.wait_for_timeout(300)  # one layout after a resize
    height = page.viewport_size["height"]
    side = page.evaluate("(() => { const s = document.querySelector('#infd-side');"
                         " return [s.scrollHeight, s.clientHeight]; })()")
    assert side[0] <= side[1] + 1, f"the side panel scrolls: {side}"
    for sel in selectors:
        b = page.locator(sel).bounding_box()
        assert b is not None and 0 <= b["y"] and b["y"] + b["height"] <= height, (sel, b, height)


PREVIEW_SHOWN = """() => { const v = infd.state.value;
    return !!(v && v.image && v.image.preview && infd.state.shownKey === `${v.session}/${v.image.gen}`); }"""


def shown_gen(page) -> int:
    return int(page.evaluate("infd.state.shownKey").split("/")[1])


def test_canvas_end_to_end(live, browser_page):
    base, ctx = live
    page = browser_page
    page.goto(base)
    page.wait_for_function("window.infd && infd.state.value && infd.state.value.session", timeout=60_000)
    assert page.locator(".infd-hint").is_visible()
    page.wait_for_timeout(1000)
    assert page.errors == [], f"the page logged errors on load: {page.errors}"
    shot(page, "01-loaded")
    session = ctx.store.get(page.evaluate("infd.state.value.session"))

    # generate; the fit view of the 2048² canvas loads
    page.fill("#infd-steps input", STEPS)
    page.click("#infd-generate")
    wait_status(page, "Done")
    assert settled(page), "Done before the image was on screen"
    first = shown_gen(page)
    levels_fit = levels(page, first)
    assert page.inner_text(".infd-hint").startswith("Press Generate (or G) to paint a landscape over an example")
    assert session.state.picture.label == f"seed 0, {STEPS} steps, composed from the example coast"
    shot(page, "02-generated")

    # guided without a box fails, and the status says so
    page.click("#infd-guided")
    wait_status(page, "Not generated: draw a box")

    # zoom to 1:1 and back with the keyboard, the focus on a button (not on the canvas)
    home = "Math.abs(infd.viewer.viewport.getZoom() / infd.viewer.viewport.getHomeZoom() - 1) < 1e-6"
    assert page.evaluate(f"document.activeElement !== infd.viewer.canvas && {home}")
    page.keyboard.press("1")
    page.wait_for_timeout(1500)  # zoom animation
    wait_settled(page)
    levels_zoomed = levels(page, first)
    assert max(levels_zoomed) == 11 > max(levels_fit), (levels_fit, levels_zoomed)
    shot(page, "03-zoomed-1to1")
    assert page.evaluate(f"document.activeElement !== infd.viewer.canvas && !({home})")
    page.keyboard.press("0")
    page.wait_for_function(home)
    page.wait_for_timeout(1500)
    wait_settled(page)

    # draw a box (shift-drag) and give it a prompt
    box = page.locator(".infd-osd").bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.3
    page.keyboard.down("Shift")
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + 18 * i, y0 + 14 * i)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_function("document.querySelector('#infd-prompt textarea, #infd-prompt input') !== null")
    page.locator("#infd-prompt textarea, #infd-prompt input").first.fill("a red apple")
    page.keyboard.press("Enter")
    page.wait_for_function("infd.state.boxes.length === 1 && infd.state.boxes[0].prompt === 'a red apple'")
    (b,) = session.state.boxes
    assert b.prompt == "a red apple" and b.kind == "text" and 0.3 < b.box.x0 < b.box.x1 < 1 and 0.25 < b.box.y0 < b.box.y1 < 1
    shot(page, "04-box")

    # at 1280×800 the main actions and the box editor need no scrolling
    page.set_viewport_size({"width": 1280, "height": 800})
    assert_fits(page, [*MAIN_ACTIONS, "#infd-boxes", "#infd-prompt", "#infd-delete"])
    shot(page, "04-box-1280x800")
    for name in ("Boxes", "Sketch", "Export", "Photo", "Extend"):  # every tab in the bar, none behind its "⋯" menu
        tab = page.get_by_role("tab", name=name)
        assert tab.is_visible() and tab.bounding_box()["x"] + tab.bounding_box()["width"] <= 1280, name
    page.set_viewport_size({"width": 1360, "height": 860})

    tiles_of(page, first)  # their bytes now: a run's previews can push this version out of the served views
    # a long run can be cancelled: the previous picture comes back
    page.fill("#infd-steps input", "500")
    page.click("#infd-generate")
    page.wait_for_function("infd.state.value.progress && infd.state.value.progress.total === 500")
    page.wait_for_function(PREVIEW_SHOWN, timeout=60_000)  # a preview of the run is on screen, not just sent
    page.click("#infd-cancel")
    wait_status(page, "Cancelled")
    assert session.state.picture.label.startswith(f"seed 0, {STEPS} steps") and not session.runner.running
    page.fill("#infd-steps input", STEPS)

    # guided generation replaces the tiles
    page.click("#infd-guided")
    wait_status(page, "Done: guided", timeout=240_000)
    assert settled(page), "Done before the image was on screen"
    guided, differs = new_tiles(page, first)
    assert guided > first and differs and any(differs)
    # loaded hidden behind the picture on screen: only its view's level, none of the levels between
    # (the coarsest is the navigator's, once it is shown)
    guided_levels = levels(page, guided)
    assert max(levels_fit) in guided_levels, (levels_fit, guided_levels)
    assert guided_levels <= {min(levels_fit), max(levels_fit)}, (levels_fit, guided_levels)
    assert session.state.picture.label.startswith("guided")
    assert page.locator("#infd-report").is_visible() and "Guidance" in page.inner_text("#infd-report")
    shot(page, "05-guided")

    # undo and redo the generation with the keyboard (focus on the page, not in a text field)
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Control+z")
    page.wait_for_function("n => infd.state.value.image.gen > n", arg=guided)
    assert not session.state.picture.label.startswith("guided")
    wait_status(page, f"Undone: the picture is seed 0, {STEPS} steps, composed from the example coast "
                      "(picture 1 of 2 in the history).")
    assert "appears here after a Guided run" in page.inner_text("#infd-report")  # the first picture had no report
    page.keyboard.press("Control+Shift+z")
    page.wait_for_function("n => infd.state.value.image.gen > n + 1", arg=guided)
    assert session.state.picture.label.startswith("guided")
    wait_status(page, "Redone: the picture is guided")
    assert "Guidance" in page.inner_text("#infd-report")  # the guided picture's report again

    # export a PNG at a chosen size, at 1280×800: the export and its link need no scrolling
    page.set_viewport_size({"width": 1280, "height": 800})
    page.get_by_role("tab", name="Export").click()
    page.fill("#infd-export-w input", "640")
    page.fill("#infd-export-h input", "480")
    with page.expect_download(timeout=120_000) as download:
        page.click("#infd-export")
    path = download.value.path()
    with Image.open(path) as img:
        assert img.size == (640, 480) and img.format == "PNG"
    assert_fits(page, [*MAIN_ACTIONS, "#infd-export", "#infd-save", "#infd-link"])
    shot(page, "06-exported")
    page.set_viewport_size({"width": 1360, "height": 860})

    # save the session, then load it back (one more undo step: the same picture and box)
    with page.expect_download(timeout=60_000) as download:
        page.click("#infd-save")
    saved = ARTIFACTS / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "infd-session.zip"
    page.set_input_files("input[type=file][accept='.zip']", str(saved))
    wait_status(page, "Session loaded")
    assert [b.prompt for b in session.state.boxes] == ["a red apple"]

    # select the box in the list and delete it
    page.get_by_role("tab", name="Boxes").click()
    page.locator("#infd-boxes label").first.click()
    page.wait_for_function("document.querySelector('#infd-prompt textarea, #infd-prompt input') !== null")
    page.click("#infd-delete")
    page.wait_for_function("infd.state.boxes.length === 0")
    assert session.state.boxes == ()

    # open a 3:2 photo (refined 2 steps): it becomes the picture, with new tiles, on a canvas of its shape
    loaded = shown_gen(page)
    page.get_by_role("tab", name="Photo").click()
    page.wait_for_selector("#infd-refine input", state="visible")
    page.wait_for_timeout(1000)  # its first show after a guided or cancelled run re-mounts its fields within ~100 ms: a fill before is lost
    page.fill("#infd-refine input", "2")
    page.press("#infd-refine input", "Tab")  # the number reaches Gradio's state before the upload reads it
    page.wait_for_timeout(500)
    photo = ARTIFACTS / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=95)  # 451 x 300
    page.set_input_files("input[type=file][accept='image/*']", str(photo))
    wait_status(page, "Opened chelsea.jpg, refined 2 steps", timeout=120_000)
    opened, differs = new_tiles(page, loaded)
    assert opened > loaded and differs and all(differs)
    assert session.state.picture.label == "chelsea.jpg, refined 2 steps"
    assert str(session.canvas) == "2048x1362" and page.evaluate("infd.state.value.image.height") == 1362
    assert page.input_value("#infd-canvas input") == "custom" and page.input_value("#infd-canvas-h input") == "1362"
    wait_settled(page)
    shot(page, "07-photo")

    # a custom canvas size: the fields show six digits, and a size applies when the field loses focus
    page.click("#infd-canvas input")
    page.get_by_role("option", name="custom").click()
    width = page.locator("#infd-canvas-w input")
    width.fill("100000")
    fits = "e => e.scrollWidth <= e.clientWidth"
    assert width.evaluate(fits) and page.locator("#infd-canvas input").evaluate(fits)
    width.fill("3000")
    page.keyboard.press("Tab")
    page.wait_for_function("infd.state.value.image.width === 3000")
    assert str(session.canvas) == "3000x1362"
    assert page.outside == [], f"the page tried to reach the internet: {page.outside}"
    assert page.missing == [], f"the viewer asked for {len(page.missing)} tiles outside the pyramid: {page.missing[:3]}"


def test_a_sketch_is_painted_generated_and_zoomed(live, browser_page):
    """A new page: paint a stroke over the hills example in the Sketch tab, use it as the
    composition, Generate over it, zoom to 1:1."""
    base, ctx = live
    page = browser_page
    assert page.dialogs == [], f"the page asked {page.dialogs} (a download must not look like leaving it)"
    page.leaving = True  # leaving the last test's picture: the browser asks first; yes
    page.goto(base)
    page.leaving = False
    assert page.dialogs == ["beforeunload"], page.dialogs
    page.wait_for_function("window.infd && infd.state.value && infd.state.value.session", timeout=60_000)
    session = ctx.store.get(page.evaluate("infd.state.value.session"))
    page.get_by_role("tab", name="Sketch").click()
    page.click("#infd-sketch-example input")
    page.get_by_role("option", name="hills").click()
    page.wait_for_timeout(1500)  # the example reaches the editor's canvas
    page.click("#infd-sketch button[aria-label='Brush']")
    canvas = page.locator("#infd-sketch canvas").first.bounding_box()
    page.mouse.move(canvas["x"] + canvas["width"] * 0.3, canvas["y"] + canvas["height"] * 0.62)
    page.mouse.down()
    for i in range(1, 31):  # a stroke across the meadow, in the brush's first colour (sky blue: a stream)
        page.mouse.move(canvas["x"] + canvas["width"] * (0.3 + 0.014 * i),
                        canvas["y"] + canvas["height"] * (0.62 + 0.006 * i))
    page.mouse.up()
    page.wait_for_timeout(500)
    shot(page, "08-sketch-painted")
    page.click("#infd-use-sketch")
    wait_status(page, "Sketch kept")
    sketch = session.state.sketch
    hills = np.asarray(Image.open(ROOT / "assets" / "compositions" / "hills.png").convert("RGB").resize(sketch.shape[1::-1]))
    painted = np.abs(sketch.astype(int) - hills.astype(int)).max(axis=2) > 40
    assert 0.002 < painted.mean() < 0.2, painted.mean()  # the stroke, and only the stroke, differs from the example
    assert page.input_value("#infd-composition input") == "my sketch (tab Sketch)"
    page.fill("#infd-steps input", STEPS)
    page.click("#infd-generate")
    wait_status(page, "Done")
    assert session.state.picture.label == f"seed 0, {STEPS} steps, composed from your sketch"
    wait_settled(page)
    shot(page, "09-sketch-generated")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("1")
    page.wait_for_timeout(1500)
    wait_settled(page)
    shot(page, "10-sketch-1to1")

    # extend it right by 64 cells: the canvas and the export fields follow (4096 x 2048)
    page.keyboard.press("0")
    page.get_by_role("tab", name="Extend").click()
    page.click("#infd-extend")
    wait_status(page, "Done: extended right by 64 cells", timeout=240_000)
    assert str(session.canvas) == "4096x2048"
    page.get_by_role("tab", name="Export").click()
    page.wait_for_selector("#infd-export-w input", state="visible")
    assert page.input_value("#infd-export-w input") == "4096" and page.input_value("#infd-export-h input") == "2048"
    wait_settled(page)
    assert page.outside == [], f"the page tried to reach the internet: {page.outside}"
    assert page.missing == [], f"the viewer asked for {len(page.missing)} tiles outside the pyramid: {page.missing[:3]}"
    assert page.errors == [], f"the page logged errors: {page.errors}"


def test_tile_timings(live):
    """Tile timings over HTTP, like the viewer (6 requests at a time), written to artifacts/app-timings.json.

    * time to the first tile of a new picture (its field is decoded first) and to a whole 2048² view
      at 1:1 (64 tiles of 256²), both cold;
    * the latency of one user's tiles while another user's 50-step generation runs, against idle.
    """
    base, ctx = live
    viewer, other = ctx.store.create(canvas=Size(2048, 2048)), ctx.store.create(canvas=Size(2048, 2048))
    seeds = iter(range(100))

    def new_picture() -> list[str]:
        z = torch.randn((1, *ctx.pipe.latent_shape), generator=torch.Generator().manual_seed(next(seeds)))
        viewer.commit(State(Picture(z)))  # a new picture: cold field, cold tiles
        return [f"/tiles/{viewer.key}/{viewer.view.gen}/11/{x}_{y}.png" for y in range(8) for x in range(8)]

    def latencies(client: httpx.Client, urls: list[str]) -> list[float]:
        def one(url: str) -> float:
            t = time.perf_counter()
            assert client.get(url).status_code == 200
            return time.perf_counter() - t
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(one, urls))

    results: dict[str, list[float]] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(3):
            urls = new_picture()
            t0 = time.perf_counter()
            results.setdefault("first_tile_s", []).append(latencies(client, urls[:1])[0])
            latencies(client, urls[1:])
            results.setdefault("full_2048_view_1to1_s", []).append(time.perf_counter() - t0)
        results["tile_idle_s"] = latencies(client, new_picture()[1:17])

        running = threading.Thread(target=lambda: [None for _ in generate(ctx, other, seed=0, steps=50)])
        running.start()
        while not other.runner.running:
            time.sleep(0.01)
        results["tile_while_other_user_generates_s"] = latencies(client, new_picture()[1:17])
        running.join()

    summary = {k: round(statistics.median(v), 3) for k, v in results.items()}
    summary.update(model=ctx.model_name, precision=ctx.pipe.describe()["precision"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "app-timings.json").write_text(json.dumps(summary, indent=1))
    print(summary)
    assert summary["first_tile_s"] < 10 and summary["full_2048_view_1to1_s"] < 120
    assert summary["tile_while_other_user_generates_s"] < 5
