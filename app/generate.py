"""Model runs for a session: sampling (plain or guided by the boxes) with previews and
cancellation, and opening a photo (encoded, optionally refined) as the session's picture.

:func:`generate` runs the sampler on a thread of its own and yields :class:`Progress` events
(with a preview view every few steps: the predicted clean latent x̂0, shown on the canvas
through the normal tile route) and finally :class:`Finished`. Between steps the sampler lets
queued tile requests go first (:meth:`~app.tiles.TileWorkers.yield_to_tiles`).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from torch import Tensor

from infd_core.diffusion import Cancelled, Step
from infd_core.geometry import Box
from infd_core.inversion import encode_photo

from .context import AppContext
from .sessions import Picture, Session, State, View

try:  # layout-to-image is optional: without it the boxes are still drawn and saved
    from infd_core import guidance
except ImportError as e:  # pragma: no cover - depends on the installed infd_core
    guidance = None
    GUIDANCE_MISSING = f"guided generation is unavailable ({e})"
else:
    GUIDANCE_MISSING = ""

PREVIEWS = 8  # previews per run


class Busy(RuntimeError):
    """The session is already generating."""


@dataclass
class Progress:
    step: int
    total: int
    preview: View | None = None


@dataclass
class Finished:
    view: View
    report: dict[str, Any] | None = None


def build_layout(state: State) -> Any:
    """The session's boxes and global prompt as a ``guidance.Layout``; ValueError names the bad box."""
    if guidance is None:
        raise ValueError(GUIDANCE_MISSING)
    regions = []
    for i, b in enumerate(state.boxes, 1):
        try:
            regions.append(guidance.Region(Box(b.x0, b.y0, b.x1, b.y1), b.kind, b.prompt, b.weight, b.color, b.image))
        except ValueError as e:
            raise ValueError(f"box {i}: {e}") from None
    layout = guidance.Layout(regions, state.global_prompt)
    if not layout.conditions():
        raise ValueError("draw a box with a prompt (or write a global prompt) first")
    return layout


ProgressFn = Callable[[int, int, "Callable[[], Tensor] | None"], None]  # (done, total, preview latent or None)


def generate(ctx: AppContext, session: Session, *, seed: int, steps: int, guided: bool = False,
             scale: float = 1.0, local: bool = True) -> Iterator[Progress | Finished]:
    """Sample a new picture for ``session`` and commit it as an undo step.

    ``local``: guidance acts near the boxes only (``guidance.MARGIN``); otherwise everywhere.

    Raises :class:`Busy` if the session is already sampling, ``Cancelled`` when
    ``session.cancel`` (a fresh event for each run) is set, ValueError for an unusable
    layout; after a cancel or an error the canvas shows the previous picture again.
    """
    state = session.state
    layout = build_layout(state) if guided else None  # validate before taking the session
    pipe = ctx.pipe

    def work(progress: ProgressFn, should_stop: Callable[[], bool]) -> tuple[Picture, dict[str, Any] | None]:
        def on_step(step: Step) -> None:
            progress(step.index + 1, step.total, lambda: pipe.denormalize(step.x0[:1]))

        report = None
        if layout is not None:
            needs_scorer = any(r.kind in ("text", "image") for r in layout.conditions())
            init = state.picture.latent if state.picture is not None else None
            z, report = guidance.guided_sample(pipe, layout, seed=seed, steps=steps, scale=scale,
                                               margin=guidance.MARGIN if local else None,
                                               scorer=ctx.scorer() if needs_scorer else None, init_latent=init,
                                               callback=on_step, should_stop=should_stop)
        else:
            z = pipe.sample(seed, steps=steps, callback=on_step, should_stop=should_stop)
        return Picture(z[:1], seed=seed, label=f"{'guided, ' if guided else ''}seed {seed}, {steps} steps"), report

    return _run(ctx, session, work)


def open_photo(ctx: AppContext, session: Session, image: Image.Image, name: str = "photo",
               refine: int = 0) -> Iterator[Progress | Finished]:
    """Encode ``image`` (any size, RGB; squashed to the encoder's square input like in training),
    refine its latent for ``refine`` steps (:mod:`infd_core.inversion`), and commit it as the
    session's picture: then it zooms, exports and guides (``keep`` boxes) like a generated one.

    Events, errors and cancelling as :func:`generate`; a cancelled refinement keeps nothing.
    """
    def work(progress: ProgressFn, should_stop: Callable[[], bool]) -> tuple[Picture, None]:
        z = encode_photo(ctx.pipe, image, refine, callback=lambda i, total, loss: progress(i, total, None),
                         should_stop=should_stop)
        if should_stop():
            raise Cancelled()
        label = f"{name}, refined {refine} steps" if refine else name
        return Picture(z[:1], label=label), None

    return _run(ctx, session, work)


def _run(ctx: AppContext, session: Session,
         work: Callable[[ProgressFn, Callable[[], bool]], tuple[Picture, dict[str, Any] | None]]
         ) -> Iterator[Progress | Finished]:
    """Run ``work(progress, should_stop)`` on a thread of its own while holding the session, yield
    its :class:`Progress` (a preview every ``total // PREVIEWS`` steps) and :class:`Finished`
    once its picture is committed as an undo step."""
    if not session.busy.acquire(blocking=False):
        raise Busy("this session is already generating")
    cancel = session.cancel = threading.Event()  # this run's flag (a stale consumer can only stop its own run)
    events: queue.Queue = queue.Queue()

    def progress(done: int, total: int, latent: Callable[[], Tensor] | None) -> None:
        ctx.workers.yield_to_tiles()
        preview = None
        if latent is not None and done % max(1, total // PREVIEWS) == 0 and done < total:
            preview = session.publish(Picture(latent()), preview=True)
        events.put(Progress(done, total, preview))

    def run() -> None:
        try:
            pic, report = work(progress, cancel.is_set)
            with session.lock:
                session.commit(replace(session.state, picture=pic))
                view = session.view
            events.put(Finished(view, report))
        except BaseException as e:  # handed to the consumer, which re-raises it
            session.restore_view()
            events.put(e)
        finally:
            session.busy.release()

    threading.Thread(target=run, name=f"model-{session.key[:6]}", daemon=True).start()
    event: Progress | Finished | BaseException | None = None
    try:
        while not isinstance(event, Finished):
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        if not isinstance(event, (Finished, BaseException)):  # consumer gone early: stop at the next step
            cancel.set()


__all__ = ["Busy", "Cancelled", "Finished", "GUIDANCE_MISSING", "Progress", "build_layout", "generate", "open_photo"]
