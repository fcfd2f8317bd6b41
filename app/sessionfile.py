"""Session files: a zip with ``session.json``, ``latent.safetensors``, the boxes' reference images and
the painted sketch (``sketch.png``, the composition Generate may hold).

``session.json``::

    {"format": "infd-session", "version": 2, "model": "<model name>", "seed": 3,
     "canvas": [4096, 2048], "global_prompt": "...", "boxes": [Region.to_json(), ...]}

``canvas`` is ``[width, height]``. Version 1 files (boxes with ``x0, y0, x1, y1`` keys) still load.
``latent.safetensors`` is a latent file as :mod:`infd_core.checkpoint` defines it, with the
picture's model, seed and photo aspect in its metadata (``picture_metadata``; the CLI's ``render
--latent`` reads it, and renders an opened photo in its shape). A latent beyond the model's range
is refused.

Loading validates everything (sizes before decompressing, shapes, ranges) and raises
ValueError with a message meant for the user; nothing in the file is executed or unpickled.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from torch import Tensor

from infd_core.checkpoint import aspect_of, latent_and_metadata, latent_bytes, picture_metadata
from infd_core.geometry import Size
from infd_core.regions import Region, check_depth

from .deepzoom import Pyramid
from .numbers import MAX_SEED, whole
from .sessions import MAX_BOXES, Picture, State

if TYPE_CHECKING:  # annotations only: the session data does not load the model code
    from infd_core.pipeline import Pipeline

FORMAT = "infd-session"
VERSION = 2
READS = (1, 2)
MAX_FILE = 64 << 20     # bytes of the whole upload
MAX_MEMBER = 32 << 20   # inflated bytes of a reference image or latent member
MAX_JSON = 1 << 20      # inflated bytes of session.json (boxes hold prompts of at most 500 characters)
CHUNK = 64 << 10        # members are inflated this many bytes at a time
MAX_IMAGE_SIDE = 4096   # reference images and the sketch
SKETCH = "sketch.png"


@dataclass
class Loaded:
    """A validated session file."""

    state: State
    canvas: Size
    seed: int | None
    warnings: list[str] = field(default_factory=list)


def dump(state: State, canvas: Size, model: str) -> bytes:
    """The session file for ``state`` shown at ``canvas`` (stored as ``[width, height]``)."""
    pic = state.picture
    meta = {"format": FORMAT, "version": VERSION, "model": model, "seed": pic.seed if pic else None,
            "canvas": [canvas.width, canvas.height], "global_prompt": state.global_prompt,
            "boxes": [b.to_json() for b in state.boxes]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("session.json", json.dumps(meta, indent=1))
        if pic is not None:
            zf.writestr("latent.safetensors", latent_bytes(pic.latent, picture_metadata(
                model=model, seed=pic.seed, aspect=pic.photo_aspect)))
        for b in state.boxes:
            if b.image is not None:
                zf.writestr(f"boxes/{b.id}.png", _png(b.image))
        if state.sketch is not None:
            zf.writestr(SKETCH, _png(state.sketch))
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue()


def load(data: bytes, pipe: Pipeline, max_canvas_side: int) -> Loaded:
    """Parse and validate a session file made by :func:`dump` for use with ``pipe``."""
    if len(data) > MAX_FILE:
        raise ValueError(f"session file is larger than {MAX_FILE >> 20} MB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError("not an infd session file (expected a .zip made by 'Save session')") from None
    with zf:
        meta = _json(_read(zf, "session.json", MAX_JSON))
        warnings = []
        if meta.get("model") != pipe.cfg.name:
            warnings.append(f"saved with model {meta.get('model')!r}, loaded into {pipe.cfg.name!r}")
        canvas = meta.get("canvas")
        if not (isinstance(canvas, list) and len(canvas) == 2 and all(type(v) is int for v in canvas)
                and 0 < min(canvas) and max(canvas) <= max_canvas_side):
            raise ValueError(f"canvas must be [width, height], positive integers up to {max_canvas_side}")
        canvas = Pyramid(height=canvas[1], width=canvas[0]).size
        seed = meta.get("seed")
        if seed is not None:
            seed = whole(seed, "seed", 0, MAX_SEED)
        prompt = meta.get("global_prompt", "")
        if not isinstance(prompt, str):
            raise ValueError("global_prompt must be a string")
        boxes = meta.get("boxes", [])
        if not isinstance(boxes, list) or len(boxes) > MAX_BOXES:
            raise ValueError(f"boxes must be a list of at most {MAX_BOXES} boxes")
        specs = tuple(_box(zf, b) for b in boxes)
        if len({b.id for b in specs}) != len(specs):
            raise ValueError("box ids must be unique")
        picture = None
        if "latent.safetensors" in zf.namelist():
            z, aspect = _latent(_read(zf, "latent.safetensors"), pipe)
            picture = Picture(z, seed=seed, label="loaded", photo_aspect=aspect)
        sketch = _picture(zf, SKETCH, "the sketch") if SKETCH in zf.namelist() else None
    return Loaded(State(picture, specs, prompt, sketch), canvas, seed, warnings)


def _read(zf: zipfile.ZipFile, name: str, limit: int = MAX_MEMBER) -> bytes:
    """Member ``name``, inflated at most ``limit`` bytes: read through ``zf.open()`` in chunks of
    :data:`CHUNK`, so a member whose header lies about its size costs at most one chunk over the
    limit, never its claimed or real size."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"session file has no {name}") from None
    too_large = ValueError(f"{name} in the session file is too large (over {limit:,} bytes)")
    if info.file_size > limit:
        raise too_large
    out = bytearray()
    try:
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                out += chunk
                if len(out) > limit:
                    raise too_large
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name} in the session file is damaged: {e}") from None
    return bytes(out)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"session.json is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError("session.json is nested too deeply") from None
    try:
        check_depth(meta)
    except ValueError as e:
        raise ValueError(f"session.json: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"session.json is not an infd session (expected \"format\": \"{FORMAT}\")")
    if meta.get("version") not in READS:
        raise ValueError(f"unsupported session file version {meta.get('version')!r} (this app reads {READS})")
    return meta


def _latent(raw: bytes, pipe: Pipeline) -> tuple[Tensor, float | None]:
    """The picture's latent and its photo's aspect (:func:`~infd_core.checkpoint.picture_metadata`)."""
    z, meta = latent_and_metadata(raw, "latent.safetensors")
    try:
        pipe.check_latent(z, from_file=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"latent does not fit this model: {e}") from None
    if z.shape[0] != 1:
        raise ValueError(f"latent must hold one image, got {z.shape[0]}")
    return z, aspect_of(meta)


def _picture(zf: zipfile.ZipFile, name: str, what: str) -> np.ndarray:
    """The PNG member ``name`` as ``[h, w, 3]`` uint8 (``what`` names it in errors)."""
    raw = _read(zf, name)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if max(im.size) > MAX_IMAGE_SIDE:
                raise ValueError(f"{what} is larger than {MAX_IMAGE_SIDE} px")
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what} is damaged: {e}") from None


def _box(zf: zipfile.ZipFile, data: Any) -> Region:
    if not isinstance(data, dict):
        raise ValueError("a box must be a JSON object")
    image = None
    if isinstance(data, dict) and data.get("has_image"):
        image = _picture(zf, f"boxes/{data.get('id')}.png", f"reference image of box {data.get('id')}")
    if not data.get("id"):
        raise ValueError("every box needs an id")
    return Region.from_json(data, image)
