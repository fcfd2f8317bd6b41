"""Speed as a user feels it: the app in headless Debian Chromium (playwright, no browser download),
the shipped model, a real server on a free localhost port.

Measured from the page's own clock (``performance.now()``, sampled every 5 ms in the page):

* **generate** (2048² canvas, ``--steps`` steps, window 1360×860): first tile after the click on
  Generate; the last step shown ("Step N/N") to the final view sharp (every tile of the view
  loaded); the view sharp to "Done" on the status line; Generate to "Done". "Done" to sharp is
  ``max(0, sharp - Done)``: the app says Done only once the view is sharp, so 0 by construction.
* **1:1 on 4096²**: a new picture on a 4096² canvas, fit view; key **1** to the 1:1 view sharp
  (the viewer's 0.6 s zoom animation included: what the user waits for), the end of the zoom
  animation to sharp, and how many tiles the browser fetched for it.
* **full 2048² view**: a large window (2900×2300; the viewer gets 1356×2130 of it, the Gradio
  column beside it the rest), fit view of a 2048² canvas: 0.66 scale, drawn from the 64 tiles of
  level 11 (a new version loads only its view's level). *Cold*: a new picture, from its last step
  to the view sharp (64 tiles never rendered before). *Canvas switch*: the same picture's canvas set
  to 4096² and back, from choosing the size to the fit view sharp; level 11 of the 4096² canvas is
  the whole 2048² canvas, tiles the server has rendered already (its cache keys tiles by picture
  and level size).

``python bench/browser.py [--reps 3] [--steps 10] [--baseline DIR --rounds 2]``: with
``--baseline`` (another checkout, e.g. ``git archive fab5283 | tar -x -C /tmp/base``) both are
measured, each in a fresh process, alternating, and the medians printed side by side.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from infd_bench import alternate, run_in_tree

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SMALL, LARGE = {"width": 1360, "height": 860}, {"width": 2900, "height": 2300}

# In the page: a log of status-line changes and of the moments the newest finished view became
# sharp (on screen, fully loaded, no other image loading behind it), every 5 ms.
PROBE = """() => {
  if (window.__bench) return;
  const log = window.__bench = {status: [], sharp: {}};
  performance.setResourceTimingBufferSize(1000000);  // every tile fetch (the default keeps 250)
  let last = null;
  infd.viewer.addHandler('animation-finish', () => { log.animationEnd = performance.now(); });
  setInterval(() => {
    const now = performance.now();
    const text = document.querySelector('#infd-status').innerText.replace(/^[\d.]+s\s*/, '');  // no timer
    if (text !== last) { log.status.push([now, text]); last = text; }
    const s = infd.state, w = infd.viewer.world, img = s.value && s.value.image;
    if (img && !img.preview && s.pendingKey === null && s.shownKey === `${s.value.session}/${img.gen}`
        && w.getItemCount() === 1 && w.getItemAt(0).getFullyLoaded() && !(img.gen in log.sharp)) {
      log.sharp[img.gen] = now;
    }
  }, 5);
}"""


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--baseline", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


def status_time(page, text: str, after: float) -> float:
    """When the status line first showed ``text`` after ``after`` (page clock, ms)."""
    page.wait_for_function("([t, a]) => __bench.status.some(([w, s]) => w > a && s.includes(t))",
                           arg=[text, after], timeout=120_000)
    return page.evaluate("([t, a]) => __bench.status.find(([w, s]) => w > a && s.includes(t))[0]", [text, after])


def sharp_time(page, gen: int) -> float:
    page.wait_for_function("g => g in __bench.sharp", arg=gen, timeout=120_000)
    return page.evaluate("g => __bench.sharp[g]", gen)


def tiles_since(page, t0: float) -> list[tuple[float, float]]:
    """(start, end) of the tile fetches that started after ``t0`` (ms, page clock)."""
    return page.evaluate("""t0 => performance.getEntriesByType('resource')
        .filter(e => e.name.includes('/tiles/') && e.startTime >= t0).map(e => [e.startTime, e.responseEnd])""", t0)


def click(page, selector: str) -> float:
    """Click ``selector`` from inside the page; the page clock just before."""
    return page.evaluate("sel => { const t = performance.now(); document.querySelector(sel).click(); return t; }",
                         selector)


def generate(page, seed: int, steps: int) -> dict:
    page.fill("#infd-seed input", str(seed))
    page.fill("#infd-steps input", str(steps))
    page.evaluate("document.activeElement && document.activeElement.blur()")
    t0 = click(page, "#infd-generate")
    # the first change of the status line that no longer says "Done" (of the run before)
    page.wait_for_function("a => __bench.status.some(([w, s]) => w > a && !s.includes('Done'))", arg=t0,
                           timeout=120_000)
    started = page.evaluate("a => __bench.status.find(([w, s]) => w > a && !s.includes('Done'))[0]", t0)
    done = status_time(page, "Done", started)
    gen = page.evaluate("infd.state.value.image.gen")
    sharp = sharp_time(page, gen)
    last_step = page.evaluate("""([a, texts]) => {
        const e = __bench.status.find(([w, s]) => w > a && texts.some(t => s.includes(t)));
        return e ? e[0] : null; }""", [started, [f"Step {steps}/{steps}", "Generated"]]) or done
    tiles = tiles_since(page, t0)
    return {"first_tile_s": (min(end for _, end in tiles) - t0) / 1000, "last_step_to_sharp_s": (sharp - last_step) / 1000,
            "sharp_to_done_s": (done - sharp) / 1000, "done_to_sharp_s": max(0.0, sharp - done) / 1000,
            "generate_to_done_s": (done - t0) / 1000}


def set_canvas(page, label: str) -> float:
    """Choose a canvas preset; the page clock when it was chosen."""
    page.click("#infd-canvas input")
    option = page.get_by_role("option", name=label)
    option.wait_for()
    t0 = page.evaluate("performance.now()")
    option.click()
    return t0


def wait_new_view(page, after_gen: int) -> int:
    page.wait_for_function("g => infd.state.value.image && infd.state.value.image.gen > g", arg=after_gen,
                           timeout=60_000)
    return page.evaluate("infd.state.value.image.gen")


def key(page, k: str) -> None:
    """Press ``k`` for the canvas (not into a focused text field)."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press(k)


def home(page) -> None:
    """Key 0 (once the viewer has taken in its element's size, after a resize): the fit view, once
    its zoom animation is over."""
    page.wait_for_function("""() => { const el = infd.viewer.container, s = infd.viewer.viewport.getContainerSize();
        return Math.abs(s.x - el.clientWidth) < 1 && Math.abs(s.y - el.clientHeight) < 1; }""", timeout=60_000)
    key(page, "0")
    page.wait_for_function("""() => { const vp = infd.viewer.viewport;
        return Math.abs(vp.getZoom(true) / vp.getHomeZoom() - 1) < 1e-3; }""", timeout=60_000, polling=5)


def one_to_one(page) -> dict:
    """Key 1 from the fit view; until the 1:1 view is sharp (zoom animation over, every tile loaded)."""
    page.evaluate("__bench.animationEnd = null")
    t0 = page.evaluate("performance.now()")
    key(page, "1")
    page.wait_for_function("""() => {
        const vp = infd.viewer.viewport, w = infd.viewer.world, item = w.getItemAt(0);
        const target = item.imageToViewportZoom(1);
        return Math.abs(vp.getZoom(true) / target - 1) < 1e-3 && item.getFullyLoaded();
    }""", timeout=60_000, polling=5)
    t = page.evaluate("performance.now()")
    settled = page.evaluate("__bench.animationEnd") or t
    return {"one_to_one_4096_s": (t - t0) / 1000, "after_animation_s": (t - settled) / 1000,
            "tiles_fetched": len(tiles_since(page, t0))}


def child(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    from app.server import create_app, load_pipeline
    from infd_devkit.live import serve

    pipe, _ = load_pipeline(precision=args.precision)
    app = create_app(pipe)
    with serve(app) as (base, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport=SMALL)
        page.goto(base)
        page.wait_for_function("window.infd && infd.state.value && infd.state.value.session", timeout=60_000)
        page.evaluate(PROBE)
        seed = 100
        generate(page, seed, args.steps)  # warm-up: first field, first oneDNN primitives
        for _ in range(args.reps):
            seed += 1
            row = generate(page, seed, args.steps)
            print(json.dumps({"what": "generate", **row}), flush=True)
        gen = page.evaluate("infd.state.value.image.gen")
        set_canvas(page, "4096²")
        wait_new_view(page, gen)
        for _ in range(args.reps):
            key(page, "0")
            seed += 1
            generate(page, seed, args.steps)
            print(json.dumps({"what": "one_to_one", **one_to_one(page)}), flush=True)
        page.set_viewport_size(LARGE)  # the viewer keeps the image's size on screen (preserveImageSizeOnResize) ...
        home(page)  # ... until the fit view is asked for
        gen = page.evaluate("infd.state.value.image.gen")
        set_canvas(page, "2048²")
        wait_new_view(page, gen)
        for _ in range(args.reps):
            seed += 1
            t0 = page.evaluate("performance.now()")
            row = generate(page, seed, args.steps)  # on 2048²
            cold = len(tiles_since(page, t0))
            switches = {}
            for label in ("4096²", "2048²"):
                gen = page.evaluate("infd.state.value.image.gen")
                t0 = set_canvas(page, label)
                sharp = sharp_time(page, wait_new_view(page, gen))
                switches[label] = ((sharp - t0) / 1000, len(tiles_since(page, t0)))
            print(json.dumps({"what": "full_2048", "cold_s": row["last_step_to_sharp_s"], "cold_tiles": cold,
                              "to_4096_s": switches["4096²"][0], "to_2048_s": switches["2048²"][0],
                              "to_2048_tiles": switches["2048²"][1]}), flush=True)
        browser.close()


FIGURES = [("generate", "first_tile_s", "first tile after Generate"),
           ("generate", "last_step_to_sharp_s", "last step to the final view sharp"),
           ("generate", "sharp_to_done_s", "final view sharp to 'Done'"),
           ("generate", "done_to_sharp_s", "'Done' to the view sharp"),
           ("generate", "generate_to_done_s", "Generate to 'Done'"),
           ("one_to_one", "one_to_one_4096_s", "1:1 on 4096² (key 1 to sharp)"),
           ("one_to_one", "after_animation_s", "  of which after the zoom animation"),
           ("one_to_one", "tiles_fetched", "  tiles fetched for it"),
           ("full_2048", "cold_s", "full 2048² view (fit, 0.66 scale), cold: last step to sharp"),
           ("full_2048", "cold_tiles", "  tiles fetched for it (whole run, previews included)"),
           ("full_2048", "to_4096_s", "  canvas switch to 4096² (fit, its level 11) to sharp"),
           ("full_2048", "to_2048_s", "  canvas switch back to 2048² to sharp"),
           ("full_2048", "to_2048_tiles", "  tiles fetched for it")]


def main() -> None:
    args = parse()
    if args.child:
        child(args)
        return
    print(f"# browser bench: Chromium {CHROMIUM}, precision={args.precision}, {args.steps} steps, "
          f"{args.reps} repetitions, medians")
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    argv = ["--reps", str(args.reps), "--steps", str(args.steps), "--precision", args.precision]
    results = alternate(trees, args.rounds if args.baseline else 1, lambda t: run_in_tree(HERE, t, argv),
                        lambda r, name, row: print(f"round {r} {name}: {row}", flush=True))
    print("\n| figure | " + " | ".join(name for name, _ in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for what, key, label in FIGURES:
        cells = []
        for name, _ in trees:
            vals = [row[key] for row in results[name] if row["what"] == what]
            cells.append(f"{statistics.median(vals):.3f}" if vals else "–")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
