"""Layout-to-image: region conditions at any scale steering diffusion with DPS (paper §5.5).

At every sampling step, from the predicted clean latent x̂0: decode phi once, render **only each
box** on a 224x224 grid (its cost does not depend on the canvas resolution), score it, and move
x_{t-1} against the gradient of the total loss w.r.t. x_t (Chung et al. 2023, DPS). Gradients
are RMS-normalised per step (DPS's ζ/‖r‖ normalisation, scale-free across scorers), and scaled
by ``scale`` times a schedule that decays to zero at the last step. The correction is confined
to the boxes plus a feathered ``margin`` (:func:`region_mask`): the UNet spreads ∂loss/∂x_t over
the whole latent, and an unmasked nudge re-rolls the whole picture; ``margin=None`` is plain DPS.

Region kinds (each with a :class:`~infd_core.geometry.Box` and a ``weight``):

* ``text``  -- maximise the scorer's match of the box with ``prompt``;
* ``image`` -- match a reference patch (the scorer's image embedding when it has one, and the
  patch's colours/layout at 32x32);
* ``color`` -- pull the box's mean colour to ``color`` (RGB in [0, 1]);
* ``keep``  -- keep what ``init_latent`` shows there, so the rest can be regenerated around it.

A ``global_prompt`` is a text region over the whole canvas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusion import Step
from .geometry import Box, box_to_pixels
from .pipeline import Field, Pipeline

KINDS = ("text", "image", "color", "keep")
MAX_REGIONS = 16
MAX_WEIGHT = 100.0
SCORE_SIZE = 224
MARGIN = 0.125  # image fractions: how far past its box a region's guidance fades out


@dataclass
class Region:
    """One condition: ``box`` in image fractions (x0, y0, x1, y1), see :mod:`infd_core.geometry`."""

    box: Box
    kind: str = "text"
    prompt: str = ""
    weight: float = 1.0
    color: tuple[float, float, float] | None = None
    image: np.ndarray | None = None  # [h, w, 3] uint8 reference patch

    def __post_init__(self) -> None:
        if isinstance(self.box, (list, tuple)):
            if len(self.box) != 4:
                raise ValueError(f"box must be [x0, y0, x1, y1], got {self.box!r}")
            self.box = Box(*(float(v) for v in self.box))
        if not isinstance(self.box, Box):
            raise ValueError(f"box must be a Box or [x0, y0, x1, y1], got {self.box!r}")
        self.box.check_inside()
        if self.kind not in KINDS:
            raise ValueError(f"region kind must be one of {KINDS}, got {self.kind!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"region weight must be a finite number in [0, {MAX_WEIGHT}], got {w!r}")
        if self.kind == "text" and not (isinstance(self.prompt, str) and self.prompt.strip()):
            raise ValueError("a text region needs a non-empty prompt")
        if self.kind == "color":
            c = self.color
            if c is None or len(c) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in c):
                raise ValueError(f"a color region needs color = (r, g, b) in [0, 1], got {c!r}")
            self.color = tuple(float(v) for v in c)
        if self.kind == "image":
            im = self.image
            if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError("an image region needs image = [h, w, 3] uint8 RGB array")
            if min(im.shape[:2]) < 8 or max(im.shape[:2]) > 4096:
                raise ValueError(f"reference patch must be 8..4096 px per side, got {im.shape[1]}x{im.shape[0]}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": [self.box.x0, self.box.y0, self.box.x1, self.box.y1], "kind": self.kind,
                               "weight": self.weight}
        if self.prompt:
            out["prompt"] = self.prompt
        if self.color is not None:
            out["color"] = list(self.color)
        return out  # reference images are not serialised to JSON (the app stores them beside)


@dataclass
class Layout:
    regions: list[Region] = field(default_factory=list)
    global_prompt: str = ""

    def __post_init__(self) -> None:
        if len(self.regions) > MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} regions, got {len(self.regions)}")
        if not isinstance(self.global_prompt, str):
            raise ValueError("global_prompt must be a string")

    def conditions(self) -> list[Region]:
        """Regions plus the global prompt as a whole-canvas text region."""
        extra = [Region(Box(0, 0, 1, 1), "text", self.global_prompt)] if self.global_prompt.strip() else []
        return extra + list(self.regions)

    def to_json(self) -> dict[str, Any]:
        return {"global_prompt": self.global_prompt, "regions": [r.to_json() for r in self.regions]}

    @classmethod
    def from_json(cls, data: Any) -> "Layout":
        """``{"global_prompt": str, "regions": [...]}`` or a bare list of regions; raises ValueError."""
        if isinstance(data, list):
            data = {"regions": data}
        if not isinstance(data, dict) or not isinstance(data.get("regions", []), list):
            raise ValueError("layout must be a list of regions or {\"global_prompt\", \"regions\": [...]}")
        allowed = {"box", "kind", "prompt", "weight", "color"}
        regions = []
        for i, r in enumerate(data.get("regions", [])):
            if not isinstance(r, dict) or "box" not in r:
                raise ValueError(f"region {i}: must be an object with a \"box\"")
            unknown = set(r) - allowed
            if unknown:
                raise ValueError(f"region {i}: unknown keys {sorted(unknown)}")
            try:
                regions.append(Region(**r))
            except (TypeError, ValueError) as e:
                raise ValueError(f"region {i}: {e}") from e
        return cls(regions, str(data.get("global_prompt", "") or ""))


# --- losses per region kind ----------------------------------------------------------------

def _patch_tensor(image: np.ndarray, size: int, device: torch.device) -> Tensor:
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1
    return F.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


class Objective:
    """The layout's differentiable loss on a :class:`Field`; built once per sampling run."""

    def __init__(self, pipe: Pipeline, layout: Layout, scorer: Any | None, init_latent: Tensor | None):
        self.pipe, self.scorer = pipe, scorer
        self.regions = layout.conditions()
        if not self.regions:
            raise ValueError("the layout has no regions and no global prompt")
        needs_scorer = any(r.kind in ("text", "image") for r in self.regions)
        if needs_scorer and scorer is None:
            raise ValueError("text/image regions need a scorer (infd_core.scorers.load_scorer)")
        self.targets = {i: scorer.encode_prompt(r.prompt) for i, r in enumerate(self.regions) if r.kind == "text"}
        dev = pipe.device
        self.references: dict[int, Tensor] = {}
        for i, r in enumerate(self.regions):
            if r.kind == "image":
                self.references[i] = _patch_tensor(r.image, SCORE_SIZE, dev)
            elif r.kind == "keep":
                if init_latent is None:
                    raise ValueError("a keep region needs the current image (init_latent)")
                with torch.no_grad():
                    self.references[i] = pipe.render_box(pipe.field(init_latent.to(dev)), r.box, SCORE_SIZE)
        self.ref_embeddings = {i: self._embed(t).detach() for i, t in self.references.items()
                               if self.regions[i].kind == "image" and self._can_embed()}

    def _can_embed(self) -> bool:
        return self.scorer is not None and hasattr(self.scorer, "embed_images")

    def _embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.scorer.embed_images(images), dim=-1)

    def region_losses(self, fld: Field) -> Tensor:
        """Per-condition losses ``[R]`` (lower is better), unweighted."""
        crops = [self.pipe.render_box(fld, r.box, SCORE_SIZE) for r in self.regions]  # each [1, 3, 224, 224]
        losses: list[Tensor] = [torch.zeros((), device=self.pipe.device)] * len(self.regions)
        text = sorted(self.targets)
        if text:
            scores = self.scorer.score(torch.cat([crops[i] for i in text]), [self.targets[i] for i in text])
            for k, i in enumerate(text):
                losses[i] = -scores[k]
        for i, r in enumerate(self.regions):
            if r.kind == "color":
                target = torch.tensor(r.color, device=crops[i].device) * 2 - 1
                losses[i] = (crops[i].mean(dim=(0, 2, 3)) - target).pow(2).sum() * 10
            elif r.kind == "keep":
                losses[i] = F.mse_loss(crops[i], self.references[i]) * 10
            elif r.kind == "image":
                small = lambda t: F.adaptive_avg_pool2d(t, 32)  # noqa: E731
                losses[i] = F.mse_loss(small(crops[i]), small(self.references[i])) * 10
                if i in self.ref_embeddings:
                    losses[i] = losses[i] + (1 - (self._embed(crops[i]) * self.ref_embeddings[i]).sum())
        return torch.stack(losses)

    def weights(self) -> Tensor:
        return torch.tensor([r.weight for r in self.regions], device=self.pipe.device)

    @torch.no_grad()
    def report(self, z: Tensor) -> list[dict[str, Any]]:
        """Per condition: box, kind, prompt, what the scorer understood, and the final loss."""
        losses = self.region_losses(self.pipe.field(z))
        out = []
        for i, r in enumerate(self.regions):
            item = {**r.to_json(), "loss": float(losses[i])}
            if i in self.targets:
                item["score"] = -float(losses[i])
                item["understood_as"] = self.targets[i].explain()
                item["known"] = bool(getattr(self.targets[i], "known", True))
            out.append(item)
        return out


def render_box_fixed_resolution(pipe: Pipeline, fld: Field, box: Box, canvas: int, size: int = SCORE_SIZE) -> Tensor:
    """The fixed-resolution way, for comparison only (bench/guidance.py): render the box's whole
    region at the canvas resolution, then resize it to ``size``^2. Cost grows with ``canvas``."""
    full = pipe.render_tensor(fld, canvas, canvas, box_to_pixels(box, canvas, canvas))
    return F.interpolate(full, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def strength(step: int, total: int) -> float:
    """Guidance schedule: strongest at the first step, linearly down to zero at the last."""
    return 1.0 - step / max(total, 1)


def region_mask(boxes: list[Box], size: int, margin: float) -> Tensor:
    """Where guidance acts on a ``size x size`` latent: ``[size, size]`` (rows y, columns x) in
    [0, 1]; 1 at cell centres inside any box, falling linearly to 0 at ``margin`` (image
    fractions, Chebyshev distance) outside it."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # cell centres in [0, 1]
    mask = torch.zeros(size, size)
    for b in boxes:
        dy = torch.clamp(torch.maximum(b.y0 - c, c - b.y1), min=0)[:, None]
        dx = torch.clamp(torch.maximum(b.x0 - c, c - b.x1), min=0)[None, :]
        mask = torch.maximum(mask, torch.clamp(1 - torch.maximum(dx, dy) / max(margin, 1e-6), min=0))
    return mask


def dps_guidance(pipe: Pipeline, objective: Objective, scale: float, margin: float | None = MARGIN,
                 on_loss: Callable[[int, Tensor], None] | None = None):
    """The sampler hook: x̂0 -> phi -> per-box renders -> loss -> normalised -∂loss/∂x_t, confined
    to the boxes (:func:`region_mask`; ``margin=None``: everywhere)."""
    mask = None if margin is None else region_mask([r.box for r in objective.regions], pipe.latent_shape[-1],
                                                   margin).to(pipe.device)
    area = 1.0 if mask is None else float(mask.mean())  # the RMS is over the guided cells, not the whole latent

    def hook(x_t: Tensor, x0: Tensor, step: int, total: int) -> Tensor | None:
        fld = pipe.field(pipe.denormalize(x0), grad=True)
        losses = objective.region_losses(fld)
        loss = (objective.weights() * losses).sum()
        (grad,) = torch.autograd.grad(loss, x_t)
        if on_loss is not None:
            on_loss(step, losses.detach())
        if mask is not None:
            grad = grad * mask.to(grad.dtype)
        rms = (grad.pow(2).mean() / max(area, 1e-6)).sqrt()
        if not torch.isfinite(rms) or rms == 0:
            return None
        return -scale * strength(step, total) * grad / rms

    return hook


def guided_sample(pipe: Pipeline, layout: Layout, *, seed: int = 0, steps: int = 50, scale: float = 1.0,
                  scorer: Any | None = None, init_latent: Tensor | None = None, sampler: str = "ddim",
                  eta: float | None = None, margin: float | None = MARGIN,
                  callback: Callable[[Step], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Sample a latent ``[1, 3, 64, 64]`` steered by ``layout``; returns it and a report.

    ``scale`` is the guidance strength (0 = unguided, same result as ``pipe.sample`` for the
    seed); ``init_latent`` is the current image, needed by ``keep`` regions; ``margin`` (image
    fractions) is how far past the boxes the guidance reaches (None: everywhere, plain DPS). The
    report names the scorer, each condition's final score/loss and what each prompt was understood as.
    """
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}")
    if margin is not None and not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"guidance margin must be a finite number >= 0 or None, got {margin!r}")
    if init_latent is not None:
        pipe.autoencoder.check_latent(init_latent)
    objective = Objective(pipe, layout, scorer, init_latent)
    trace: list[list[float]] = []
    hook = dps_guidance(pipe, objective, float(scale), margin, on_loss=lambda i, l: trace.append(l.tolist()))
    z = pipe.sample(seed, steps=steps, sampler=sampler, eta=eta, guidance=hook if scale > 0 else None,
                    callback=callback, should_stop=should_stop)
    report = {"scorer": getattr(scorer, "name", None), "scale": scale, "margin": margin, "steps": steps,
              "seed": seed, "regions": objective.report(z), "loss_trace": trace}
    return z, report
