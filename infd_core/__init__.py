"""infd: Image Neural Field Diffusion models (Chen et al., CVPR 2024).

Importable without Gradio. Start with :class:`infd_core.pipeline.Pipeline`; coordinate
conventions are in :mod:`infd_core.geometry`. The names below load their modules on first use,
so importing a light module (say :mod:`infd_core.regions`, the layout schema) does not load the
model code.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"Box": "geometry", "PixelRange": "geometry", "Field": "pipeline", "Pipeline": "pipeline",
          "default_model_dir": "pipeline"}

__all__ = list(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'infd_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
