"""Serve the infd canvas (offline; the embedded default model) on http://127.0.0.1:7860, or on
``$GRADIO_SERVER_NAME``:``$GRADIO_SERVER_PORT`` when set (a Hugging Face Space sets them).

    python app.py [--model DIR] [--device auto] [--precision auto] [--host 127.0.0.1] [--port 7860] [--share]
                     [--max-export 8192x8192] [--max-canvas-side 65536] [--scorer SPEC]
    infd-app ...                     (the same, once installed with pip)
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping

import uvicorn

from infd_core.checkpoint import CheckpointError

from .context import Limits
from .server import create_app, load_pipeline

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def parse_size(text: str) -> int:
    """``"8192x8192"`` or ``"67108864"`` -> a pixel count."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or a pixel count, got {text!r}") from None
    if len(parts) > 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or a pixel count, got {text!r}")
    return parts[0] * parts[-1] if len(parts) == 2 else parts[0]


def parse_side(text: str) -> int:
    """``"8192"`` -> 8192: a canvas side in pixels, at least 16 (the smallest canvas side the app takes)."""
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a side in pixels, got {text!r}") from None
    if side < 16:
        raise argparse.ArgumentTypeError(f"a canvas side must be at least 16 px, got {side}")
    return side


def env_address(environ: Mapping[str, str]) -> tuple[str, int]:
    """The default address: ``GRADIO_SERVER_NAME`` and ``GRADIO_SERVER_PORT`` where set, else
    127.0.0.1:7860. ValueError for a port that is not a number."""
    host = environ.get("GRADIO_SERVER_NAME", "").strip() or DEFAULT_HOST
    port = environ.get("GRADIO_SERVER_PORT", "").strip()
    try:
        return host, int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"GRADIO_SERVER_PORT must be a port number, got {port!r}") from None


def share_link(server: uvicorn.Server, host: str, port: int) -> None:
    """Open a temporary public gradio.live link once the server is up (needs internet access)."""
    from gradio import networking

    while not server.started:
        time.sleep(0.1)
    try:
        url = networking.setup_tunnel(host, port, secrets.token_urlsafe(32), None, None)
        print(f"* Public URL (temporary): {url}", flush=True)
    except Exception as e:  # offline, blocked, or the tunnel binary could not be fetched
        print(f"* --share failed ({e}); the app is still served locally.", flush=True)


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    """The flags; ``environ`` gives the defaults of --host, --port and --scorer."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        host, port = env_address(environ)
    except ValueError as e:
        p.error(str(e))
    p.add_argument("--model", help="model folder (default: $INFD_MODEL or assets/models/infd-cpu-photos)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu; the default), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): each part (decoder, renderer, UNet) in the precision measured faster "
                        "here, once per machine and model (cached in ~/.cache/infd/precision.json)")
    p.add_argument("--host", default=host,
                   help="address to listen on, 0.0.0.0 for all interfaces (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=port, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--max-export", type=parse_size, default=Limits.max_export_pixels, metavar="WxH",
                   help="largest export, as WIDTHxHEIGHT or a pixel count (default: 8192x8192)")
    p.add_argument("--max-canvas-side", type=parse_side, default=Limits.max_canvas_side, metavar="PX",
                   help="longest canvas side a user may choose, load from a session file or export "
                        f"(default: {Limits.max_canvas_side})")
    p.add_argument("--scorer", default=environ.get("INFD_SCORER") or None,
                   help="guidance scorer spec for infd_core.scorers.load_scorer, e.g. clip:ViT-B-32:openai "
                        "(default: $INFD_SCORER, else the loader's default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        pipe, note = load_pipeline(args.model, device=args.device, precision=args.precision)
    except (CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        print(f"* No trained model installed: serving the cpu preset with {note} (images will be noise).")
    limits = Limits(max_export_pixels=args.max_export, max_canvas_side=args.max_canvas_side)
    app = create_app(pipe, limits=limits, scorer=args.scorer, model_note=note)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    if args.share:
        threading.Thread(target=share_link, args=(server, args.host, args.port), daemon=True).start()
    info = pipe.describe()
    print(f"* infd on http://{args.host}:{args.port}  (model {pipe.cfg.name}, {pipe.device}, {info['precision']})",
          flush=True)
    server.run()
    return 0
