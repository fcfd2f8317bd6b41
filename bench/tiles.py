"""Tile throughput of the app's server under concurrent clients: the capacity a shared deployment has.

A real server (uvicorn on a free localhost port, the shipped model, ``--precision``) holds one
session with an 8192² canvas. For each number of clients N (default 1, 4, 16, 50), a new picture
is committed (cold field, cold tiles) and N clients request tiles for ``--seconds`` seconds, each
one at a time and the next as soon as the last arrived, like N viewers each fetching one tile
after another; every tile is requested once (views of 4×4 tiles at levels 12 and 13, in random
order), so nothing comes from the cache. A 503 is retried after its Retry-After, like the
viewer does; a tile's latency runs from its first request to its answer. Printed per N: tiles/s,
median and p99 latency, 503s.

``--baseline DIR`` measures another checkout too (e.g. the commit before issue 18:
``mkdir /tmp/base && git archive fab5283 | tar -x -C /tmp/base``), each in a fresh process,
alternating ``--rounds`` times, and prints this tree's figures as ratios to the baseline's::

    python bench/tiles.py --baseline /tmp/base --rounds 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

from infd_bench import TREE, alternate, run_in_tree

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--clients", default="1,4,16,50", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--seconds", type=float, default=8.0, help="per number of clients")
    ap.add_argument("--canvas", type=int, default=8192)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to compare against")
    ap.add_argument("--rounds", type=int, default=1, help="with --baseline: alternations of the two trees")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


def view_order(levels: tuple[int, ...], canvas: int, tile: int = 256, seed: int = 0) -> list[tuple[int, int, int]]:
    """Every tile of ``levels`` once, grouped in 4×4 views, the views in random order."""
    rnd = random.Random(seed)
    max_level = (canvas - 1).bit_length()
    views = []
    for level in levels:
        n = -(-(canvas >> (max_level - level)) // tile)
        for vy in range(0, n, 4):
            for vx in range(0, n, 4):
                views.append([(level, x, y) for y in range(vy, min(vy + 4, n)) for x in range(vx, min(vx + 4, n))])
    rnd.shuffle(views)
    return [t for v in views for t in v]


async def load(base: str, prefix: str, tiles: list[tuple[int, int, int]], clients: int, seconds: float) -> dict:
    import httpx

    todo = iter(tiles)
    lat: list[float] = []
    rejected = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal rejected
        while time.perf_counter() < deadline:
            t = next(todo, None)
            if t is None:
                return
            t0 = time.perf_counter()
            while True:
                r = await http.get(f"{prefix}/{t[0]}/{t[1]}_{t[2]}.png")
                if r.status_code != 503:
                    break
                rejected += 1
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG", r.status_code
            lat.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "tiles": len(lat), "tiles_per_s": len(lat) / elapsed,
            "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "rejected_503": rejected}


def child(args: argparse.Namespace) -> None:
    """Measure the checkout :data:`infd_bench.TREE` in this process; one JSON line per number of clients."""
    import torch

    from app.server import create_app, load_pipeline
    from app.sessions import Picture, State
    from infd_devkit.live import serve

    pipe, _ = load_pipeline(precision=args.precision)
    app = create_app(pipe)
    ctx = app.state.ctx
    session = ctx.store.create(canvas=(args.canvas, args.canvas))
    tiles = view_order((12, 13), args.canvas)
    with serve(app) as (base, _):
        for k, n in enumerate([0, *map(int, args.clients.split(","))]):  # 0: warm-up, one client
            z = torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(k)) * 0.5
            session.commit(State(Picture(z)))  # a new picture: cold field, cold tiles
            prefix = f"/tiles/{session.key}/{session.view.gen}"
            res = asyncio.run(load(base, prefix, tiles, max(n, 1), 2.0 if n == 0 else args.seconds))
            if n:
                print(json.dumps({**res, "tree": str(TREE), "precision": str(pipe.precision)}), flush=True)


def main() -> None:
    args = parse()
    if args.child:
        child(args)
        return
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# tile throughput: {args.canvas}² session, precision={args.precision}, {args.seconds:g} s per "
          f"client count, load average {load_avg}")
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    argv = ["--precision", args.precision, "--clients", args.clients, "--seconds", str(args.seconds),
            "--canvas", str(args.canvas)]

    def show(r: int, name: str, row: dict) -> None:
        print(f"round {r} {name:9s} clients {row['clients']:3d}: {row['tiles_per_s']:6.1f} tiles/s, "
              f"p50 {row['p50_s']:6.3f} s, p99 {row['p99_s']:6.3f} s, {row['rejected_503']} × 503 "
              f"({row['tiles']} tiles, {row['precision']})", flush=True)

    results = alternate(trees, args.rounds if args.baseline else 1, lambda t: run_in_tree(HERE, t, argv), show)
    print("\n| clients | " + " | ".join(f"{n} tiles/s | {n} p99 s" for n, _ in trees) +
          (" | throughput ratio | p99 ratio |" if args.baseline else " |"))
    for n in map(int, args.clients.split(",")):
        med = {name: {k: statistics.median(row[k] for row in rows if row["clients"] == n)
                      for k in ("tiles_per_s", "p99_s")} for name, rows in results.items()}
        cells = [f"{med[name]['tiles_per_s']:.1f} | {med[name]['p99_s']:.2f}" for name, _ in trees]
        ratio = ""
        if args.baseline:
            a, b = med["this tree"], med["baseline"]
            ratio = f" | {a['tiles_per_s'] / b['tiles_per_s']:.2f}× | {a['p99_s'] / b['p99_s']:.2f}× |"
        print(f"| {n} | " + " | ".join(cells) + (ratio or " |"))


if __name__ == "__main__":
    main()
