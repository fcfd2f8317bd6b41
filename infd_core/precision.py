"""Numeric precision per part of the model (decoder, renderer, UNet), chosen by measurement.

bf16 autocast with channels-last weights makes a part 3-6× faster on CPUs with AMX, and can gain
nothing on CPUs without it (measured: tiles 5× faster on a Xeon with AMX, the UNet no faster on
an EPYC without it), so ``precision="auto"`` times each part once in fp32 and in bf16 and keeps
the faster. The choice is cached per machine, torch version, device and model configuration in
``$INFD_CACHE/precision.json`` (default ``~/.cache/infd``); delete the file to measure again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .geometry import PixelRange

PARTS = ("decoder", "renderer", "unet")
CHOICES = ("fp32", "bf16")
MARGIN = 0.9  # bf16 is kept only if it takes at most this fraction of the fp32 time


@dataclass(frozen=True)
class Precision:
    """fp32 or bf16 for each part; the encoder always runs in fp32 (it runs once per photo)."""

    decoder: str = "fp32"
    renderer: str = "fp32"
    unet: str = "fp32"

    def __post_init__(self) -> None:
        for part in PARTS:
            if getattr(self, part) not in CHOICES:
                raise ValueError(f"{part} precision must be one of {CHOICES}, got {getattr(self, part)!r}")

    @classmethod
    def uniform(cls, choice: str) -> "Precision":
        return cls(choice, choice, choice)

    def dtype(self, part: str) -> torch.dtype | None:
        """The autocast dtype of ``part`` (None: plain fp32)."""
        return torch.bfloat16 if getattr(self, part) == "bf16" else None

    def __str__(self) -> str:
        choices = {getattr(self, p) for p in PARTS}
        return choices.pop() if len(choices) == 1 else ", ".join(f"{p} {getattr(self, p)}" for p in PARTS)


def median_seconds(fn: Callable[[], Any], reps: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, without gradients, after ``warmup`` untimed calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed(module: nn.Module, run: Callable[[nn.Module, torch.dtype | None], Any], reps: int) -> dict[str, float]:
    """Seconds of ``run(module, dtype)`` in fp32 (as is) and in bf16 (a channels-last copy, autocast)."""
    fast = copy.deepcopy(module).to(memory_format=torch.channels_last)
    return {"fp32": median_seconds(lambda: run(module, None), reps),
            "bf16": median_seconds(lambda: run(fast, torch.bfloat16), reps)}


def measure(autoencoder: nn.Module, unet: nn.Module | None, latent_shape: tuple[int, ...],
            device: torch.device, reps: int = 3) -> tuple[Precision, dict[str, dict[str, float]]]:
    """Time each part in fp32 and bf16 on this machine: the decoder on one latent, the renderer on
    one 256² tile, the UNet on one step. Returns the faster choice per part and the timings."""
    from .tiling import render_pixels

    def amp(dtype: torch.dtype | None):
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    z = torch.randn(1, *latent_shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        phi = autoencoder.decode(z).float()

    def decode(m: nn.Module, dtype: torch.dtype | None) -> Any:
        with amp(dtype):
            return m.decode(z)

    def tile(m: nn.Module, dtype: torch.dtype | None) -> Any:
        return render_pixels(m, phi, 1024, 1024, PixelRange(0, 256, 0, 256), autocast_dtype=dtype,
                             channels_last=dtype is not None)

    timings = {"decoder": _timed(autoencoder, decode, reps), "renderer": _timed(autoencoder.renderer, tile, reps)}
    if unet is not None:
        t = torch.full((1,), 500, device=device)

        def step(m: nn.Module, dtype: torch.dtype | None) -> Any:
            with amp(dtype):
                return m(z, t).sample

        timings["unet"] = _timed(unet, step, reps)
    pick = {part: "bf16" if t["bf16"] <= MARGIN * t["fp32"] else "fp32" for part, t in timings.items()}
    return Precision(**pick), timings


def cache_file() -> Path:
    return Path(os.environ.get("INFD_CACHE") or Path.home() / ".cache" / "infd") / "precision.json"


def machine_key(config: dict[str, Any], device: torch.device) -> str:
    """What a measurement depends on: the processor, torch, the device and the model's sizes."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    model = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cpu}|{os.cpu_count()} cores|torch {torch.__version__}|{device}|model {model}"


def auto(config: dict[str, Any], autoencoder: nn.Module, unet: nn.Module | None, latent_shape: tuple[int, ...],
         device: torch.device, cache: Path | None = None) -> Precision:
    """The measured :class:`Precision` for this machine and model, from the cache when known."""
    path = cache or cache_file()
    key = machine_key(config, device)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict):
        try:
            return Precision(**known[key]["choice"])
        except (TypeError, ValueError, KeyError):
            pass  # a damaged entry: measure again
    choice, timings = measure(autoencoder, unet, latent_shape, device)
    known = known if isinstance(known, dict) else {}
    known[key] = {"choice": asdict(choice), "seconds": timings}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
    return choice


__all__ = ["CHOICES", "PARTS", "Precision", "auto", "cache_file", "machine_key", "measure"]
