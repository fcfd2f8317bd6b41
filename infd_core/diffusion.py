"""Latent diffusion: the UNet, the noise schedule and the samplers.

The UNet is diffusers' ``UNet2DModel`` and the update rules are diffusers' DDPM/DDIM
schedulers; what lives here is the glue in the spirit of k-diffusion: small functions over
tensors, with a per-step callback (progress, previews), a guidance hook (DPS, see
:mod:`infd_core.guidance`) and cooperative cancellation.

Canvases larger than the UNet's square (panoramas, 2x latents) are sampled by wrapping the
ε-model (:data:`EpsModel`): :func:`windowed_eps` fuses overlapping windows (MultiDiffusion,
Bar-Tal et al. 2023), :func:`redilated_eps` runs the UNet on the whole latent with dilated
convolutions for the early steps (ScaleCrafter's re-dilation, He et al. 2023); :data:`METHODS`
names the three ways, ``"direct"`` being the plain UNet on the whole latent.

Latents seen by the UNet are *normalised*: ``(z - latent_mean) / latent_std`` with the
statistics stored in :class:`DiffusionConfig` (the pipeline converts).
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn


class Cancelled(Exception):
    """Raised by a sampler when ``should_stop()`` returned True between two steps."""


@dataclass
class DiffusionConfig:
    """UNet size (``UNet2DModel`` keyword arguments), the authors' schedule, and what the UNet predicts.

    ``prediction``: "epsilon" (the authors') or "v" (v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0, Salimans & Ho
    2022): near t = T an ε-model must recover x0 from x_t / sqrt(ᾱ_T) ~ 200 x_t, so small ε errors
    in the lowest frequencies become large colour casts; a v-model predicts x0 there directly.
    ``latent_range``: (min, max) of the training latents (denormalised); when set, the sampler
    clamps its x0 prediction to it at every step (like DDPM's ``clip_sample`` for pixels).
    ``eta``: the DDIM η the model samples with unless told otherwise (1.0: the authors'; the cpu
    preset's 0.0, deterministic, keeps box guidance local where η = 1 turns it into a new image).
    ``steps``: how many sampling steps a caller gets unless it asks for a number.
    ``timestep_spacing`` and ``set_alpha_to_one`` (diffusers' names) pick the timesteps a run of N
    steps visits and what its last step returns. infd's own: "trailing" (999, 994, ..., 4 for 200)
    and ᾱ_prev = ᾱ_0 at the end. The authors' (ADM's ``ddimN``): "leading" (995, 990, ..., 0) and
    ``set_alpha_to_one`` (ᾱ_prev = 1: the last step returns the predicted x0).
    """

    unet: dict[str, Any] = field(default_factory=dict)
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    latent_mean: float = 0.0
    latent_std: float = 1.0
    prediction: str = "epsilon"
    latent_range: tuple[float, float] | None = None
    eta: float = 1.0
    steps: int = 50
    timestep_spacing: str = "trailing"
    set_alpha_to_one: bool = False

    def __post_init__(self) -> None:
        self.unet = json.loads(json.dumps(self.unet))  # tuples -> lists: equal to the config read back from disk
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be an integer in [1, {self.num_train_timesteps}], got {self.steps!r}")
        if self.timestep_spacing not in ("trailing", "leading"):
            raise ValueError(f"timestep_spacing must be 'trailing' or 'leading', got {self.timestep_spacing!r}")
        if self.prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {self.prediction!r}")
        if self.latent_range is not None:
            lo, hi = (float(v) for v in self.latent_range)
            if not lo < hi:
                raise ValueError(f"latent_range must be (min, max) with min < max, got {self.latent_range}")
            self.latent_range = (lo, hi)

    def betas(self) -> np.ndarray:
        """Linear betas, float64, as the authors' ``np.linspace``."""
        return np.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=np.float64)

    def normalize(self, z: Tensor) -> Tensor:
        """Autoencoder latents -> the UNet's units: ``(z - latent_mean) / latent_std``."""
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, x: Tensor) -> Tensor:
        """The UNet's units -> autoencoder latents (inverse of :meth:`normalize`)."""
        return x * self.latent_std + self.latent_mean


def unet_kwargs(ch: int, mult: tuple[int, ...], blocks: int, attn_levels: tuple[int, ...], head_dim: int = 32,
                sample_size: int = 64, channels: int = 3) -> dict[str, Any]:
    """``UNet2DModel`` arguments for an ADM-style UNet; ``attn_levels`` are level indices with attention."""
    down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(mult)))
    up = tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(len(mult))))
    return dict(sample_size=sample_size, in_channels=channels, out_channels=channels,
                block_out_channels=tuple(ch * m for m in mult), layers_per_block=blocks,
                down_block_types=down, up_block_types=up, attention_head_dim=head_dim,
                norm_num_groups=32, norm_eps=1e-5, add_attention=True)


def build_unet(cfg: DiffusionConfig) -> UNet2DModel:
    return UNet2DModel(**cfg.unet)


def make_scheduler(cfg: DiffusionConfig, sampler: str) -> DDIMScheduler | DDPMScheduler:
    """A fresh diffusers scheduler for ``sampler`` ("ddim" or "ddpm"); ε-prediction, no clipping,
    the timesteps of ``cfg.timestep_spacing``."""
    common = dict(num_train_timesteps=cfg.num_train_timesteps, trained_betas=cfg.betas(),
                  prediction_type="epsilon", clip_sample=False, timestep_spacing=cfg.timestep_spacing)
    if sampler == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=cfg.set_alpha_to_one)
    if sampler == "ddpm":
        return DDPMScheduler(**common, variance_type="fixed_small")
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")


@dataclass
class Step:
    """What a callback sees after each step: ``x`` is x_{t-1}, ``x0`` the prediction made at t."""

    index: int
    total: int
    timestep: int
    x: Tensor
    x0: Tensor


class Guidance(Protocol):
    def __call__(self, x_t: Tensor, x0: Tensor, step: int, total: int) -> Tensor | None:
        """Given x_t (requires grad) and x0 = x0(x_t) (differentiable), return a correction
        to add to x_{t-1}, or None."""


@dataclass
class Known:
    """Cells whose clean value is known (inpainting, outpainting, "keep"): after every step the
    sample is replaced there by ``x0`` noised to the new step's level, and by ``x0`` itself at
    the end (RePaint, Lugmayr et al. 2022). ``x0 [B, C, h, w]``; ``mask`` broadcastable to it,
    in [0, 1] (1: known; fractions blend, for a feathered seam). ``until``: the fraction of the
    steps for which the cells are held (1.0: to the end; less lets the sampler rework them)."""

    x0: Tensor
    mask: Tensor
    until: float = 1.0

    def __post_init__(self) -> None:
        if float(self.mask.min()) < 0 or float(self.mask.max()) > 1:
            raise ValueError("known mask must lie in [0, 1]")
        if not 0 < self.until <= 1:
            raise ValueError(f"until must be in (0, 1], got {self.until}")

    def active(self, step: int, total: int) -> bool:
        """Whether the cells are held after step ``step`` (0-based) of ``total``."""
        return self.until >= 1 or step + 1 <= self.until * total


@dataclass
class LowFreq:
    """Low frequencies held (ILVR, Choi et al. 2021, in latent space): at every step the predicted
    clean latent x̂0 gets the ``k x k``-cell block averages of ``x0`` in place of its own, so the
    sampler paints texture over a given composition. ``x0 [B, C, h, w]`` (the reference; only its
    block averages matter); ``mask`` ``[h, w]`` in [0, 1] (None: everywhere) says where; ``until``:
    the fraction of the steps it acts (1.0: to the end, where the final sample's block averages
    are the reference's exactly on fully masked blocks). Blocks start at cell (0, 0); the last
    ones of an axis not divisible by ``k`` are shorter."""

    x0: Tensor
    k: int
    mask: Tensor | None = None
    until: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 64:
            raise ValueError(f"low-frequency block size k must be an integer in [1, 64] cells, got {self.k!r}")
        if self.mask is not None and (float(self.mask.min()) < 0 or float(self.mask.max()) > 1):
            raise ValueError("low-frequency mask must lie in [0, 1]")
        if not 0 < self.until <= 1:
            raise ValueError(f"until must be in (0, 1], got {self.until}")

    def active(self, step: int, total: int) -> bool:
        """Whether it acts on the prediction of step ``step`` (0-based) of ``total``."""
        return self.until >= 1 or step + 1 <= self.until * total


def block_means(x: Tensor, k: int) -> Tensor:
    """``[B, C, h, w] -> [B, C, ceil(h/k), ceil(w/k)]``: the means of ``k x k`` cell blocks (the
    last block of an axis averages only the cells it has)."""
    return F.avg_pool2d(x, k, ceil_mode=True)


def block_spread(means: Tensor, k: int, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`block_means` for block-constant latents: each block's value on its cells,
    cropped to ``size = (h, w)``."""
    return means.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :size[0], :size[1]]


def hold_low(x: Tensor, low: LowFreq) -> Tensor:
    """``x`` with its ``k``-cell block means replaced by the reference's, high frequencies untouched.
    With a mask, a block's mean is over its masked cells (weighted by the mask), and only those
    move: a block cut by a box's edge gets the box's cells' mean right without pushing the few
    cells it has inside (a 0/1 mask makes it exact; fractions blend)."""
    size, k = tuple(x.shape[-2:]), low.k
    if low.mask is None:
        return x + block_spread(block_means(low.x0, k) - block_means(x, k), k, size)
    m = low.mask.to(x.dtype).expand(1, 1, *size)
    weight = block_means(m, k).clamp_min(1e-6)
    delta = (block_means(m * low.x0, k) - block_means(m * x, k)) / weight
    return x + m * block_spread(delta, k, size)


def blend_known(x: Tensor, known: Known, alpha_bar: Tensor | None, noise: Tensor | None) -> Tensor:
    """``x`` with the known cells replaced by ``known.x0`` noised to ``alpha_bar`` (None: clean)."""
    target = known.x0 if alpha_bar is None else alpha_bar.sqrt() * known.x0 + (1 - alpha_bar).sqrt() * noise
    m = known.mask.to(x.dtype)
    return m * target + (1 - m) * x


def renoise(x: Tensor, alpha_bar_from: Tensor, alpha_bar_to: Tensor, noise: Tensor) -> Tensor:
    """Forward diffusion from level ᾱ_from to the noisier ᾱ_to: q(x_to | x_from)."""
    a = alpha_bar_to / alpha_bar_from
    return a.sqrt() * x + (1 - a).sqrt() * noise


EpsModel = Callable[[Tensor, Tensor], Tensor]


def unet_eps(unet: UNet2DModel, cfg: DiffusionConfig, autocast_dtype: torch.dtype | None = None) -> EpsModel:
    """Wrap a UNet as ``eps(x [B, C, h, w], t [B]) -> eps [B, C, h, w]`` (float32 out), whatever
    ``cfg.prediction`` it was trained for: the samplers only ever see ε."""
    abar = alphas_cumprod(cfg)

    def eps(x: Tensor, t: Tensor) -> Tensor:
        ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            out = unet(x, t).sample.float()
        if cfg.prediction == "epsilon":
            return out
        a = at_timesteps(abar, t, x)
        return (1 - a).sqrt() * x + a.sqrt() * out  # ε from v

    return eps


METHODS = ("windows", "direct", "redilate")  # how a latent beyond the UNet's square is sampled
DEFAULT_STRIDE = 16  # cells between window starts (a 64-cell window overlaps its neighbour by 48)
REDILATE_UNTIL = 0.7  # re-dilated convolutions for steps with t >= (1 - this) T: the early 70 %


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Starts of ``window``-cell windows along an axis of ``n >= window`` cells: every ``stride``
    cells, plus one ending exactly at ``n`` (so every cell is covered)."""
    if n < window:
        raise ValueError(f"an axis of {n} cells is shorter than the {window}-cell window")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"window stride must be an integer in [1, {window}], got {stride!r}")
    starts = list(range(0, n - window + 1, stride))
    return starts if starts[-1] == n - window else starts + [n - window]


def window_edges(n: int, window: int, stride: int) -> list[int]:
    """Cells along an axis of ``n`` where a window of :func:`window_starts` starts or ends (inside
    the axis only): where seams would show if the fusion were wrong."""
    starts = window_starts(n, window, stride)
    return sorted({e for s in starts for e in (s, s + window)} - {0, n})


def window_weight(window: int) -> Tensor:
    """``[window, window]`` fusion weight of one window: a tent, highest at the centre and 1/window
    at the edge cells, so a cell's fused prediction changes smoothly where windows start or end
    (uniform weights, MultiDiffusion's, change abruptly there)."""
    ramp = torch.minimum(torch.arange(window) + 1.0, window - torch.arange(window).float()) / (window / 2)
    return ramp[:, None] * ramp[None, :]


def windowed_eps(eps_model: EpsModel, window: int, stride: int = DEFAULT_STRIDE, batch: int = 16) -> EpsModel:
    """MultiDiffusion: ``eps(x [B, C, h, w], t)`` for any ``h, w >= window`` from ``eps_model`` run on
    overlapping ``window``² crops (``stride`` cells apart, ``batch`` crops per call), fused by
    :func:`window_weight`. DDIM/DDPM steps are affine in ε, so fusing ε is fusing each window's
    step. Deterministic, and differentiable w.r.t. ``x`` (guidance acts on the whole canvas)."""
    weight = window_weight(window)

    def eps(x: Tensor, t: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if (h, w) == (window, window):
            return eps_model(x, t)
        spots = [(y, c) for y in window_starts(h, window, stride) for c in window_starts(w, window, stride)]
        wt = weight.to(x.device)
        out = x.new_zeros(x.shape)
        total = x.new_zeros((1, 1, h, w))
        for i in range(0, len(spots), batch):
            part = spots[i:i + batch]
            crops = torch.cat([x[..., y:y + window, c:c + window] for y, c in part])
            pred = eps_model(crops, t.repeat(len(part)))
            for k, (y, c) in enumerate(part):
                out = out + F.pad(pred[k * b:(k + 1) * b] * wt, (c, w - c - window, y, h - y - window))
                total[..., y:y + window, c:c + window] += wt
        return out / total

    return eps


def redilation_convs(unet: nn.Module) -> list[nn.Conv2d]:
    """The convolutions ScaleCrafter re-dilates: the 3x3 stride-1 ones of the UNet's down and mid
    blocks (resnets; not the downsamplers, ``conv_in`` or the up blocks)."""
    parts = [*getattr(unet, "down_blocks", []), getattr(unet, "mid_block", None)]
    return [m for part in parts if part is not None for m in part.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)]


@contextlib.contextmanager
def redilated(unet: nn.Module, factor: int):
    """Within the block, :func:`redilation_convs` of ``unet`` have dilation and padding ``factor``
    (same output size, a ``factor`` times wider receptive field); restored on exit."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"dilation factor must be an integer >= 1, got {factor!r}")
    convs = redilation_convs(unet)
    saved = [(m.dilation, m.padding) for m in convs]
    try:
        for m in convs:
            m.dilation, m.padding = (factor, factor), (factor, factor)
        yield convs
    finally:
        for m, (d, p) in zip(convs, saved, strict=True):
            m.dilation, m.padding = d, p


def redilated_eps(eps_model: EpsModel, unet: nn.Module, factor: int, min_timestep: int) -> EpsModel:
    """ScaleCrafter's re-dilation: ``eps_model`` (which runs ``unet``) with :func:`redilated`
    convolutions at timesteps ``>= min_timestep`` (the early, structure-forming steps), plain after."""
    def eps(x: Tensor, t: Tensor) -> Tensor:
        if factor > 1 and int(t.max()) >= min_timestep:
            with redilated(unet, factor):
                return eps_model(x, t)
        return eps_model(x, t)

    return eps


def canvas_eps(eps_model: EpsModel, unet: nn.Module, cfg: DiffusionConfig, cells: tuple[int, int], window: int,
               method: str = "windows", stride: int = DEFAULT_STRIDE, until: float = REDILATE_UNTIL) -> EpsModel:
    """The ε-model that samples an ``h x w``-cell latent with a UNet trained on ``window``²:
    ``"windows"`` (:func:`windowed_eps`), ``"direct"`` (the UNet on the whole latent) or
    ``"redilate"`` (:func:`redilated_eps`, dilation = the rounded scale factor ``max(h, w) / window``
    for steps with t >= (1 - ``until``) T)."""
    if method not in METHODS:
        raise ValueError(f"canvas method must be one of {METHODS}, got {method!r}")
    if method == "windows":
        window_starts(max(cells), window, stride)  # a bad stride fails now, not at the first step
        return windowed_eps(eps_model, window, stride)
    if method == "redilate":
        if not 0 < until <= 1:
            raise ValueError(f"redilation until must be in (0, 1], got {until}")
        factor = max(1, round(max(cells) / window))
        return redilated_eps(eps_model, unet, factor, math.ceil((1 - until) * cfg.num_train_timesteps))
    return eps_model


def training_target(x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: str) -> Tensor:
    """What the UNet learns to output for ``x_t = q_sample(x0, t, noise, alphas_cumprod)``: ε, or v."""
    if prediction == "epsilon":
        return noise
    a = at_timesteps(alphas_cumprod, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predict_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - ᾱ) ε) / sqrt(ᾱ)."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def sample(eps_model: EpsModel, cfg: DiffusionConfig, shape: tuple[int, ...], *, steps: int = 50, sampler: str = "ddim",
           eta: float = 1.0, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
           x_T: Tensor | None = None, guidance: Guidance | None = None, known: Sequence[Known] = (),
           low: Sequence[LowFreq] = (), resample: int = 0, init: Tensor | None = None, strength: float = 1.0,
           callback: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] | None = None) -> Tensor:
    """Run the reverse process from noise; returns normalised latents ``shape`` (float32).

    Deterministic for a given ``generator`` state (initial noise and DDIM/DDPM noise are
    drawn from it on the CPU). ``eta`` is DDIM's (1.0 = the authors' setting; 0 = deterministic).
    ``known``: cells held to given clean values (:class:`Known`, applied in order: a later one
    wins where masks overlap); their noise (one draw per step, shared) comes from the same
    generator, after the step's own.
    ``low``: block means held (:class:`LowFreq`, in order: a later one wins where masks overlap),
    applied to each step's x̂0 (the step then moves towards it) and to the final sample, before
    ``known``.
    ``init`` (normalised, like ``x_T``) and ``strength`` in (0, 1]: SDEdit (Meng et al. 2022): start
    from ``init`` noised to the level of the last ``round(strength * steps)`` steps and run only those
    (the first noise draw of the generator); guidance and callbacks count the steps run.
    ``resample``: with ``known``, extra passes per step that re-noise the blended sample to the
    step's level and denoise it again, so the generated cells harmonise with the held ones
    (RePaint's jumps of length 1; each costs one more UNet call per step).
    """
    if not isinstance(steps, int) or not 1 <= steps <= cfg.num_train_timesteps:
        raise ValueError(f"steps must be an integer in [1, {cfg.num_train_timesteps}], got {steps!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x0_range = None  # cfg.latent_range in the UNet's normalised units
    if cfg.latent_range is not None:
        x0_range = tuple((v - cfg.latent_mean) / cfg.latent_std for v in cfg.latent_range)
    sched = make_scheduler(cfg, sampler)
    sched.set_timesteps(steps)
    alphas = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    generator = generator or torch.Generator().manual_seed(0)
    n = len(sched.timesteps)
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    first = 0 if init is None else n - max(1, round(strength * n))  # steps skipped (SDEdit)
    if init is not None:
        if x_T is not None:
            raise ValueError("give x_T or init, not both")
        a = alphas[int(sched.timesteps[first])]
        x = a.sqrt() * init.to(device) + (1 - a).sqrt() * torch.randn(shape, generator=generator).to(device)
    else:
        x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator).to(device)
    if isinstance(resample, bool) or not isinstance(resample, int) or not 0 <= resample <= 10:
        raise ValueError(f"resample must be an integer in [0, 10], got {resample!r}")
    step_kw = {"eta": eta} if sampler == "ddim" else {}
    known = [Known(k.x0.to(device), k.mask.to(device), k.until) for k in known]
    low = [LowFreq(h.x0.to(device), h.k, None if h.mask is None else h.mask.to(device), h.until) for h in low]

    def hold(x: Tensor, i: int) -> Tensor:
        """Blend the held cells into x_{t-1} after step i (clean after the last step)."""
        a_prev = alphas[int(sched.timesteps[i + 1])] if i + 1 < n else None
        noise = torch.randn(shape, generator=generator).to(device) if a_prev is not None else None
        for k in known:
            if k.active(i, n):
                x = blend_known(x, k, a_prev, noise)
        return x

    def denoise(x: Tensor, i: int, t: Tensor) -> tuple[Tensor, Tensor]:
        """One reverse step from level t: (x_{t-1}, the x0 predicted at t)."""
        tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        with torch.enable_grad() if guidance is not None else torch.no_grad():
            x_in = x.detach().requires_grad_(guidance is not None)
            eps = eps_model(x_in, tt)
            x0 = predict_x0(x_in, eps, alphas[int(t)])
            correction = guidance(x_in, x0, i - first, n - first) if guidance is not None else None
        eps, x0 = eps.detach(), x0.detach()
        lows = [h for h in low if h.active(i, n)]
        if x0_range is not None or lows:  # clamp x0, hold its block means, and step with the ε that matches it
            a = alphas[int(t)]
            if x0_range is not None:
                x0 = x0.clamp(*x0_range)
            for h in lows:
                x0 = hold_low(x0, h)
            eps = (x.detach() - a.sqrt() * x0) / (1 - a).sqrt()
        # step noise comes from the same CPU generator, so CPU and GPU runs draw alike
        x = sched.step(eps, t, x.detach(), generator=generator, **step_kw).prev_sample
        if correction is not None:
            x = x + correction.detach()
        return x, x0

    for i, t in enumerate(sched.timesteps):
        if i < first:
            continue
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled at step {i - first} of {n - first}")
        x, x0 = denoise(x, i, t)
        if i + 1 == n:  # the final sample's block means are the references' exactly
            for h in low:
                if h.active(i, n):
                    x = hold_low(x, h)
        if any(k.active(i, n) for k in known):
            x = hold(x, i)
            for _ in range(resample if i + 1 < n else 0):
                a_prev = alphas[int(sched.timesteps[i + 1])]
                x = renoise(x, a_prev, alphas[int(t)], torch.randn(shape, generator=generator).to(device))
                x, x0 = denoise(x, i, t)
                x = hold(x, i)
        if callback is not None:
            callback(Step(i - first, n - first, int(t), x, x0))
    return x


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, for training. ``t [B]`` long."""
    a = at_timesteps(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def at_timesteps(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """ᾱ at each sample's timestep ``t [B]``, shaped ``[B, 1, 1, 1]`` to broadcast over ``like``."""
    return alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.ndim - 1)))


def alphas_cumprod(cfg: DiffusionConfig) -> Tensor:
    return torch.from_numpy(np.cumprod(1.0 - cfg.betas())).float()
