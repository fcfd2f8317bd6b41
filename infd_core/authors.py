"""The importer for the authors' released ``.pth`` checkpoints (github.com/yinboc/infd).

An authors' checkpoint is a pickle ``{'model': {'name': 'infd', 'args': {...}, 'sd': state_dict}, ...}``.
It is read with ``torch.load(weights_only=True)``: a pickle that tries to run code is refused.
What it holds and where it goes in an infd model folder:

* ``encoder.*``, ``quantizer.*``, ``decoder.*``, ``renderer.*``: our autoencoder uses the same
  names (LDM's), so these are selected as they are. Their GroupNorms have 32 groups at every
  width and their renderer picks the nearest phi cell with ``grid_sample``; the imported config
  says so (``CoderConfig.norm_groups``, ``RendererConfig.cell_ties``).
* ``z_dm_ema.*`` (else ``z_dm.*``): an ADM ("openai") UNet, converted key by key into diffusers'
  ``UNet2DModel`` (:func:`authors_unet`). Sizes come from the tensor shapes; what shapes cannot
  tell (attention heads, qkv order) from ``args.z_dm.args`` with their ``make_openai_unet``
  defaults. What ``UNet2DModel`` cannot express is refused with the reason.
* ``args.z_dp`` and ``z_ddim_eta``: the schedule and the sampler (ADM's ``ddimN``: timesteps
  995, 990, ..., 0 for N = 200, last step returns x0, η = 1), recorded in ``DiffusionConfig``.
* ``perc_loss.*``, ``disc.*`` (training losses), ``z_dm.*`` when EMA weights exist: not imported.
"""
from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .autoencoder import Autoencoder, AutoencoderConfig, CoderConfig
from .checkpoint import CheckpointError, save_weights, write_config
from .configs import ModelConfig
from .diffusion import DiffusionConfig, build_unet
from .renderers import RendererConfig

# --- reading ----------------------------------------------------------------------------------

def read_authors_model(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and the model ``args`` of an authors' ``.pth`` (``{'model': {'args', 'sd'}}``).

    Loaded with ``weights_only=True``: a pickle that tries to run code is refused.
    """
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: the pickle holds more than weights ({e})") from e
    except Exception as e:  # corrupt files raise RuntimeError, EOFError, KeyError, ... depending on the damage
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    sd = model.get("sd") if isinstance(model, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected the authors' layout {{'model': {{'sd': state_dict}}}}")
    args = model.get("args")
    return sd, args if isinstance(args, dict) else {}


def read_authors_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The model state dict of an authors' ``.pth``; see :func:`read_authors_model`."""
    return read_authors_model(path)[0]


def _count(sd: dict[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# --- the autoencoder --------------------------------------------------------------------------

def _coder_config(sd: dict[str, Tensor], prefix: str, levels: str, extra_blocks: int, ch: int | None) -> CoderConfig:
    """An LDM encoder's or decoder's size from its shapes; ``ch`` the base width if known."""
    n = _count(sd, rf"{re.escape(prefix)}\.{levels}\.(\d+)\.")
    if n == 0:
        raise KeyError(f"{prefix}.{levels}.0.*")
    widths = [sd[f"{prefix}.{levels}.{i}.block.0.conv2.weight"].shape[0] for i in range(n)]
    if ch is None or any(w % ch for w in widths):
        ch = math.gcd(*widths)
    blocks = _count(sd, rf"{re.escape(prefix)}\.{levels}\.0\.block\.(\d+)\.") - extra_blocks
    attn = [256 // 2 ** i for i in range(n) if any(k.startswith(f"{prefix}.{levels}.{i}.attn.") for k in sd)]
    return CoderConfig(ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=blocks,
                       attn_resolutions=tuple(attn), mid_attn=f"{prefix}.mid.attn_1.q.weight" in sd, norm_groups=32)


def authors_autoencoder_config(sd: dict[str, Tensor]) -> AutoencoderConfig:
    """Our :class:`AutoencoderConfig` for an authors' state dict, from its shapes, with the
    authors' GroupNorm (32 groups) and nearest-cell rule (``grid_sample``)."""
    try:
        ch = sd["encoder.0.conv_in.weight"].shape[0]
        enc = _coder_config(sd, "encoder.0", "down", 0, ch)
        dec = _coder_config(sd, "decoder.1", "up", 1, ch)
        width = sd["renderer.net.model.0.weight"].shape[0]
        blocks = _count(sd, r"renderer\.net\.model\.(\d+)\.") - 1
        norm = "group" if "renderer.net.norm_out.weight" in sd else "none"
        vq = "quantizer.embedding.weight" in sd
        z = sd["decoder.0.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not an INFD autoencoder state dict: missing {e}") from e
    renderer = RendererConfig("clif", width, blocks, norm, cell_ties="grid_sample")
    return AutoencoderConfig(encoder=enc, decoder=dec, renderer=renderer, z_channels=z, regularizer="vq" if vq else "kl",
                             n_embed=sd["quantizer.embedding.weight"].shape[0] if vq else 8192)


AUTHORS_AE_PREFIXES = ("encoder.", "quantizer.", "decoder.", "renderer.")


def authors_autoencoder_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder part of an authors' state dict in our key names.

    Our modules use the authors' names, so this selects keys; an LDM decoder's final
    ``norm_out``/``conv_out`` (absent in their checkpoints, unused: phi is taken before them) are dropped.
    """
    return {k: v for k, v in sd.items() if k.startswith(AUTHORS_AE_PREFIXES)
            and not k.startswith(("decoder.1.norm_out.", "decoder.1.conv_out."))}


# --- the diffusion UNet -------------------------------------------------------------------------

# make_openai_unet's defaults over ADM's UNetModel's: what an authors' checkpoint means by a missing arg
OPENAI_UNET_DEFAULTS: dict[str, Any] = dict(
    image_size=64, in_channels=3, out_channels=3, model_channels=224, channel_mult=[1, 2, 3, 4], num_res_blocks=2,
    attention_resolutions=[8, 4, 2], num_head_channels=32, num_heads=1, num_heads_upsample=-1, dropout=0.0,
    conv_resample=True, dims=2, num_classes=None, use_scale_shift_norm=False, resblock_updown=False,
    use_new_attention_order=False, use_spatial_transformer=False, context_dim=None, noisy_z_cond=False)

UNSUPPORTED_UNET_ARGS = {  # arg: (value infd can express, why other values cannot be)
    "dims": (2, "only 2-D UNets"),
    "num_classes": (None, "class conditioning is not supported"),
    "use_spatial_transformer": (False, "cross-attention (spatial transformer) conditioning is not supported"),
    "context_dim": (None, "cross-attention conditioning is not supported"),
    "noisy_z_cond": (False, "noisy-latent conditioning is not supported"),
    "resblock_updown": (False, "diffusers' UNet2DModel blocks resample with convolutions, not residual blocks"),
    "conv_resample": (True, "diffusers' UNet2DModel blocks resample with convolutions"),
}


@dataclass
class UNetLayout:
    """An ADM UNet's size as read from a checkpoint: ``widths`` per level, ``attn`` level indices with attention."""

    model_channels: int
    widths: tuple[int, ...]
    blocks: int
    attn: tuple[int, ...]
    scale_shift: bool
    in_channels: int
    out_channels: int


def _unet_layout(sd: dict[str, Tensor], p: str) -> UNetLayout:
    """Read levels, widths, blocks and attention placement from the shapes under prefix ``p``."""
    n_in = _count(sd, rf"{re.escape(p)}input_blocks\.(\d+)\.")
    downs = sorted(int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}input_blocks\.(\d+)\.0\.op\.weight$", k)))
    blocks = downs[0] - 1 if downs else n_in - 1
    levels = len(downs) + 1
    if blocks < 1 or n_in != levels * (blocks + 1) or downs != [(i + 1) * (blocks + 1) for i in range(levels - 1)]:
        raise CheckpointError(f"{p}*: input blocks are not levels of residual blocks and convolutional downsamplers "
                              f"(resblock_updown or conv_resample=False?), which diffusers' UNet2DModel cannot express")
    widths, attn = [], []
    for i in range(levels):
        k = 1 + i * (blocks + 1)
        widths.append(sd[f"{p}input_blocks.{k}.0.out_layers.3.weight"].shape[0])
        if f"{p}input_blocks.{k}.1.qkv.weight" in sd:
            attn.append(i)
    emb = sd[f"{p}input_blocks.1.0.emb_layers.1.weight"].shape[0]
    return UNetLayout(model_channels=sd[f"{p}time_embed.0.weight"].shape[1], widths=tuple(widths), blocks=blocks,
                      attn=tuple(attn), scale_shift=emb == 2 * widths[0],
                      in_channels=sd[f"{p}input_blocks.0.0.weight"].shape[1], out_channels=sd[f"{p}out.2.weight"].shape[0])


def _head_dim(layout: UNetLayout, a: dict[str, Any]) -> int | None:
    """UNet2DModel's one ``attention_head_dim`` for ADM's heads (None: one head per layer)."""
    attn_widths = {layout.widths[i] for i in layout.attn} | {layout.widths[-1]}  # the middle block has attention
    if a["num_head_channels"] != -1:
        if any(w % a["num_head_channels"] for w in attn_widths):
            raise CheckpointError(f"attention widths {sorted(attn_widths)} are not multiples of num_head_channels "
                                  f"{a['num_head_channels']}")
        return a["num_head_channels"]
    up = a["num_heads"] if a["num_heads_upsample"] == -1 else a["num_heads_upsample"]
    if up != a["num_heads"]:
        raise CheckpointError("num_heads_upsample differs from num_heads: diffusers' UNet2DModel has one head size")
    if a["num_heads"] == 1:
        return None
    if len(attn_widths) == 1:
        return attn_widths.pop() // a["num_heads"]
    raise CheckpointError(f"a fixed number of heads ({a['num_heads']}) over attention widths {sorted(attn_widths)}: "
                          f"diffusers' UNet2DModel has one head size, not one head count")


def authors_unet_kwargs(sd: dict[str, Tensor], prefix: str, args: dict[str, Any], sample_size: int) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for the ADM UNet under ``prefix`` (e.g. ``"z_dm_ema."``).

    Raises :class:`CheckpointError` for what UNet2DModel cannot express.
    """
    a = {**OPENAI_UNET_DEFAULTS, **args}
    for name, (ok, why) in UNSUPPORTED_UNET_ARGS.items():
        if a[name] != ok:
            raise CheckpointError(f"UNet arg {name}={a[name]!r}: {why}")
    try:
        layout = _unet_layout(sd, prefix)
    except KeyError as e:
        raise CheckpointError(f"not an ADM UNet under {prefix}*: missing {e}") from e
    if layout.widths[0] != layout.model_channels:
        raise CheckpointError(f"channel_mult[0] = {layout.widths[0] / layout.model_channels:g} (not 1): diffusers' "
                              f"UNet2DModel ties its timestep embedding to the first level's width")
    mult = tuple(w / layout.model_channels for w in layout.widths)
    if "channel_mult" in args and tuple(float(m) for m in args["channel_mult"]) != mult:
        raise CheckpointError(f"args say channel_mult {args['channel_mult']}, the weights {mult}")
    down = tuple("AttnDownBlock2D" if i in layout.attn else "DownBlock2D" for i in range(len(layout.widths)))
    up = tuple("AttnUpBlock2D" if i in layout.attn else "UpBlock2D" for i in reversed(range(len(layout.widths))))
    return dict(sample_size=sample_size, in_channels=layout.in_channels, out_channels=layout.out_channels,
                block_out_channels=layout.widths, layers_per_block=layout.blocks, down_block_types=down,
                up_block_types=up, attention_head_dim=_head_dim(layout, a), norm_num_groups=32, norm_eps=1e-5,
                attn_norm_num_groups=32, add_attention=True, flip_sin_to_cos=True, freq_shift=0,
                resnet_time_scale_shift="scale_shift" if layout.scale_shift else "default",
                dropout=float(a["dropout"]))


RESBLOCK_KEYS = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def _resblock(src: dict[str, Tensor], a: str, b: str, out: dict[str, Tensor]) -> None:
    """ADM ``ResBlock`` at ``a`` -> diffusers ``ResnetBlock2D`` at ``b``."""
    for old, new in RESBLOCK_KEYS:
        for kind in ("weight", "bias"):
            if f"{a}.{old}.{kind}" in src:
                out[f"{b}.{new}.{kind}"] = src[f"{a}.{old}.{kind}"]


def _attention(src: dict[str, Tensor], a: str, b: str, head_dim: int | None, new_order: bool,
               out: dict[str, Tensor]) -> None:
    """ADM ``AttentionBlock`` at ``a`` -> diffusers ``Attention`` at ``b``.

    ADM's one 1-D conv ``qkv [3C, C, 1]`` splits into heads first and then into q, k, v (the
    legacy order: rows ``[head][q|k|v][head_dim]``) or, with ``use_new_attention_order``, into
    q, k, v first (rows ``[q|k|v][head][head_dim]``); diffusers' heads are consecutive channels
    of separate ``to_q``/``to_k``/``to_v`` linears. Both scale by 1/sqrt(head_dim).
    """
    w, bias = src[f"{a}.qkv.weight"][..., 0], src[f"{a}.qkv.bias"]
    c = w.shape[1]
    heads = 1 if head_dim is None else c // head_dim
    if new_order:
        ws, bs = w.view(3, c, c), bias.view(3, c)
    else:
        ws = w.view(heads, 3, c // heads, c).transpose(0, 1).reshape(3, c, c)
        bs = bias.view(heads, 3, c // heads).transpose(0, 1).reshape(3, c)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{b}.{name}.weight"], out[f"{b}.{name}.bias"] = ws[i].contiguous(), bs[i].contiguous()
    out[f"{b}.group_norm.weight"], out[f"{b}.group_norm.bias"] = src[f"{a}.norm.weight"], src[f"{a}.norm.bias"]
    out[f"{b}.to_out.0.weight"] = src[f"{a}.proj_out.weight"][..., 0]
    out[f"{b}.to_out.0.bias"] = src[f"{a}.proj_out.bias"]


def authors_unet_state(sd: dict[str, Tensor], prefix: str, kwargs: dict[str, Any],
                       new_attention_order: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """The ADM UNet under ``prefix`` in ``UNet2DModel`` key names (for the size ``kwargs``), and the
    ADM keys the map did not use (weights UNet2DModel has no place for).

    ADM's ``input_blocks`` are ``conv_in``, then per level ``layers_per_block`` ResBlocks (each
    with its attention) and a downsampler; ``output_blocks`` per level (deepest first)
    ``layers_per_block + 1`` ResBlocks and an upsampler after the last. diffusers groups the
    same layers into ``down_blocks``/``up_blocks`` in the same order.
    """
    src = _Reads({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    out: dict[str, Tensor] = {}
    n, levels, hd = kwargs["layers_per_block"], len(kwargs["block_out_channels"]), kwargs["attention_head_dim"]
    attn_levels = {i for i, t in enumerate(kwargs["down_block_types"]) if t.startswith("Attn")}

    def copy(a: str, b: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{b}.{kind}"] = src[f"{a}.{kind}"]

    copy("time_embed.0", "time_embedding.linear_1"), copy("time_embed.2", "time_embedding.linear_2")
    copy("input_blocks.0.0", "conv_in")
    k = 1
    for i in range(levels):
        for j in range(n):
            _resblock(src, f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", out)
            if i in attn_levels:
                _attention(src, f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", hd, new_attention_order, out)
            k += 1
        if i != levels - 1:
            copy(f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
            k += 1
    _resblock(src, "middle_block.0", "mid_block.resnets.0", out)
    _attention(src, "middle_block.1", "mid_block.attentions.0", hd, new_attention_order, out)
    _resblock(src, "middle_block.2", "mid_block.resnets.1", out)
    k = 0
    for u, i in enumerate(reversed(range(levels))):
        for j in range(n + 1):
            _resblock(src, f"output_blocks.{k}.0", f"up_blocks.{u}.resnets.{j}", out)
            if i in attn_levels:
                _attention(src, f"output_blocks.{k}.1", f"up_blocks.{u}.attentions.{j}", hd, new_attention_order, out)
            if i != 0 and j == n:
                copy(f"output_blocks.{k}.{2 if i in attn_levels else 1}.conv", f"up_blocks.{u}.upsamplers.0.conv")
            k += 1
    copy("out.0", "conv_norm_out"), copy("out.2", "conv_out")
    return out, sorted(prefix + k for k in src if k not in src.read)


class _Reads(dict):
    """A dict that remembers which keys were read (to find weights the key map left behind)."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.read.add(key)
        return super().__getitem__(key)


# --- the sampler --------------------------------------------------------------------------------

def adm_ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """ADM's ``ddimN`` respacing (``space_timesteps``): the integer stride giving exactly ``steps``
    timesteps, from the last to 0. ValueError where ADM has none."""
    for stride in range(1, num_train_timesteps):
        if len(range(0, num_train_timesteps, stride)) == steps:
            return list(range(0, num_train_timesteps, stride))[::-1]
    raise ValueError(f"no integer stride gives exactly {steps} of {num_train_timesteps} timesteps")


def authors_diffusion_config(args: dict[str, Any], unet: dict[str, Any]) -> DiffusionConfig:
    """The schedule (``args.z_dp``) and the sampler (``ddimN``, ``z_ddim_eta``) of an authors' model."""
    dp = {"steps": 1000, "noise_schedule": "linear", "linear_beta_start": 0.0001, "linear_beta_end": 0.02,
          "_sampling_timestep_respacing": "ddim200", **(args.get("z_dp") or {})}
    for name in ("learn_sigma", "predict_xstart", "predict_velocity", "rescale_timesteps", "use_kl"):
        if dp.get(name):
            raise CheckpointError(f"diffusion arg {name}=True is not supported (infd samples ε-prediction models)")
    if dp["noise_schedule"] != "linear":
        raise CheckpointError(f"noise schedule {dp['noise_schedule']!r} is not supported (only 'linear')")
    respacing = str(dp["_sampling_timestep_respacing"])
    if not re.fullmatch(r"ddim\d+", respacing):
        raise CheckpointError(f"sampling respacing {respacing!r} is not supported (only ADM's 'ddimN')")
    total, steps = int(dp["steps"]), int(respacing[4:])
    cfg = DiffusionConfig(unet=unet, num_train_timesteps=total, beta_start=1000 / total * dp["linear_beta_start"],
                          beta_end=1000 / total * dp["linear_beta_end"], eta=float(args.get("z_ddim_eta", 1.0)),
                          steps=steps, timestep_spacing="leading", set_alpha_to_one=True)
    leading = list(range(0, total, total // steps))[::-1]
    if adm_ddim_timesteps(total, steps) != leading:
        raise CheckpointError(f"ADM's ddim{steps} of {total} timesteps has no diffusers equivalent")
    return cfg


# --- the whole import ---------------------------------------------------------------------------

@dataclass
class ImportReport:
    """What :func:`import_authors` wrote: the config, parameters per part, the UNet's source, what was left."""

    config: ModelConfig
    params: dict[str, int]
    unet_source: str | None
    skipped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        d = self.config.diffusion
        out = [f"{part}: {n / 1e6:.2f}M parameters" for part, n in self.params.items()]
        if d is not None:
            out.append(f"unet from {self.unet_source}* ({d.unet['block_out_channels']}, {d.unet['layers_per_block']} "
                       f"blocks, time scale-shift: {d.unet['resnet_time_scale_shift']})")
            out.append(f"sampler: DDIM {d.steps} steps, eta {d.eta:g}, timesteps {self.timesteps_text()}, "
                       f"last step returns x0: {d.set_alpha_to_one}")
        else:
            out.append("no diffusion UNet in the checkpoint: autoencoder only")
        ae = self.config.autoencoder
        out.append(f"autoencoder: encoder {ae.encoder.ch}x{ae.encoder.ch_mult}, GroupNorm groups {ae.encoder.norm_groups}, "
                   f"renderer nearest-cell ties: {ae.renderer.cell_ties}")
        out += [f"not imported: {prefix}* ({n} tensors)" for prefix, n in self.skipped.items()]
        return out

    def timesteps_text(self) -> str:
        d = self.config.diffusion
        ts = list(range(0, d.num_train_timesteps, d.num_train_timesteps // d.steps))[::-1]
        return ", ".join(map(str, ts[:3])) + ", ..., " + ", ".join(map(str, ts[-2:])) if len(ts) > 5 else str(ts)


def import_authors(path: str | Path, out: str | Path, *, ema: bool = True) -> ImportReport:
    """Convert an authors' ``.pth`` into an infd model folder at ``out``: the autoencoder, and the
    diffusion UNet (EMA weights unless ``ema=False`` or absent) with the authors' sampler.

    Everything is checked before anything is written: on any error ``out`` is left untouched.
    """
    sd, args = read_authors_model(path)
    ae_cfg = authors_autoencoder_config(sd)
    ae = Autoencoder(ae_cfg)
    _load_strict(ae, authors_autoencoder_state(sd), f"{path}: autoencoder")
    prefix = next((p for p in (("z_dm_ema.", "z_dm.") if ema else ("z_dm.",))
                   if any(k.startswith(p) for k in sd)), None)
    unet, diffusion = None, None
    if prefix is not None:
        unet_args = ((args.get("z_dm") or {}).get("args") or {})
        kwargs = authors_unet_kwargs(sd, prefix, unet_args, ae_cfg.latent_size)
        diffusion = authors_diffusion_config(args, kwargs)
        unet = build_unet(diffusion)
        try:
            state, left = authors_unet_state(sd, prefix, kwargs, bool(unet_args.get("use_new_attention_order", False)))
        except KeyError as e:
            raise CheckpointError(f"{path}: the ADM UNet under {prefix}* lacks {e}") from e
        if left:
            raise CheckpointError(f"{path}: UNet weights that diffusers' UNet2DModel has no place for: {left[:4]}")
        _load_strict(unet, state, f"{path}: UNet")
    cfg = ModelConfig(name=Path(path).stem, autoencoder=ae_cfg, diffusion=diffusion,
                      meta={"imported_from": Path(path).name, "source": "authors' released checkpoint",
                            **({"unet_weights": prefix.rstrip(".")} if prefix else {})})
    out = Path(out)
    write_config(out, cfg)
    save_weights(ae, out / "autoencoder.safetensors")
    if unet is not None:
        save_weights(unet, out / "unet.safetensors")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {"encoder": n(ae.encoder), "quantizer": n(ae.quantizer), "decoder": n(ae.decoder), "renderer": n(ae.renderer)}
    if unet is not None:
        params["unet"] = n(unet)
    used = (*AUTHORS_AE_PREFIXES, prefix or "\0")
    skipped: dict[str, int] = {}
    for k in sd:
        if not k.startswith(used) and not k.startswith(("decoder.1.norm_out.", "decoder.1.conv_out.")):
            top = k.split(".")[0] + "."
            skipped[top] = skipped.get(top, 0) + 1
    return ImportReport(cfg, params, prefix, skipped)


def _load_strict(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise CheckpointError(f"{what} keys do not fit the inferred architecture: missing {missing[:3]}, "
                              f"wrong shapes {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)
