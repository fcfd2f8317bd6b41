"""Model runs on a Hugging Face ZeroGPU Space: inside ``spaces.GPU`` where ``spaces`` is installed.

A ZeroGPU Space attaches a GPU only while a function decorated with ``spaces.GPU`` runs; on any
other machine that decorator hands the function back unchanged, and where the ``spaces`` package
is not installed (it is not a dependency) :func:`on_gpu` just calls the job.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")
DURATION = 120  # seconds of GPU a model run may take (the Space's scheduler plans with this)


def spaces_module() -> ModuleType | None:
    """The ``spaces`` package, or None where it is not installed."""
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def on_gpu(job: Callable[[], T], duration: int = DURATION) -> T:
    """``job()``, run inside ``spaces.GPU(duration=...)`` when ``spaces`` is importable.

    On ZeroGPU the decorated job runs in a forked worker process: its return value comes back,
    but what it changes in this process meanwhile (progress events, a cancel flag) does not.
    """
    spaces = spaces_module()
    if spaces is None:
        return job()
    return spaces.GPU(duration=duration)(job)()
