"""Model folders (``config.json`` + safetensors) and the importer for the authors' checkpoints.

A model folder is self-describing::

    config.json              ModelConfig (format, version, sizes, schedule, latent statistics)
    autoencoder.safetensors  encoder, quantizer, decoder, renderer
    unet.safetensors         diffusion UNet (EMA weights), absent for autoencoder-only models
    README.md                model card (optional)

Nothing here unpickles untrusted data: our format is safetensors, and the authors' ``.pth``
files are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .autoencoder import AutoencoderConfig, CoderConfig
from .configs import ModelConfig
from .renderers import RendererConfig


class CheckpointError(Exception):
    """A model folder or checkpoint file that cannot be used; the message names the problem."""


def save_weights(module: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``, strictly: every key present, every shape equal."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with wrong shapes (e.g. {wrong[:2]})" if wrong else ""]
        raise CheckpointError(f"{path}: weights do not match config.json: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


def read_config(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: model folder does not exist")
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this an infd model folder?)")
    try:
        return ModelConfig.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e})") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from e


def write_config(folder: str | Path, cfg: ModelConfig) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")


# --- the authors' checkpoints --------------------------------------------------------------

def read_authors_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The model state dict of an authors' ``.pth`` (``{'model': {'name', 'args', 'sd'}, ...}``).

    Loaded with ``weights_only=True``: a pickle that tries to run code is refused.
    """
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: the pickle holds more than weights ({e})") from e
    except Exception as e:  # corrupt files raise RuntimeError, EOFError, KeyError, ... depending on the damage
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    sd = ckpt.get("model", {}).get("sd") if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected the authors' layout {{'model': {{'sd': state_dict}}}}")
    return sd


def _count(sd: dict[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _coder_config(sd: dict[str, Tensor], prefix: str, levels: str, extra_blocks: int) -> CoderConfig:
    n = _count(sd, rf"{re.escape(prefix)}\.{levels}\.(\d+)\.")
    if n == 0:
        raise KeyError(f"{prefix}.{levels}.0.*")
    widths = [sd[f"{prefix}.{levels}.{i}.block.0.conv2.weight"].shape[0] for i in range(n)]
    ch = math.gcd(*widths)
    mult = tuple(w // ch for w in widths)
    blocks = _count(sd, rf"{re.escape(prefix)}\.{levels}\.0\.block\.(\d+)\.") - extra_blocks
    res, attn = 256, []
    for i in range(n):
        side = res // 2 ** i
        if any(k.startswith(f"{prefix}.{levels}.{i}.attn.") for k in sd):
            attn.append(side)
    return CoderConfig(ch=ch, ch_mult=mult, num_res_blocks=blocks, attn_resolutions=tuple(attn),
                       mid_attn=f"{prefix}.mid.attn_1.q.weight" in sd)


def authors_autoencoder_config(sd: dict[str, Tensor]) -> AutoencoderConfig:
    """Infer our :class:`AutoencoderConfig` from the shapes of an authors' state dict."""
    try:
        enc = _coder_config(sd, "encoder.0", "down", 0)
        dec = _coder_config(sd, "decoder.1", "up", 1)
        width = sd["renderer.net.model.0.weight"].shape[0]
        blocks = _count(sd, r"renderer\.net\.model\.(\d+)\.") - 1
        norm = "group" if "renderer.net.norm_out.weight" in sd else "none"
        vq = "quantizer.embedding.weight" in sd
        z = sd["decoder.0.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not an INFD autoencoder state dict: missing {e}") from e
    return AutoencoderConfig(encoder=enc, decoder=dec, renderer=RendererConfig("clif", width, blocks, norm),
                             z_channels=z, regularizer="vq" if vq else "kl",
                             n_embed=sd["quantizer.embedding.weight"].shape[0] if vq else 8192)


AUTHORS_AE_PREFIXES = ("encoder.", "quantizer.", "decoder.", "renderer.")


def authors_autoencoder_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder part of an authors' state dict in our key names.

    Our modules use the authors' names, so this selects keys; the LDM decoder's final
    ``norm_out``/``conv_out`` (unused: phi is taken before them) are dropped.
    """
    return {k: v for k, v in sd.items() if k.startswith(AUTHORS_AE_PREFIXES)
            and not k.startswith(("decoder.1.norm_out.", "decoder.1.conv_out."))}


def import_authors(path: str | Path, out: str | Path) -> ModelConfig:
    """Convert the autoencoder of an authors' ``.pth`` into an infd model folder at ``out``.

    The diffusion UNet (openai/ADM keys ``z_dm_ema.*``) is not converted: infd uses diffusers'
    UNet2DModel, whose layout differs; the folder is an autoencoder-only model.
    """
    from .autoencoder import Autoencoder

    sd = read_authors_checkpoint(path)
    cfg = ModelConfig(name=Path(path).stem, autoencoder=authors_autoencoder_config(sd),
                      meta={"imported_from": Path(path).name, "source": "authors' released checkpoint"})
    ae = Autoencoder(cfg.autoencoder)
    state = authors_autoencoder_state(sd)
    expected = ae.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        raise CheckpointError(f"{path}: autoencoder keys do not fit the inferred architecture: "
                              f"missing {missing[:3]}, wrong shapes {wrong[:3]}")
    ae.load_state_dict({k: state[k] for k in expected}, strict=True)
    out = Path(out)
    write_config(out, cfg)
    save_weights(ae, out / "autoencoder.safetensors")
    return cfg
