"""Model folders: ``config.json`` + safetensors (the authors' checkpoints are read by
:mod:`infd_core.authors`).

A model folder is self-describing::

    config.json              ModelConfig (format, version, sizes, schedule, latent statistics)
    autoencoder.safetensors  encoder, quantizer, decoder, renderer
    unet.safetensors         diffusion UNet (EMA weights), absent for autoencoder-only models
    README.md                model card (optional)

Nothing here unpickles untrusted data: our format is safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .configs import ModelConfig


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
