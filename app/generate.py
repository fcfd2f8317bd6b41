"""Model runs for a session: sampling (plain or guided by the boxes) with previews and
cancellation, and opening a photo (encoded, optionally refined) as the session's picture.

:func:`generate` and :func:`open_photo` run on the session's :class:`~app.runner.Runner` and
yield :class:`Progress` events (with a preview view now and then: the predicted clean latent
x̂0, shown on the canvas through the normal tile route; see :class:`PreviewPacer`) and finally
:class:`Finished`. Between steps the sampler lets queued tile requests go first
(:meth:`~app.tiles.TileWorkers.yield_to_tiles`).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from torch import Tensor

import numpy as np

from infd_core import compositions, guidance
from infd_core.diffusion import Cancelled, Step
from infd_core.geometry import box_in_extended, cells_for_canvas, extend_cells
from infd_core.inversion import encode_photo
from infd_core.regions import Layout
from infd_core.outpaint import SIDES, extend

from .context import AppContext
from .gpu import on_gpu
from .runner import Busy
from .sessions import Picture, Session, State, View


class PreviewPacer:
    """When a run shows a preview: at most one every ``every`` seconds, and none once the steps
    left are expected (from the mean step so far) to take less than that.

    A preview costs a field decode and its tiles, which compete with the steps and, at the end,
    with the final picture's tiles: a fast run shows few or none, and the last steps show none,
    so the final view's tiles render on an idle CPU.
    """

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every, self._clock = every, clock
        self._start = self._last = clock()

    def due(self, done: int, total: int) -> bool:
        """Whether to show a preview after step ``done`` of ``total`` (counted from 1)."""
        now = self._clock()
        left = (now - self._start) / max(done, 1) * (total - done)
        if done >= total or now - self._last < self.every or left < self.every:
            return False
        self._last = now
        return True


@dataclass
class Progress:
    step: int
    total: int
    preview: View | None = None


@dataclass
class Finished:
    view: View
    report: dict[str, Any] | None = None


@dataclass(frozen=True)
class Composition:
    """What a new picture is composed from: a picture (an example, the user's sketch) and its name."""

    picture: np.ndarray
    name: str


def composition_layout(state: State, composition: Composition) -> Layout:
    """The composition over the whole canvas, with the session's composition boxes on top (``color``
    and ``sketch`` boxes that are ready; text, image and keep boxes are for Guided)."""
    boxes = []
    for b in state.boxes:
        try:
            b.check_ready()
        except ValueError:
            continue
        if b.kind in ("color", "sketch"):
            boxes.append(b)
    return Layout((compositions.whole_canvas(composition.picture), *boxes))


def build_layout(state: State) -> Layout:
    """The session's boxes and global prompt as a :class:`Layout`, checked ready to guide;
    ValueError names the bad box."""
    layout = Layout(state.boxes, state.global_prompt)
    if not layout.conditions():
        raise ValueError("draw a box with a prompt (or write a global prompt) first")
    return layout


ProgressFn = Callable[[int, int, "Callable[[], Tensor] | None"], None]  # (done, total, preview latent or None)


def generate(ctx: AppContext, session: Session, *, seed: int, steps: int, guided: bool = False,
             scale: float = 1.0, local: bool = True,
             composition: Composition | None = None) -> Iterator[Progress | Finished]:
    """Sample a new picture for ``session`` and commit it as an undo step.

    ``local``: the boxes act near themselves only (``guidance.MARGIN``) and, when there is a
    current picture, everything beyond their margins is held to it; otherwise plain DPS.
    ``composition`` (a new picture only, not ``guided``): held as the picture's coarse layout
    (:func:`composition_layout`), at the cost of an unguided run.

    Raises :class:`~app.runner.Busy` if the session is already running the model,
    ``Cancelled`` when the run is cancelled, ValueError for an unusable layout; after a cancel or
    an error the canvas shows the previous picture again.
    """
    state = session.state
    if guided and composition is not None:
        raise ValueError("a composition is for Generate; Guided edits the current picture")
    layout = build_layout(state) if guided else None  # validate before taking the session
    composed = composition_layout(state, composition) if composition is not None else None
    pipe = ctx.pipe
    cells = cells_for_canvas(*session.canvas, pipe.latent_shape[-1])  # a new picture's extent

    def work(progress: ProgressFn, should_stop: Callable[[], bool]) -> tuple[Picture, dict[str, Any] | None]:
        def on_step(step: Step) -> None:
            progress(step.index + 1, step.total, lambda: step.x0[:1])

        report = None
        if layout is not None:
            init = state.picture.latent if state.picture is not None else None
            z, report = guidance.guided_sample(pipe, layout, seed=seed, steps=steps, scale=scale,
                                               margin=guidance.MARGIN if local else None,
                                               scorer=ctx.scorer() if layout.needs_scorer else None,
                                               init_latent=init, cells=None if init is not None else cells,
                                               callback=on_step, should_stop=should_stop,
                                               edit=guidance.EDIT if local else 1.0,
                                               every=guidance.EVERY if init is not None else guidance.EVERY_FRESH)
        elif composed is not None:
            z, _ = guidance.guided_sample(pipe, composed, seed=seed, steps=steps, cells=cells, callback=on_step,
                                          should_stop=should_stop, describe_regions=False)
        else:
            z = pipe.sample(seed, steps=steps, cells=cells, callback=on_step, should_stop=should_stop)
        aspect = state.picture.photo_aspect if layout is not None and state.picture is not None else None
        label = f"{'guided, ' if guided else ''}seed {seed}, {steps} steps"
        if composition is not None:
            label += f", composed from {composition.name}"
        return Picture(z[:1], seed=seed, label=label, photo_aspect=aspect,  # guided from a photo: its aspect still
                       report=report), report

    return _run(ctx, session, work)


def extend_picture(ctx: AppContext, session: Session, *, side: str, amount: int, seed: int,
                   steps: int) -> Iterator[Progress | Finished]:
    """Outpaint: grow the current picture by ``amount`` cells on ``side`` (left, right, up, down),
    its cells kept exactly (:func:`infd_core.outpaint.extend`), the boxes moved with them, and
    commit it as an undo step; the canvas grows at the same pixel density. Events, errors and
    cancelling as :func:`generate`."""
    state = session.state
    if state.picture is None:
        raise ValueError("generate or open a picture before extending it")
    if side not in SIDES:
        raise ValueError(f"extend side must be one of {SIDES}, got {side!r}")
    old = state.picture.cells
    new, where = extend_cells(old, **{side: amount})
    ctx.pipe.latent_cells(new)  # too large: refused before the run

    def work(progress: ProgressFn, should_stop: Callable[[], bool]) -> tuple[Picture, None]:
        z = extend(ctx.pipe, state.picture.latent, **{side: amount}, seed=seed, steps=steps,
                   callback=lambda st: progress(st.index + 1, st.total, lambda: st.x0[:1]), should_stop=should_stop)
        return Picture(z[:1], seed=seed, label=f"extended {side} by {amount} cells to {new}"), None

    def moved(st: State) -> State:
        return replace(st, boxes=tuple(replace(b, box=box_in_extended(b.box, old, new, where)) for b in st.boxes))

    return _run(ctx, session, work, moved)


def open_photo(ctx: AppContext, session: Session, image: Image.Image, name: str = "photo",
               refine: int = 0) -> Iterator[Progress | Finished]:
    """Encode ``image`` (any size, RGB; squashed to the encoder's square input like in training),
    refine its latent for ``refine`` steps (:mod:`infd_core.inversion`), and commit it as the
    session's picture: then it zooms, exports and guides (``keep`` boxes) like a generated one.
    The canvas takes the photo's aspect (its longest side kept), so the photo is seen unsquashed.

    Events, errors and cancelling as :func:`generate`; a cancelled refinement keeps nothing.
    """
    def work(progress: ProgressFn, should_stop: Callable[[], bool]) -> tuple[Picture, None]:
        z = encode_photo(ctx.pipe, image, refine, callback=lambda i, total, loss: progress(i, total, None),
                         should_stop=should_stop)
        if should_stop():
            raise Cancelled()
        label = f"{name}, refined {refine} steps" if refine else name
        return Picture(z[:1], label=label, photo_aspect=image.width / image.height), None

    return _run(ctx, session, work)


def _run(ctx: AppContext, session: Session,
         work: Callable[[ProgressFn, Callable[[], bool]], tuple[Picture, dict[str, Any] | None]],
         also: Callable[[State], State] | None = None) -> Iterator[Progress | Finished]:
    """Run ``work(progress, should_stop)`` on the session's runner, report :class:`Progress` (with
    previews paced by :class:`PreviewPacer`) and :class:`Finished` once its picture is
    committed as an undo step (with ``also`` applied to the state, e.g. boxes moved)."""
    def job(report: Callable[[Any], None], should_stop: Callable[[], bool]) -> Finished:
        pacer = PreviewPacer(ctx.limits.preview_every)

        def progress(done: int, total: int, latent: Callable[[], Tensor] | None) -> None:
            ctx.workers.yield_to_tiles()
            preview = None
            if latent is not None and pacer.due(done, total):
                preview = session.publish(Picture(latent()), preview=True)
            report(Progress(done, total, preview))

        pic, result = on_gpu(lambda: work(progress, should_stop))
        with session.lock:
            state = replace(session.state, picture=pic)
            session.commit(also(state) if also is not None else state)
            view = session.view
        ctx.prerender(session, view)  # the view's tiles render while the browser hears of it
        return Finished(view, result)

    return session.runner.run(job, on_error=session.restore_view)


__all__ = ["Busy", "Cancelled", "Composition", "Finished", "PreviewPacer", "Progress", "build_layout",
           "composition_layout", "extend_picture", "generate", "open_photo"]
