"""How regions and guidance reports read to people: the box list's labels and the report's lines.

Shared by the app's box list and report table and the CLI's report lines. Each kind has a label
(a short description of a region) and a summary (what was asked, what came out, for one entry of
:func:`infd_core.guidance.guided_sample`'s report); a ``⚠`` marks a prompt the scorer does not know.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .regions import KINDS, Region


def hex_color(rgb: tuple[float, ...] | list[float]) -> str:
    """``#rrggbb`` of an RGB triple in [0, 1]."""
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _coarseness(r: Region | dict[str, Any]) -> int:
    value = r.coarseness if isinstance(r, Region) else r.get("coarseness")
    return value or KINDS["sketch"].coarseness


LABELS: dict[str, Callable[[Region], str]] = {
    "text": lambda r: r.prompt or "(no prompt yet)",
    "image": lambda r: ("reference image" + (", soft" if r.placement == "soft" else "")
                        if r.image is not None else "(no image)"),
    "sketch": lambda r: f"sketch, {_coarseness(r)}-cell blocks" if r.image is not None else "(no sketch)",
    "color": lambda r: hex_color(r.color) if r.color else "(no colour)",
    "keep": lambda r: "keep what is there",
}


def _text(item: dict[str, Any]) -> tuple[str, str]:
    """The scorer's score and the judge's (augmented views the guidance never saw), with their
    gains over the picture the run started from."""
    before = item.get("before")
    gain = (lambda k: f" ({item[k] - before[k]:+.2f})") if before else (lambda k: "")
    what = f"{'' if item['known'] else '⚠ '}{item['understood_as']}"  # it quotes the prompt
    return what, f"score {item['score']:.2f}{gain('score')}, judge {item['judge']:.2f}{gain('judge')}"


SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "text": _text,
    "image": lambda item: ("reference image",
                           item.get("note") or f"placed ({item['placed']}, {item['cells']} cells)"),
    "sketch": lambda item: (f"sketch ({_coarseness(item)}-cell blocks)", f"mean {hex_color(item['mean_color'])}"),
    "color": lambda item: (hex_color(item["color"]), f"mean {hex_color(item['mean_color'])}"),
    "keep": lambda item: ("keep", "held"),
}


def label(r: Region) -> str:
    """A short description of ``r`` for box lists."""
    return LABELS[r.kind](r)


def summarize(item: dict[str, Any]) -> tuple[str, str]:
    """(what was asked, what came out) for one region entry of a guidance report."""
    return SUMMARIES[item["kind"]](item)


__all__ = ["LABELS", "SUMMARIES", "hex_color", "label", "summarize"]
