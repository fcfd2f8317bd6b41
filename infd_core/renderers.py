"""Renderers R: feature map phi + query grid -> RGB (coordinate conventions: :mod:`infd_core.geometry`).

Both renderers see, for every query pixel, the same input (``RendererConfig.features``):

* ``"nearest"`` (the paper's): the nearest phi vector, the relative coordinate (query centre
  minus that phi cell's centre, in phi cells) and the relative cell (pixel size in phi cells).
  Both the vector and the relative coordinate jump where a query crosses a phi cell edge, so
  a small renderer shows phi's cell grid once a cell spans many pixels (from ~8 px on).
* ``"bilinear"`` (our CPU v2 family): phi interpolated bilinearly at the query centre and the
  relative cell. The input is continuous in the query position, so no cell grid can appear;
  detail between phi samples comes from the net's nonlinearity on interpolated features.

Shapes: ``phi [B, C, h, w]``, ``coord``/``cell`` ``[B, H, W, 2]`` (y, x), output ``[B, 3, H, W]``
(unbounded; ~[-1, 1]).

* :class:`CLIF` (the paper's): a small conv net over the grid of those inputs.
* :class:`LIIF` (the paper's ablation): the same inputs through a pointwise MLP.

Optional base (``RendererConfig.base = "bilinear"``, our CPU model): the net predicts a
residual over phi's first three channels interpolated bilinearly at the query points, so a
small renderer starts as a smooth upsampler and spends its capacity on detail. The base is a
pointwise function of the query centre, so it changes neither the receptive radius nor
tile-exactness.

Seamless tiles. A conv net's output at a pixel depends only on inputs within
``receptive_radius`` pixels, so a tile rendered with that much halo equals the whole render
-- unless the net normalises over the tile. Our default CLIF has no normalisation. The
authors' CLIF has GroupNorm; for it, :func:`norm_statistics` computes the statistics once
per image, and rendering under :func:`fixed_norm_statistics` uses them for every tile.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import CELL_TIES, nearest_cell


FEATURES = ("nearest", "bilinear")


@dataclass
class RendererConfig:
    kind: str = "clif"  # "clif" | "liif"
    width: int = 256
    blocks: int = 2
    norm: str = "group"  # "group" (authors') | "none" (tile-exact)
    base: str = "none"  # "none" (authors') | "bilinear": predict a residual over bilinear phi[:3]
    cell_ties: str = "floor"  # "floor" (infd's) | "grid_sample" (authors'): see geometry.nearest_cell
    features: str = "nearest"  # "nearest" (authors') | "bilinear": see the module docstring

    def __post_init__(self) -> None:
        if self.kind not in ("clif", "liif"):
            raise ValueError(f"renderer kind must be 'clif' or 'liif', got {self.kind!r}")
        if self.norm not in ("group", "none"):
            raise ValueError(f"renderer norm must be 'group' or 'none', got {self.norm!r}")
        if self.base not in ("none", "bilinear"):
            raise ValueError(f"renderer base must be 'none' or 'bilinear', got {self.base!r}")
        if self.cell_ties not in CELL_TIES:
            raise ValueError(f"renderer cell_ties must be one of {CELL_TIES}, got {self.cell_ties!r}")
        if self.features not in FEATURES:
            raise ValueError(f"renderer features must be one of {FEATURES}, got {self.features!r}")

    @property
    def input_extra(self) -> int:
        """Channels the renderer input adds to phi's: rel. coord + rel. cell, or rel. cell only."""
        return 4 if self.features == "nearest" else 2


def _check_queries(coord: Tensor, cell: Tensor, batch: int) -> None:
    if coord.shape != cell.shape or coord.ndim != 4 or coord.shape[-1] != 2 or coord.shape[0] != batch:
        raise ValueError(f"coord/cell must both be [B={batch}, H, W, 2], got {tuple(coord.shape)} and {tuple(cell.shape)}")


def renderer_inputs(phi: Tensor, coord: Tensor, cell: Tensor, ties: str = "floor") -> Tensor:
    """The per-pixel renderer input ``[B, C + 4, H, W]``: nearest phi vector, rel. coord, rel. cell.

    The nearest phi cell is found in float32 from ``coord`` (query points outside the image
    take the border cell; points on a cell edge by ``ties``, see
    :func:`~infd_core.geometry.nearest_cell`). Relative values are in units of phi cells: a 1024^2
    query on a 256^2 phi gives rel. coord in {+-0.25, +-0.75} and rel. cell 0.5.
    """
    b, c, h, w = phi.shape
    _check_queries(coord, cell, b)
    coord, cell = coord.float(), cell.float()
    size = coord.new_tensor([h, w])
    idx = nearest_cell(coord, size, ties)  # [B, H, W, 2] (row, col) of the nearest phi cell
    centre = (idx + 0.5) / size * 2 - 1
    flat = (idx[..., 0] * w + idx[..., 1]).long().flatten(1)  # [B, H*W]
    rel = torch.cat([(coord - centre) * size, cell * size], dim=-1)  # [B, H, W, 4]
    if phi.is_contiguous(memory_format=torch.channels_last):
        # the bf16 path: copying whole pixel rows is several times faster than a per-channel gather
        # here, and the result is channels_last, the layout the convs then run in
        rows = phi.permute(0, 2, 3, 1).reshape(b, h * w, c)
        feat = torch.stack([rows[i].index_select(0, flat[i]) for i in range(b)]).view(*coord.shape[:3], c)
        return torch.cat([feat, rel.to(feat.dtype)], dim=-1).permute(0, 3, 1, 2)
    feat = phi.flatten(2).gather(2, flat[:, None].expand(-1, c, -1)).view(b, c, *coord.shape[1:3])
    return torch.cat([feat, rel.permute(0, 3, 1, 2).to(feat.dtype)], dim=1)


def without_relative_coord(weight: Tensor) -> Tensor:
    """A first-layer weight reading :func:`renderer_inputs` (``[out, C + 4, ...]``) made to read
    :func:`interpolated_inputs` (``[out, C + 2, ...]``): the rel. coord columns dropped, the phi
    and rel. cell columns kept (``training.grow``: a "nearest" renderer into a "bilinear" one)."""
    c = weight.shape[1] - 4
    return torch.cat([weight[:, :c], weight[:, c + 2:]], dim=1)


def interpolated_inputs(phi: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
    """The per-pixel renderer input of ``features="bilinear"``: ``[B, C + 2, H, W]``, phi
    interpolated bilinearly at the query centres (border-clamped) and the relative cell.

    A pointwise function of each query's coordinate and cell, like :func:`renderer_inputs`, so
    tiles stay exact. Interpolation runs in float32 (bf16 coordinates would be off by pixels at
    2048 px; ``grid_sample`` wants one dtype) and the result is cast back to phi's dtype; a
    channels_last phi (the bf16 path) gives a channels_last input.
    """
    b, c, h, w = phi.shape
    _check_queries(coord, cell, b)
    grid = coord.float().flip(-1)  # grid_sample wants (x, y); same frame ([-1, 1], pixel corners)
    feat = F.grid_sample(phi.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(phi.dtype)
    rel_cell = (cell.float() * cell.new_tensor([h, w]).float()).permute(0, 3, 1, 2).to(feat.dtype)
    out = torch.cat([feat, rel_cell], dim=1)
    if phi.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def bilinear_base(phi: Tensor, coord: Tensor) -> Tensor:
    """``phi[:, :3]`` interpolated bilinearly at the query centres: ``[B, 3, H, W]`` (border-clamped).

    ``phi`` cell centres sit where a ``h x w`` level's pixel centres are, so at that level the
    base is exactly ``phi[:, :3]``.
    """
    grid = coord.float().flip(-1)  # grid_sample wants (x, y); the frame is the same ([-1, 1], pixel corners)
    return F.grid_sample(phi[:, :3].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class _Base(nn.Module):
    """Shared by both renderers: ``net(renderer_inputs)`` plus the optional bilinear base."""

    cfg: RendererConfig

    def _zero_init_output(self, layer: nn.Conv2d) -> None:
        if self.cfg.base != "none":  # start as the plain base: the net learns a residual
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _render(self, net: nn.Module, phi: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
        if self.cfg.features == "nearest":
            inputs = renderer_inputs(phi, coord, cell, self.cfg.cell_ties)
        else:
            inputs = interpolated_inputs(phi, coord, cell)
        out = net(inputs)
        if self.cfg.base == "none":
            return out
        # interpolated inputs start with bilinear phi: the base is already there
        base = (bilinear_base(phi, coord) if self.cfg.features == "nearest" else inputs[:, :3]).to(out.dtype)
        if out.is_contiguous(memory_format=torch.channels_last):
            base = base.contiguous(memory_format=torch.channels_last)
        return out + base


# --- GroupNorm with optional fixed (per-image) statistics -----------------------------------

_NORM_MODE: contextvars.ContextVar[tuple[str, list, list] | None] = contextvars.ContextVar("infd_norm_mode", default=None)


class StatGroupNorm(nn.GroupNorm):
    """GroupNorm that can record its per-sample statistics or replay recorded ones.

    Outside :func:`fixed_norm_statistics` it is plain GroupNorm (statistics per rendered patch,
    as the authors trained it).
    """

    def forward(self, x: Tensor) -> Tensor:
        mode = _NORM_MODE.get()
        if mode is None:
            return super().forward(x)
        kind, stats, counter = mode
        b, c = x.shape[:2]
        g = x.float().reshape(b, self.num_groups, -1)  # reshape: x may be channels_last (the bf16 path)
        if kind == "record":
            mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
            stats.append((mean, var))
        else:  # layers run in the same order every pass: cycle through the recorded list
            mean, var = stats[counter[0] % len(stats)]
            counter[0] += 1
        y = ((g - mean) * torch.rsqrt(var + self.eps)).view_as(x).to(x.dtype)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


@contextlib.contextmanager
def _norm_mode(kind: str, stats: list) -> Iterator[list]:
    token = _NORM_MODE.set((kind, stats, [0]))
    try:
        yield stats
    finally:
        _NORM_MODE.reset(token)


class _Block(nn.Module):
    """ResNet block of the renderer: (norm) swish conv, twice, plus identity (LDM naming)."""

    def __init__(self, width: int, norm: bool):
        super().__init__()
        self.norm1 = StatGroupNorm(min(32, width), width, eps=1e-6) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = StatGroupNorm(min(32, width), width, eps=1e-6) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class _ConvNet(nn.Module):
    """conv3x3 -> ResNet blocks -> (norm) swish conv3x3 -> RGB; authors' names ``model``/``norm_out``/``conv_out``."""

    def __init__(self, in_ch: int, width: int, blocks: int, norm: bool):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), *(_Block(width, norm) for _ in range(blocks)))
        self.norm_out = StatGroupNorm(min(32, width), width, eps=1e-6) if norm else nn.Identity()
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.model(x))))


class CLIF(_Base):
    """Convolutional Local Image Function: ``(phi, coord, cell) -> rgb [B, 3, H, W]``."""

    def __init__(self, cfg: RendererConfig, phi_channels: int):
        super().__init__()
        self.cfg = cfg
        self.net = _ConvNet(phi_channels + cfg.input_extra, cfg.width, cfg.blocks, cfg.norm == "group")
        self.receptive_radius = 2 + 2 * cfg.blocks  # one pixel per 3x3 conv
        self._zero_init_output(self.net.conv_out)

    @property
    def last_layer(self) -> Tensor:
        return self.net.conv_out.weight

    @property
    def first_layer(self) -> nn.Conv2d:
        """The conv that reads the per-pixel input (phi features, then the relative values)."""
        return self.net.model[0]

    def forward(self, phi: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
        return self._render(self.net, phi, coord, cell)


class LIIF(_Base):
    """Pointwise MLP on the same inputs as CLIF (1x1 convs): the paper's ablation."""

    def __init__(self, cfg: RendererConfig, phi_channels: int):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(phi_channels + cfg.input_extra, cfg.width, 1), nn.SiLU()]
        for _ in range(cfg.blocks):
            layers += [nn.Conv2d(cfg.width, cfg.width, 1), nn.SiLU()]
        self.mlp = nn.Sequential(*layers, nn.Conv2d(cfg.width, 3, 1))
        self.receptive_radius = 0
        self._zero_init_output(self.mlp[-1])

    @property
    def last_layer(self) -> Tensor:
        return self.mlp[-1].weight

    @property
    def first_layer(self) -> nn.Conv2d:
        """The 1x1 conv that reads the per-pixel input (phi features, then the relative values)."""
        return self.mlp[0]

    def forward(self, phi: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
        return self._render(self.mlp, phi, coord, cell)


def build_renderer(cfg: RendererConfig, phi_channels: int) -> CLIF | LIIF:
    return (CLIF if cfg.kind == "clif" else LIIF)(cfg, phi_channels)


def uses_group_norm(renderer: nn.Module) -> bool:
    return any(isinstance(m, StatGroupNorm) for m in renderer.modules())


@torch.no_grad()
def norm_statistics(renderer: nn.Module, phi: Tensor, size: int = 256) -> list:
    """Per-image GroupNorm statistics of ``renderer``, measured on a render of the whole image at
    its aspect with ``size`` pixels on the shorter side (``size``^2 for a square phi).

    Returns an opaque list to pass to :func:`fixed_norm_statistics` (empty without GroupNorm).
    """
    if not uses_group_norm(renderer):
        return []
    from .geometry import canvas_size, level_grid

    coord, cell = level_grid(*canvas_size(tuple(phi.shape[-2:]), size, base=min(phi.shape[-2:])))
    b = phi.shape[0]
    with _norm_mode("record", []) as stats:
        renderer(phi, coord.to(phi.device).expand(b, -1, -1, -1), cell.to(phi.device).expand(b, -1, -1, -1))
    return stats


def select_statistics(stats: list, index: slice) -> list:
    """The statistics of images ``index`` of the batch that :func:`norm_statistics` measured."""
    return [(mean[index], var[index]) for mean, var in stats]


@contextlib.contextmanager
def fixed_norm_statistics(stats: list) -> Iterator[None]:
    """Render with recorded per-image statistics (tiles then equal the whole render exactly).

    Any number of renderer calls may run inside; the statistics must come from the same
    renderer and a phi batch of the same size.
    """
    if not stats:
        yield
        return
    with _norm_mode("replay", stats):
        yield
