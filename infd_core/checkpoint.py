"""The project's files: model folders (``config.json`` + safetensors) and latent files (the
authors' checkpoints are read by :mod:`infd_core.authors`).

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
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

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


# --- latent files ------------------------------------------------------------------------------
# One latent per file: safetensors with the tensor under "latent" ([B, C, h, w] float32, an
# autoencoder latent as Pipeline.field takes it) and string metadata (model name, seed, ...).
# The CLI writes them as ``*.latent.safetensors``; session files hold one as ``latent.safetensors``.

LATENT_KEY = "latent"
_OLD_LATENT_KEYS = ("z",)  # the CLI's files before the format was shared


def latent_bytes(z: Tensor, metadata: dict[str, object] | None = None) -> bytes:
    """A latent file's content (metadata values are stored as strings)."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return save_tensors({LATENT_KEY: z.detach().float().cpu().contiguous()}, metadata=meta or None)


def save_latent(path: str | Path, z: Tensor, metadata: dict[str, object] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(latent_bytes(z, metadata))


def latent_from_bytes(raw: bytes, name: str = "latent file") -> Tensor:
    """The latent in a latent file's content (this format or the CLI's older ``"z"`` files);
    ValueError naming ``name`` for anything else."""
    try:
        tensors = load_tensors(raw)
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"{name} is not a latent file (not readable as safetensors: {e})") from None
    for key in (LATENT_KEY, *_OLD_LATENT_KEYS):
        if key in tensors:
            return tensors[key]  # dtype and shape as stored: Autoencoder.check_latent judges them
    raise ValueError(f"{name} is not a latent file (expected a tensor named {LATENT_KEY!r}, found {sorted(tensors)})")


def latent_and_metadata(raw: bytes, name: str = "latent file") -> tuple[Tensor, dict[str, str]]:
    """:func:`latent_from_bytes`, and the file's metadata (strings; see :func:`picture_metadata`)."""
    z = latent_from_bytes(raw, name)  # checks the format, so the header below is readable
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])  # safetensors: u64 length, JSON header
    return z, dict(header.get("__metadata__") or {})


def picture_metadata(*, model: str | None = None, seed: int | None = None,
                     aspect: float | None = None) -> dict[str, object]:
    """The metadata a latent file keeps of its picture, the one serialisation the CLI's latent
    files, session files and spilled sessions share: ``model`` (its name), ``seed`` and ``aspect``
    (width / height of the photo it encodes, squashed square like in training; none for a
    generated picture). Unset ones are left out."""
    return {k: v for k, v in (("model", model), ("seed", seed), ("aspect", aspect)) if v is not None}


def aspect_of(metadata: dict[str, str]) -> float | None:
    """A latent file's ``aspect`` (:func:`picture_metadata`) as a number; ValueError if it is not a
    positive finite one (within 1e-4..1e4)."""
    text = metadata.get("aspect")
    if text is None:
        return None
    try:
        aspect = float(text)
    except ValueError:
        raise ValueError(f"the latent's aspect must be a number, got {text[:40]!r}") from None
    if not 1e-4 <= aspect <= 1e4:  # also False for nan
        raise ValueError(f"the latent's aspect must be a positive number (width / height), got {text[:40]!r}")
    return aspect


def read_latent(path: str | Path) -> tuple[Tensor, dict[str, str]]:
    """:func:`latent_and_metadata` of a file; ValueError if it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: not a latent file ({e.strerror})") from None
    return latent_and_metadata(raw, str(path))


def load_latent(path: str | Path) -> Tensor:
    """:func:`read_latent` without the metadata."""
    return read_latent(path)[0]
