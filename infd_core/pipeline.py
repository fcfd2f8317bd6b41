"""The facade: load a model, sample latents, decode to a field once, render any part of it.

The app, the CLI, training previews and the tests call this; none of them reach into the
model modules. Typical use::

    pipe = Pipeline.load()                      # the embedded default model, CPU
    z = pipe.sample(seed=0, steps=50)           # [1, 3, 64, 64]
    field = pipe.field(z)                       # phi, computed once per latent
    img = pipe.render(field, 2048, 2048)        # [2048, 2048, 3] uint8, tile by tile
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import checkpoint as ckpt
from .autoencoder import Autoencoder
from .configs import ModelConfig
from .diffusion import DEFAULT_STRIDE, Guidance, Known, LowFreq, Step, build_unet, canvas_eps, sample, unet_eps
from .geometry import Box, PixelRange, Size, box_grid, check_cells, check_level
from .images import to_tensor
from .precision import Precision
from .precision import auto as measured_precision
from .renderers import fixed_norm_statistics, norm_statistics
from .tiling import (DEFAULT_TILE, render_authors_patchwise, render_piece, render_pixels,
                     render_region)

DEFAULT_MODEL_NAME = "infd-cpu-photos"

LATENT_SLACK = 4.0  # times the training latents' largest magnitude: what a latent from a file may reach
LATENT_CAP = 1e3  # the same, for a model without a recorded latent range


def assets_dir() -> Path:
    """The shipped assets (models, OpenSeadragon): ``infd_core/_assets`` in an installed package
    (``pip install .`` puts the repository's ``assets/`` there), else ``assets/`` in the repository."""
    package = Path(__file__).resolve().parent
    installed = package / "_assets"
    return installed if installed.is_dir() else package.parent / "assets"


def default_model_dir() -> Path:
    """``$INFD_MODEL`` if set, else the shipped model ``assets/models/infd-cpu-photos``."""
    return Path(os.environ.get("INFD_MODEL") or assets_dir() / "models" / DEFAULT_MODEL_NAME)


def pick_device(cuda: bool, mps: bool) -> str:
    """What ``device="auto"`` means, given which accelerators are available: cuda, then mps, then cpu."""
    return "cuda" if cuda else "mps" if mps else "cpu"


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (see :func:`pick_device`);
    RuntimeError if the requested accelerator is not available here."""
    if device == "auto":
        device = pick_device(torch.cuda.is_available(), torch.backends.mps.is_available())
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' requested but MPS is not available here; use --device cpu")
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@dataclass
class Field:
    """A decoded latent: ``phi [B, C, 4h, 4w]`` and the renderer's per-image norm statistics."""

    phi: Tensor
    norm_stats: list

    @property
    def aspect(self) -> float:
        """Width over height of the image (a panorama of 192x64 cells: 3)."""
        return self.phi.shape[-1] / self.phi.shape[-2]


class Pipeline:
    """A neural-field autoencoder and (optionally) its latent diffusion model on one device.

    ``precision``: "fp32" (exact, the default), "bf16" (autocast + channels_last: 3-6x faster
    on CPUs with AMX/AVX512-bf16, ~1 % error), "auto" (each of decoder, renderer and UNet in the
    precision measured faster on this machine, where bf16 is supported:
    :mod:`infd_core.precision`), or a :class:`~infd_core.precision.Precision`. Query coordinates
    always stay float32.
    """

    def __init__(self, cfg: ModelConfig, autoencoder: Autoencoder, unet: torch.nn.Module | None = None, *,
                 device: str | torch.device = "cpu", precision: str | Precision = "fp32"):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.autoencoder = autoencoder.to(self.device).eval().requires_grad_(False)
        self.unet = unet.to(self.device).eval().requires_grad_(False) if unet is not None else None
        self.precision = self._choose(precision)
        for part, module in (("decoder", self.autoencoder.decoder), ("renderer", self.autoencoder.renderer),
                             ("unet", self.unet)):
            if module is not None and self.precision.dtype(part) is not None:
                module.to(memory_format=torch.channels_last)

    def _choose(self, precision: str | Precision) -> Precision:
        if isinstance(precision, Precision):
            return precision
        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
        if precision != "auto":
            return Precision.uniform(precision)
        if not bf16_supported(self.device):
            return Precision.uniform("fp32")
        return measured_precision(self.cfg.to_json(), self.autoencoder, self.unet, self.latent_shape, self.device)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig, *, seed: int = 0, **kw) -> "Pipeline":
        """Randomly initialised modules (for tests, benchmarks and as a training start)."""
        torch.manual_seed(seed)
        unet = build_unet(cfg.diffusion) if cfg.diffusion is not None else None
        return cls(cfg, Autoencoder(cfg.autoencoder), unet, **kw)

    @classmethod
    def load(cls, folder: str | Path | None = None, **kw) -> "Pipeline":
        """Load a model folder (default: :func:`default_model_dir`); raises CheckpointError on any mismatch."""
        folder = Path(folder) if folder is not None else default_model_dir()
        cfg = ckpt.read_config(folder)
        ae = Autoencoder(cfg.autoencoder)
        ckpt.load_weights(ae, folder / "autoencoder.safetensors")
        unet = None
        if cfg.diffusion is not None:
            unet = build_unet(cfg.diffusion)
            ckpt.load_weights(unet, folder / "unet.safetensors")
        return cls(cfg, ae, unet, **kw)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        ckpt.write_config(folder, self.cfg)
        ckpt.save_weights(self.autoencoder, folder / "autoencoder.safetensors")
        if self.unet is not None:
            ckpt.save_weights(self.unet, folder / "unet.safetensors")

    # --- latents ----------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """The side of the square the encoder sees (every photo is squashed to it, as in training)."""
        return self.cfg.autoencoder.input_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        n = self.cfg.autoencoder.latent_size
        return (self.cfg.autoencoder.z_channels, n, n)

    def latent_cells(self, cells: tuple[int, int] | None = None) -> Size:
        """A latent extent ``(h, w)`` checked for this model (None: its square, 64 x 64)."""
        n = self.latent_shape[-1]
        if cells is None:
            return Size(n, n)
        return check_cells(*(int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                             for v in cells), base=n)

    def sample(self, seed: int = 0, *, steps: int | None = None, sampler: str = "ddim", eta: float | None = None,
               batch: int = 1, cells: tuple[int, int] | None = None, method: str = "windows",
               stride: int = DEFAULT_STRIDE, guidance: Guidance | None = None, known: Sequence[Known] = (),
               low: Sequence[LowFreq] = (), resample: int = 0, init: Tensor | None = None,
               strength: float = 1.0, callback: Callable[[Step], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Tensor:
        """Generate latents ``[batch, 3, h, w]`` (``cells = (h, w)``, default the model's 64 x 64),
        ready for :meth:`field`.

        A latent beyond the UNet's square is sampled by ``method`` (:data:`~infd_core.diffusion.METHODS`):
        ``"windows"`` (MultiDiffusion: the UNet on overlapping 64² windows ``stride`` cells apart,
        fused at every step), ``"direct"`` (the UNet on the whole latent) or ``"redilate"``
        (ScaleCrafter: direct, with re-dilated down/mid convolutions in the early steps).

        Every latent going in or out is an autoencoder latent, as :meth:`encode` makes and
        :meth:`field` takes; the UNet's normalised units stay inside. ``steps``, ``eta``: DDIM's
        (None: the model's own, ``DiffusionConfig.steps``, ``.eta``). ``guidance(x_t, x0, step,
        total)`` gets x̂0 as a latent (differentiable w.r.t. ``x_t``) and returns a correction
        direction for x_{t-1} (or None); ``known``: cells held to ``Known.x0`` (a latent) where its
        ``mask`` is 1, ``low``: block means held to ``LowFreq.x0``'s (a latent; a composition),
        with ``resample`` harmonising passes per step; ``init`` (a latent) and ``strength``: SDEdit,
        the last ``strength`` of the schedule run from ``init`` noised to its level
        (:func:`infd_core.diffusion.sample`); ``callback`` sees each :class:`Step` with ``x`` and
        ``x0`` as latents.
        """
        if self.unet is None:
            raise RuntimeError(f"model {self.cfg.name!r} has no diffusion UNet (autoencoder-only)")
        gen = torch.Generator().manual_seed(int(seed))
        d = self.cfg.diffusion
        hook = None if guidance is None else (lambda x_t, x0, i, n: guidance(x_t, d.denormalize(x0), i, n))
        cells = self.latent_cells(cells)
        for k in known:
            self.autoencoder.check_latent(k.x0)
            if tuple(k.x0.shape[-2:]) != cells:
                raise ValueError(f"held cells are {tuple(k.x0.shape[-2:])}, the canvas is {cells} cells")
        known = [Known(d.normalize(k.x0.float().to(self.device)), k.mask, k.until) for k in known]
        for h in low:
            self.autoencoder.check_latent(h.x0)
            if tuple(h.x0.shape[-2:]) != cells:
                raise ValueError(f"held low frequencies are {tuple(h.x0.shape[-2:])} cells, the canvas is {cells} cells")
        low = [LowFreq(d.normalize(h.x0.float().to(self.device)), h.k, h.mask, h.until) for h in low]
        if init is not None:
            self.check_latent(init)
            if tuple(init.shape[-2:]) != cells:
                raise ValueError(f"the picture to start from is {tuple(init.shape[-2:])} cells, the canvas is {cells}")
            init = d.normalize(init.float().to(self.device)).expand(batch, -1, -1, -1)
        shown = None if callback is None else (
            lambda st: callback(Step(st.index, st.total, st.timestep, d.denormalize(st.x), d.denormalize(st.x0))))
        steps = d.steps if steps is None else steps
        eps = canvas_eps(unet_eps(self.unet, d, self.precision.dtype("unet")), self.unet, d, cells,
                         self.latent_shape[-1], method, stride)
        x = sample(eps, d, (batch, self.latent_shape[0], *cells), steps=steps,
                   sampler=sampler, eta=d.eta if eta is None else eta, generator=gen, device=self.device,
                   guidance=hook, known=known, low=low, resample=resample, init=init, strength=strength,
                   callback=shown, should_stop=should_stop)
        return d.denormalize(x)

    def check_latent(self, z: Tensor, *, from_file: bool = False) -> None:
        """Raise (TypeError/ValueError) unless ``z`` is a latent this model decodes: ``[B, C, h, w]``
        of an extent :func:`~infd_core.geometry.check_cells` allows, finite. ``from_file``: a latent
        from outside (a session or latent file) must also lie within ``LATENT_SLACK`` times the
        largest magnitude of the model's training latents (``DiffusionConfig.latent_range``; without
        one, ``LATENT_CAP``): a latent of 1e30 is no picture (it renders black)."""
        self.autoencoder.check_latent(z)
        if from_file:
            rng = self.cfg.diffusion.latent_range if self.cfg.diffusion is not None else None
            bound = LATENT_SLACK * max(abs(v) for v in rng) if rng is not None else LATENT_CAP
            peak = float(z.abs().max())
            if peak > bound:
                raise ValueError(f"latent values reach {peak:.3g}, beyond this model's range (±{bound:.3g}): "
                                 "not a latent of this model")

    @torch.no_grad()
    def encode(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        """An RGB image (PIL, ``[H, W, 3]`` uint8, or ``[B, 3, H, W]`` in [-1, 1]) -> latent ``[B, 3, 64, 64]``."""
        return self.autoencoder.encode(to_tensor(image).to(self.device))

    # --- fields and pixels --------------------------------------------------------------------
    def field(self, z: Tensor, *, grad: bool = False) -> Field:
        """Decode ``z [B, 3, h, w]`` (64 x 64, or any extent :func:`~infd_core.geometry.check_cells`
        allows) once into a :class:`Field` ``phi [B, C, 4h, 4w]``; differentiable if ``grad``."""
        self.autoencoder.check_latent(z)
        with torch.set_grad_enabled(grad), self._autocast("decoder"):
            phi = self.autoencoder.decode(z.to(self.device).float())
        phi = phi.float() if self.precision.dtype("renderer") is None else phi
        with self._autocast("renderer"):  # a bf16 phi needs autocast, and the statistics should match bf16 renders
            stats = norm_statistics(self.autoencoder.renderer, phi.detach())
        return Field(phi, stats)

    def render(self, field: Field, height: int, width: int, region: PixelRange | None = None, *,
               tile: int = DEFAULT_TILE, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Region (default: all) of the image at ``height x width`` -> ``[h, w, 3]`` uint8, tile by
        tile, with the field's fixed norm statistics: tiles are exact pieces of the whole."""
        return render_region(self.autoencoder.renderer, field.phi, height, width, region, tile=tile,
                             progress=progress, **self._render_kw(field))

    def render_authors_patchwise(self, field: Field, height: int, width: int, region: PixelRange | None = None,
                                 *, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """As :meth:`render`, the way the authors' evaluation renders: 256² patches with 8-px padding,
        each with its own norm statistics (reproduces their published samples; not exact tiles)."""
        return render_authors_patchwise(self.autoencoder.renderer, field.phi, height, width, region,
                                        progress=progress, **self._renderer_kw())

    def render_piece(self, field: Field, height: int, width: int, rng: PixelRange) -> np.ndarray:
        """Pixels ``rng`` of the image at ``height x width`` in one pass (a viewer tile): ``[h, w, 3]``
        uint8, the same pixels as :meth:`render` gives for them."""
        return render_piece(self.autoencoder.renderer, field.phi, height, width, rng, **self._render_kw(field))

    def render_tensor(self, field: Field, height: int, width: int, rng: PixelRange) -> Tensor:
        """Pixels ``rng`` of level ``height x width`` as ``[B, 3, h, w]`` float in ~[-1, 1] (differentiable)."""
        return render_pixels(self.autoencoder.renderer, field.phi, height, width, rng, **self._render_kw(field))

    def render_box(self, field: Field, box: Box, size: int = 224) -> Tensor:
        """``box`` rendered on a ``size x size`` grid: ``[B, 3, size, size]``, differentiable w.r.t. phi.

        Cost depends on ``size`` only, never on the canvas resolution (the paper's §5.5 point).
        """
        renderer = self.autoencoder.renderer
        pad = renderer.receptive_radius
        coord, cell = box_grid(box, size, size, pad=pad)
        b = field.phi.shape[0]
        coord = coord.to(self.device)[None].expand(b, -1, -1, -1)
        cell = cell.to(self.device)[None].expand(b, -1, -1, -1)
        with self._autocast("renderer"), fixed_norm_statistics(field.norm_stats):
            out = renderer(field.phi, coord, cell)
        return out[..., pad:pad + size, pad:pad + size].float()

    def _renderer_kw(self) -> dict:
        dtype = self.precision.dtype("renderer")
        return dict(autocast_dtype=dtype, channels_last=dtype is not None)

    def _render_kw(self, field: Field) -> dict:
        return dict(norm_stats=field.norm_stats, **self._renderer_kw())

    def _autocast(self, part: str) -> contextlib.AbstractContextManager:
        dtype = self.precision.dtype(part)
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def describe(self) -> dict:
        n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        ae = self.autoencoder
        return {"name": self.cfg.name, "device": str(self.device),
                "precision": str(self.precision),
                "params": {"encoder": n(ae.encoder), "decoder": n(ae.decoder), "renderer": n(ae.renderer),
                           "unet": n(self.unet)},
                "renderer": dataclasses.asdict(self.cfg.autoencoder.renderer),
                "phi_channels": ae.phi_channels, "receptive_radius": ae.renderer.receptive_radius}


def check_size(height: int, width: int, max_pixels: int | None = None) -> None:
    """Validate an output size, optionally against a pixel budget (the app's export limit)."""
    check_level(height, width)
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(f"{Size(height, width)} exceeds the limit of {max_pixels} pixels")
