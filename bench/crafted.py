"""Crafted requests against a live server: each one's status, time and peak memory growth.

The app (cpu preset, random weights: the routes are what is measured) is served by uvicorn on a
thread of this process, so the peak RSS it reports is the server's; before each request the peak
is reset (``/proc/self/clear_refs``), after it the growth is read (``VmHWM`` minus the RSS
before). Every crafted request should be answered 4xx in well under 50 ms with under 10 MB.

    python bench/crafted.py
"""
from __future__ import annotations

import time

import requests
import torch

from infd_bench import reset_peak, status_mb  # first: it puts the checkout measured on sys.path

from app.server import create_app
from app.sessions import Picture, State
from infd_core import configs
from infd_core.geometry import Size
from infd_core.pipeline import Pipeline
from infd_devkit.live import serve


def main() -> None:
    app = create_app(Pipeline.from_config(configs.cpu(), seed=0))
    ctx = app.state.ctx
    with serve(app) as (base, _):
        s = ctx.store.create(canvas=Size.parse("8192x4096"))
        s.commit(State(Picture(torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0)))))
        k, g = s.key, s.view.gen
        cases = {
            "tile level -16e9": f"/tiles/{k}/{g}/-16000000000/0_0.png",
            "tile level -4e9": f"/tiles/{k}/{g}/-4000000000/0_0.png",
            "tile level 2**80": f"/tiles/{k}/{g}/{2 ** 80}/0_0.png",
            "tile level max+1": f"/tiles/{k}/{g}/14/0_0.png",
            "tile column 10**30": f"/tiles/{k}/{g}/13/{10 ** 30}_0.png",
            "tile row -2**63": f"/tiles/{k}/{g}/13/0_{-2 ** 63}.png",
            "version 2**80": f"/tiles/{k}/{2 ** 80}/13/0_0.png",
            "export width 10**30": f"/export/{k}/{g}/image.png?width={10 ** 30}&height=10",
            "export 65536 x 65536": f"/export/{k}/{g}/image.png?width=65536&height=65536",
            "view level -1e10": f"/view/{k}/{g}?level=-10000000000&x0=0&y0=0&x1=1&y1=1",
            "view x1 10**30": f"/view/{k}/{g}?level=13&x0=0&y0=0&x1={10 ** 30}&y1={10 ** 30}",
        }
        good = f"/tiles/{k}/{g}/13/0_0.png"
        requests.get(base + good, timeout=60)  # warm: the field is decoded, the routes imported
        print("| request | status | ms | peak RSS growth MB |\n|---|---:|---:|---:|")
        for name, path in cases.items():
            before = status_mb("VmRSS")
            reset_peak()
            t = time.perf_counter()
            method = requests.post if path.startswith("/view") else requests.get
            r = method(base + path, timeout=60)
            ms = (time.perf_counter() - t) * 1000
            print(f"| {name} | {r.status_code} | {ms:.1f} | {status_mb('VmHWM') - before:.1f} |")
        t = time.perf_counter()
        r = requests.get(base + good.replace("0_0", "1_0"), timeout=60)
        print(f"| a good tile after them | {r.status_code} | {(time.perf_counter() - t) * 1000:.1f} | |")


if __name__ == "__main__":
    main()
