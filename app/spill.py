"""Sessions parked on disk when the in-memory limits bite, and brought back on their next request.

A spilled session is one uncompressed zip (tens of KB: latents are 48 KB, boxes and prompts a
few KB, reference images what they are) named by the session's unguessable key, in a private
directory that the store creates on first use (mode 0700, files 0600) and removes when it goes.
The zip holds what undo/redo and the viewer need:

* ``session.json``: canvas, undo position, generation counter, selection, the browser's box
  revision, and every undo step as ``{"picture": i, "global_prompt", "boxes": [Region.to_json()
  + {"image": j}], "sketch": j}`` (the same region JSON as session files, :mod:`app.sessionfile`);
* ``pictures/<i>.safetensors``: each distinct latent once, a latent file of
  :mod:`infd_core.checkpoint` with its seed and photo aspect (``picture_metadata``, as session
  and CLI latent files), its label in ``session.json``;
* ``images/<j>.npy``: each distinct reference image and sketch once (read back without pickle).

Pictures and images shared between undo steps stay shared after the round trip. The newest
view is rebuilt under its old generation number, so the tiles the browser is asking for keep
working; decoded fields are not saved (they are decoded again on demand).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import weakref
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from infd_core.checkpoint import aspect_of, latent_and_metadata, latent_bytes, picture_metadata
from infd_core.geometry import Size
from infd_core.regions import Region

from . import sessions as _s
from .deepzoom import Pyramid

FORMAT = "infd-spilled-session"
VERSION = 2  # 2: a picture's seed and photo aspect in its latent file's metadata, the sketch
READS = (1, 2)


class SpillDir:
    """A private directory of spilled sessions, created on first write, removed by :meth:`close`
    (or when the owner is garbage collected / the process exits)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._cleanup: weakref.finalize | None = None

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix="infd-sessions-"))  # mode 0700
                self._cleanup = weakref.finalize(self, shutil.rmtree, self._path, True)
            return self._path

    def _file(self, key: str) -> Path:
        if not _s.KEY.match(key):  # keys are [A-Za-z0-9_-]{32}: safe as file names
            raise ValueError("malformed session key")
        return self.path / f"{key}.zip"

    def write(self, key: str, data: bytes) -> None:
        final = self._file(key)
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)

    def read(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


def encode(session: _s.Session) -> bytes:
    """The spill file of ``session`` (call with ``session.lock`` held)."""
    pictures: dict[int, int] = {}  # id(Picture) -> index
    images: dict[int, int] = {}  # id(ndarray) -> index
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        def picture_index(p: _s.Picture | None) -> int | None:
            if p is None:
                return None
            if id(p) not in pictures:
                pictures[id(p)] = len(pictures)
                zf.writestr(f"pictures/{pictures[id(p)]}.safetensors",
                            latent_bytes(p.latent, picture_metadata(seed=p.seed, aspect=p.photo_aspect)))
                meta["pictures"].append({"label": p.label, "report": p.report})
            return pictures[id(p)]

        def image_index(a: np.ndarray | None) -> int | None:
            if a is None:
                return None
            if id(a) not in images:
                images[id(a)] = len(images)
                npy = io.BytesIO()
                np.save(npy, a, allow_pickle=False)
                zf.writestr(f"images/{images[id(a)]}.npy", npy.getvalue())
            return images[id(a)]

        def box_json(b: Region) -> dict[str, Any]:
            out = b.to_json()
            if b.image is not None:
                out["image"] = image_index(b.image)
            return out

        view = session.view
        meta: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "canvas": [session.canvas.width, session.canvas.height],
            "index": session.index, "gen": session.gen, "selected": session.selected, "client_rev": session.client_rev,
            "pictures": [], "view": None}
        meta["history"] = [{"picture": picture_index(st.picture), "global_prompt": st.global_prompt,
                            "boxes": [box_json(b) for b in st.boxes], "sketch": image_index(st.sketch)}
                           for st in session.history]
        if view is not None and not view.preview and view.picture is session.state.picture:
            meta["view"] = {"gen": view.gen, "width": view.pyramid.width, "height": view.pyramid.height}
        zf.writestr("session.json", json.dumps(meta))
    return buf.getvalue()


def picture(raw: bytes, entry: dict[str, Any]) -> _s.Picture:
    """A spilled picture: its latent file (:func:`~infd_core.checkpoint.picture_metadata`) and its
    entry in ``session.json`` (the label; version 1 kept the seed and aspect there)."""
    z, meta = latent_and_metadata(raw)
    seed = meta.get("seed", entry.get("seed"))
    aspect = aspect_of(meta) if "aspect" in meta else entry.get("photo_aspect")
    return _s.Picture(z, seed=None if seed is None else int(seed), label=entry["label"], photo_aspect=aspect,
                      report=entry.get("report"))


def decode(key: str, data: bytes, last_seen: float, max_side: int) -> _s.Session:
    """The session that :func:`encode` wrote, under ``key``; it has no decoded fields yet."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        meta = json.loads(zf.read("session.json"))
        if meta.get("format") != FORMAT or meta.get("version") not in READS:
            raise ValueError("not a spilled session of this version")
        pictures = [picture(zf.read(f"pictures/{i}.safetensors"), p) for i, p in enumerate(meta["pictures"])]
        images: dict[int, np.ndarray] = {}

        def image(j: int | None) -> np.ndarray | None:
            if j is not None and j not in images:
                images[j] = np.load(io.BytesIO(zf.read(f"images/{j}.npy")), allow_pickle=False)
            return None if j is None else images[j]

        history = [_s.State(None if st["picture"] is None else pictures[st["picture"]],
                            tuple(Region.from_json({k: v for k, v in b.items() if k != "image"}, image(b.get("image")))
                                  for b in st["boxes"]),
                            st["global_prompt"], image(st.get("sketch")))
                   for st in meta["history"]]
    width, height = meta["canvas"]
    session = _s.Session(key, canvas=Size(height, width), history=history, index=meta["index"], gen=meta["gen"],
                         selected=meta["selected"], client_rev=meta["client_rev"], last_seen=last_seen,
                         max_side=max_side)
    v = meta["view"]
    if v is not None:
        pyramid = Pyramid(height=v["height"], width=v["width"])
        session.views[v["gen"]] = _s.View(v["gen"], session.state.picture, pyramid)
    return session
