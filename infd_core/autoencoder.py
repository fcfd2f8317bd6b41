"""The neural-field autoencoder: encoder E, regulariser (VQ or KL), decoder D -> feature map phi.

Images are float tensors ``[B, 3, H, W]`` in [-1, 1], RGB. The encoder always sees the image
resized to 256x256 and returns the latent ``z`` ``[B, z_channels, 64, 64]`` (downsampling 4
with three levels). The decoder maps ``z`` to ``phi`` ``[B, C, 256, 256]`` (any latent extent
``h x w`` of :func:`~infd_core.geometry.check_cells` to ``[B, C, 4h, 4w]``: panoramas): the LDM decoder
without its final norm/conv, so phi is a feature map, not an image. Pixels come from a
renderer (:mod:`infd_core.renderers`).

Module and parameter names follow LDM / the authors' code (``encoder.0`` LDM encoder,
``encoder.1`` 1x1 conv, ``decoder.0`` 1x1 conv, ``decoder.1`` LDM decoder,
``quantizer.embedding``), so their checkpoints map onto ours key for key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import check_cells
from .renderers import RendererConfig, build_renderer


def Normalize(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or by default LDM's 32 for wide layers and at least 4
    channels per group for narrow ones.

    A group of one channel is instance norm: it erases each channel's spatial mean, i.e. the
    image's colour and brightness, and a small model then renders every image in one colour.
    LDM (and the authors' checkpoints) use 32 groups at every width: ``groups=32``.
    """
    n = groups if groups is not None else max(1, min(32, channels // 4))
    return nn.GroupNorm(num_groups=n, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """LDM ResNet block (no time embedding): norm-swish-conv twice, 1x1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None, groups: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = Normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj convs (LDM naming)."""

    def __init__(self, channels: int, groups: int | None = None):
        super().__init__()
        self.norm = Normalize(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t(n).flatten(2).transpose(1, 2) for t in (self.q, self.k, self.v))  # [B, HW, C]
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class CoderConfig:
    """Size of an LDM encoder or decoder.

    ``num_res_blocks`` is per level (the decoder runs one more per level, as in LDM);
    ``attn_resolutions`` lists feature sides (for a 256 input: 256, 128, 64) with attention;
    ``mid_attn`` toggles attention in the middle block; ``norm_groups``: GroupNorm groups at
    every width (None: :func:`Normalize`'s default; 32: LDM's and the authors').
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    mid_attn: bool = True
    norm_groups: int | None = None


class _Level(nn.Module):
    """One resolution level: ``block``, ``attn`` lists and an optional resampler (LDM naming)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            setattr(self, name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        return getattr(self, self._resample_name)(x) if self._resample_name else x


class _Mid(nn.Module):
    def __init__(self, channels: int, attn: bool, groups: int | None = None):
        super().__init__()
        self.block_1 = ResnetBlock(channels, groups=groups)
        self.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """LDM encoder: ``[B, 3, 256, 256] -> [B, out_channels, 64, 64]`` for ch_mult of length 3."""

    def __init__(self, cfg: CoderConfig, out_channels: int, in_channels: int = 3, resolution: int = 256):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, cfg.ch, 3, padding=1)
        mults, g = (1, *cfg.ch_mult), cfg.norm_groups
        levels, res = [], resolution
        for i in range(len(cfg.ch_mult)):
            c_in, c_out = cfg.ch * mults[i], cfg.ch * mults[i + 1]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, g) for j in range(cfg.num_res_blocks)]
            attns = [AttnBlock(c_out, g) for _ in blocks] if res in cfg.attn_resolutions else []
            last = i == len(cfg.ch_mult) - 1
            levels.append(_Level(blocks, attns, None if last else Downsample(c_out), "downsample"))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(c, cfg.mid_attn, g)
        self.norm_out = Normalize(c, g)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """LDM decoder without its final norm/conv: ``[B, z, 64, 64] -> phi [B, ch*ch_mult[0], 256, 256]``."""

    def __init__(self, cfg: CoderConfig, z_channels: int, resolution: int = 256):
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = _Mid(c, cfg.mid_attn, g)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            c_out = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(c if j == 0 else c_out, c_out, g) for j in range(cfg.num_res_blocks + 1)]
            attns = [AttnBlock(c_out, g) for _ in blocks] if res in cfg.attn_resolutions else []
            levels.insert(0, _Level(blocks, attns, Upsample(c_out) if i != 0 else None, "upsample"))
            c, res = c_out, (res * 2 if i != 0 else res)
        self.up = nn.ModuleList(levels)
        self.out_channels = c

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return h


class VectorQuantizer(nn.Module):
    """VQ with a straight-through gradient: ``z [B, D, h, w] -> (z_q, loss, indices [B, h, w])``."""

    def __init__(self, n_embed: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        e = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        idx = dist.argmin(1)
        zq = self.embedding(idx).view(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
        loss = self.beta * F.mse_loss(zq.detach(), z) + F.mse_loss(zq, z.detach())
        return z + (zq - z).detach(), loss, idx.view(b, h, w)


class DiagonalGaussian(nn.Module):
    """KL regulariser: ``moments [B, 2D, h, w] -> (sample or mean, kl loss, None)``."""

    def forward(self, moments: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, None]:
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return z, kl, None


@dataclass
class AutoencoderConfig:
    encoder: CoderConfig = field(default_factory=CoderConfig)
    decoder: CoderConfig = field(default_factory=lambda: CoderConfig(num_res_blocks=2))
    renderer: RendererConfig = field(default_factory=RendererConfig)
    z_channels: int = 3
    regularizer: str = "vq"  # "vq" | "kl"
    n_embed: int = 8192
    beta: float = 0.25
    kl_weight: float = 1e-6
    input_size: int = 256
    # The latent mean is the image's 4x4-average thumbnail plus the encoder's (zero-initialised)
    # output, and phi adds the bilinearly upsampled latent: colours are right from step 0, the
    # latent is image-like, and a small model trains in CPU-minutes. Off for the paper's model.
    thumbnail_skip: bool = False
    # phi's channels, projected by a 1x1 conv from the decoder's top level (None: phi is the top
    # level itself, as in LDM). Every phi channel costs every rendered pixel, the top level's width
    # only the decoder (once per image): this lets the one grow without the other.
    phi_channels: int | None = None
    # Latent cells of reflection added at each border before decoding, cropped from phi after: the
    # decoder then treats border cells like inner ones. Without it the zero padding of its convs
    # leaves a learned colour cast along the borders (measured on the cpu3 model: the top 16 px of a
    # 4096² render off by -23/255 in red on every photo; 2 cells remove it, PSNR unchanged).
    decode_pad: int = 0

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder"):
            v = getattr(self, name)
            if isinstance(v, dict):
                v = dict(v)
                v["ch_mult"] = tuple(v.get("ch_mult", (1, 2, 4)))
                v["attn_resolutions"] = tuple(v.get("attn_resolutions", ()))
                setattr(self, name, CoderConfig(**v))
        if isinstance(self.renderer, dict):
            self.renderer = RendererConfig(**self.renderer)
        if self.regularizer not in ("vq", "kl"):
            raise ValueError(f"regularizer must be 'vq' or 'kl', got {self.regularizer!r}")
        if self.phi_channels is not None and self.phi_channels < 3:
            raise ValueError(f"phi_channels must be at least 3 (the renderer's base reads phi[:3]), got {self.phi_channels}")
        if self.thumbnail_skip and self.z_channels != 3:
            raise ValueError(f"thumbnail_skip needs z_channels == 3 (an RGB thumbnail), got {self.z_channels}")
        if not 0 <= self.decode_pad <= 4:  # a few cells: the reach of the decoder's zero padding
            raise ValueError(f"decode_pad must be 0 to 4 latent cells, got {self.decode_pad}")

    @property
    def latent_size(self) -> int:
        return self.input_size // 2 ** (len(self.encoder.ch_mult) - 1)


class Autoencoder(nn.Module):
    """E, regulariser, D and the renderer R of one neural-field autoencoder."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        zc = cfg.z_channels
        moments = 2 * zc if cfg.regularizer == "kl" else zc
        self.encoder = nn.Sequential(Encoder(cfg.encoder, moments, resolution=cfg.input_size), nn.Conv2d(moments, moments, 1))
        if cfg.regularizer == "kl":  # start with little posterior noise (std e^-4): with unit noise at
            with torch.no_grad():  # init a short run learns only the mean colour of the data
                self.encoder[1].weight[zc:].zero_()
                self.encoder[1].bias[zc:].fill_(-8.0)
        self.quantizer = VectorQuantizer(cfg.n_embed, zc, cfg.beta) if cfg.regularizer == "vq" else DiagonalGaussian()
        decoder = Decoder(cfg.decoder, zc, resolution=cfg.input_size)
        self.phi_channels = cfg.phi_channels or decoder.out_channels
        project = [nn.Conv2d(decoder.out_channels, cfg.phi_channels, 1)] if cfg.phi_channels else []
        self.decoder = nn.Sequential(nn.Conv2d(zc, zc, 1), decoder, *project)
        self.renderer = build_renderer(cfg.renderer, self.phi_channels)
        if cfg.thumbnail_skip:  # see AutoencoderConfig.thumbnail_skip
            self.skip = nn.Conv2d(zc, self.phi_channels, 1)
            with torch.no_grad():
                self.encoder[1].weight[:zc].zero_()
                self.encoder[1].bias[:zc].zero_()
                self.skip.weight.zero_()
                self.skip.bias.zero_()
                self.skip.weight[:zc, :, 0, 0] = torch.eye(zc)  # phi's first channels start as the latent

    def encoder_output(self, image: Tensor) -> Tensor:
        """``image [B, 3, H, W]`` in [-1, 1] -> raw encoder output ``[B, z or 2z, 64, 64]``.

        The image is resized to ``input_size`` squared (antialiased) first. For VQ this is the
        pre-quantisation latent; for KL the posterior moments (mean, log-variance).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(image.shape)}")
        s = self.cfg.input_size
        if image.shape[-2:] != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        h = self.encoder(image)
        if self.cfg.thumbnail_skip:
            thumb = F.avg_pool2d(image, s // self.cfg.latent_size)
            h = torch.cat([h[:, :3] + thumb.to(h.dtype), h[:, 3:]], dim=1)
        return h

    def encode(self, image: Tensor) -> Tensor:
        """``image`` -> the latent diffusion works on ``[B, z, 64, 64]``: VQ's pre-quantisation
        latent (as the authors) or KL's posterior mean."""
        h = self.encoder_output(image)
        return h.chunk(2, dim=1)[0] if self.cfg.regularizer == "kl" else h

    def regularize(self, h: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Raw encoder output -> (latent fed to the decoder, weighted regulariser loss).

        VQ: quantised latent (straight-through) and the codebook + commitment loss. KL: a
        posterior sample (the posterior mean if not ``sample``) and ``kl_weight`` times the KL
        divergence.
        """
        if self.cfg.regularizer == "kl":
            z, loss, _ = self.quantizer(h, sample=sample)
        else:
            z, loss, _ = self.quantizer(h)
        return z, (self.cfg.kl_weight * loss if self.cfg.regularizer == "kl" else loss)

    def decode(self, z: Tensor) -> Tensor:
        """Latent ``[B, z, 64, 64]`` (e.g. from diffusion; or ``[B, z, h, w]``, a wider extent) ->
        ``phi [B, C, 256, 256]`` (``[B, C, 4h, 4w]``).

        VQ latents are quantised first, as in the authors' sampling.
        """
        self.check_latent(z)
        if self.cfg.regularizer == "vq":
            z = self.quantizer(z)[0]
        return self.features(z)

    def features(self, z: Tensor) -> Tensor:
        """The decoder proper, no checks or quantisation: ``z [B, z, h, w] -> phi [B, C, 4h, 4w]``
        (``decode_pad`` cells of reflection around ``z`` while decoding, see :class:`AutoencoderConfig`)."""
        k = self.cfg.decode_pad
        if k:
            z = F.pad(z, (k, k, k, k), mode="reflect")
        phi = self.decoder(z)
        if self.cfg.thumbnail_skip:
            phi = phi + F.interpolate(self.skip(z), size=phi.shape[-2:], mode="bilinear", align_corners=False)
        if k:
            f = phi.shape[-1] // z.shape[-1]  # phi cells per latent cell (4)
            phi = phi[..., k * f:phi.shape[-2] - k * f, k * f:phi.shape[-1] - k * f]
        return phi

    def check_latent(self, z: Tensor) -> None:
        n = self.cfg.latent_size
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(f"latent must be a floating-point tensor, got {type(z).__name__} {getattr(z, 'dtype', '')}")
        if z.ndim != 4 or z.shape[1] != self.cfg.z_channels:
            raise ValueError(f"latent must have shape [B, {self.cfg.z_channels}, h, w], got {tuple(z.shape)}")
        if tuple(z.shape[2:]) != (n, n):  # a latent of another extent (panoramas): the decoder is convolutional
            try:
                check_cells(int(z.shape[2]), int(z.shape[3]), base=n)
            except ValueError as e:
                raise ValueError(f"latent must have shape [B, {self.cfg.z_channels}, {n}, {n}] or a wider extent "
                                 f"({e}), got {tuple(z.shape)}") from None
        if not torch.isfinite(z).all():
            raise ValueError("latent contains NaN or infinite values")
