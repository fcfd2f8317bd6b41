"""Serve the infd canvas on http://127.0.0.1:7860 (offline; the embedded default model).

    python app.py [--model DIR] [--device cpu] [--precision auto] [--host 127.0.0.1] [--port 7860] [--share]
"""
from __future__ import annotations

import argparse
import logging
import secrets
import sys
import threading
import time

import uvicorn

from app.context import Limits
from app.server import create_app, load_pipeline
from infd_core.checkpoint import CheckpointError


def parse_size(text: str) -> int:
    """``"8192x8192"`` or ``"67108864"`` -> a pixel count."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or a pixel count, got {text!r}") from None
    if len(parts) > 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or a pixel count, got {text!r}")
    return parts[0] * parts[-1] if len(parts) == 2 else parts[0]


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: $INFD_MODEL or assets/models/infd-cpu-photos)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 where the hardware supports it (default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--max-export", type=parse_size, default=Limits.max_export_pixels, metavar="WxH",
                   help="largest export, as WIDTHxHEIGHT or a pixel count (default: 8192x8192)")
    p.add_argument("--scorer", help="guidance scorer spec for infd_core.scorers.load_scorer (default: its default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        pipe, note = load_pipeline(args.model, device=args.device, precision=args.precision)
    except (CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        print(f"* No trained model installed: serving the cpu preset with {note} (images will be noise).")
    app = create_app(pipe, limits=Limits(max_export_pixels=args.max_export), scorer=args.scorer, model_note=note)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    if args.share:
        threading.Thread(target=share_link, args=(server, args.host, args.port), daemon=True).start()
    print(f"* infd on http://{args.host}:{args.port}  (model {pipe.cfg.name}, {pipe.describe()['precision']})",
          flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
