"""infd: Image Neural Field Diffusion models (Chen et al., CVPR 2024).

Importable without Gradio. Start with :class:`infd_core.pipeline.Pipeline`; coordinate
conventions are in :mod:`infd_core.geometry`.
"""
from .geometry import Box, PixelRange
from .pipeline import Field, Pipeline, default_model_dir

__all__ = ["Box", "PixelRange", "Field", "Pipeline", "default_model_dir"]
__version__ = "0.1.0"
