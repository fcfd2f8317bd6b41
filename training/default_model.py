"""Retrain the embedded default model, in one command (resumable):

    python -m training.default_model [--recipe v4|v3|v2|v1] [--work runs/default] [--out assets/models/infd-cpu-photos]

Each recipe is a :class:`Recipe` record in :data:`RECIPES`: its photo set (training.photoset, assembled
into ``WORK`` once), the committed **milestone** model it continues (:class:`Milestone`; none for v1),
its training stages (:class:`Stage`: a preset in training/configs, a run folder in ``WORK``, initialised
from earlier stages or the milestone by name), its export, its evaluation protocol (:class:`Evaluation`)
and its card's texts (:class:`Card`). One path runs any recipe (:func:`run`): the milestone is checked
and copied into ``WORK``; the stages train in order, each resuming from its checkpoint in ``WORK`` when
re-run, and its ``--*-steps`` flag stops it early (the card records what was run); then the export to
``--out``, the evaluation on the held-out photos (training.evaluate), the pictures and the model card
(:func:`model_card`, its status from :func:`status`).

``v4`` continues the committed v3 model in its own family: its decoder and renderer go on training
as they are on the frozen encoder (the UNet stays valid) with a texture loss on the crops above 2×
the encoder input (training/configs/ae_cpu4_texture.json, :func:`training.losses.texture_loss`); its
folders in ``WORK`` are ``milestone-v3``, ``texture4`` and ``strips-v4``. Its card adds the detail
judges (:mod:`training.detail`) and their targets against v3 (:func:`detail_checks`).

``v3`` (the default recipe, the embedded model) continues from the committed v2 model the way
``v2`` did from v1 (below), into the ``cpu3`` family (training/configs/ae_cpu3_decoder.json: a 256²
decoder level twice as wide), keeping the milestone's UNet as it is; its folders in ``WORK`` are
``milestone-v2``, ``decoder3`` and ``strips-v3``. Its card measures the PSNR targets against v1
through the v2 evaluation (``WORK/evaluation-v2.json``).

``v2`` continues from a committed milestone model (``--milestone``, default: the shipped folder,
copied to ``WORK/milestone`` before anything is overwritten; a milestone of another family than the
recipe continues is refused) on the ``nature`` photo set (training.photoset: 123 training photos,
8 detailed ones held out):

1. decoder + renderer of the ``cpu2`` family (a decoder with 2x and 4x wider low levels and one
   more ResNet block per level, bilinear phi features: :func:`infd_core.configs.cpu2`) on the
   milestone's frozen encoder (training/configs/ae_cpu2_decoder.json). A v1 milestone's decoder
   and renderer are grown into the larger ones (training.grow: it starts out computing v1's phi);
   a milestone of the stage's own family has its decoder and renderer continued (:func:`continue_or_grow`).
   The latents stay the milestone's, so its UNet stays valid;
2. the milestone's UNet fine-tuned on the nature photos' latents (training/configs/dm_cpu2.json);
3. export (:func:`export_stages`), evaluation against the milestone on the held-out photos (with the
   Real-ESRGAN x4 rows and comparison strips), sample patch-FID of the model and the milestone side
   by side, pictures and the model card.

``--decoder-steps`` / ``--dm-steps`` stop its stages early.

``v1`` builds the milestone from scratch on the ``v1`` photo set (30 training photos):

1. assembles the offline photo set (training.photoset; 3 photos held out),
2. trains the `cpu` autoencoder (training/configs/ae_cpu.json), then a fresh decoder and
   renderer on its frozen encoder (training/configs/ae_cpu_decoder.json: the residual renderer
   and cosine lr the first pass lacked), then fine-tunes the whole autoencoder, encoder included
   (training/configs/ae_cpu_finetune.json: the latent learns to carry more than its thumbnail),
   then the diffusion UNet on the final latents (training/configs/dm_cpu.json), then refits the
   decoder and renderer on the frozen encoder for deep zoom (training/configs/ae_cpu_zoom.json:
   levels up to 1600², the posterior mean the UNet was trained on; the latents, hence the UNet,
   stay valid), with the training package's own commands, resuming from checkpoints when re-run,
3. evaluates on the held-out photos (training.evaluate) and
4. exports the model folder compactly (UNet in fp16, the zoom refit's autoencoder: :func:`export`)
   with a model card: data, sizes, steps, wall time, evaluation, a contact sheet of samples and a
   zoom sequence.

``--ae-steps`` / ``--decoder-steps`` / ``--finetune-steps`` / ``--dm-steps`` / ``--zoom-steps`` stop its
stages early.
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.torch import load_file, save_file

from infd_core.checkpoint import read_config, write_config
from infd_core.configs import ModelConfig
from infd_core.geometry import PixelRange
from infd_core.pipeline import Pipeline

from . import autoencoder as stage1
from . import diffusion as stage2
from . import evaluate, photoset
from .common import load_json_config

CONFIGS = Path(__file__).resolve().parent / "configs"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "models" / "infd-cpu-photos"
DEFAULT_WORK = Path("runs/default")
MILESTONE = "milestone"  # how a stage or an export names the recipe's milestone (the other names are stages')
CONFIG_CLASSES = {"autoencoder": stage1.AETrainConfig, "diffusion": stage2.DMTrainConfig}  # by Part.trains
Check = tuple[str, bool, str]  # (target, met, measured)


# --- the recipes' records ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Part:
    """A row of the card's training table: what trained a part of the model (``trains``: ``"autoencoder"``,
    training.autoencoder, or ``"diffusion"``, training.diffusion), with which preset (``config``, in
    training/configs), in which words (``describe``: a template, see :func:`training_rows`), and where the
    exported model's meta keeps the run's step count (``record``: a dotted path, see :func:`run_record`)."""

    trains: str
    config: str
    describe: str
    record: str


@dataclass(frozen=True, kw_only=True)
class Stage(Part):
    """A training run of a recipe. ``name``: how later stages, the export and the card's templates name it;
    ``run``: its folder in ``WORK`` (its model: ``WORK/<run>/model``); ``steps_flag``: the CLI flag that
    stops it early; ``init``: ``key=source`` overrides of its preset, each naming an earlier stage's model
    or the milestone (:data:`MILESTONE`); ``latents`` (diffusion): the source whose encoder gives the
    latents; ``decoder_of`` (autoencoder): the source whose decoder and renderer it continues or grows
    (:func:`continue_or_grow`)."""

    name: str
    run: str
    steps_flag: str
    init: tuple[str, ...] = ()
    latents: str | None = None
    decoder_of: str | None = None


@dataclass(frozen=True, kw_only=True)
class Milestone:
    """The committed model a recipe continues: ``name`` (as the card calls it), ``family`` (its config's
    name: a milestone of another family is refused, :func:`check_milestone`) and ``folder``, its copy in
    ``WORK``, made before the export can overwrite the shipped folder."""

    name: str
    family: str
    folder: str


@dataclass(frozen=True, kw_only=True)
class Refit:
    """Export the model of ``unet`` (its config, meta and UNet) with the autoencoder weights of
    ``autoencoder``, a decoder and renderer refit on its frozen encoder (:func:`export`)."""

    unet: str
    autoencoder: str

    def write(self, source: Callable[[str], Path], out: Path) -> None:
        export(source(self.unet), out, autoencoder=source(self.autoencoder))


@dataclass(frozen=True, kw_only=True)
class Assembly:
    """Export the autoencoder of ``autoencoder`` and the UNet of ``unet``, trained on one encoder's latents
    (:func:`export_stages`), decoding with ``decode_pad`` (None: the run's)."""

    autoencoder: str
    unet: str
    decode_pad: int | None = None

    def write(self, source: Callable[[str], Path], out: Path) -> None:
        export_stages(source(self.autoencoder), source(self.unet), out, decode_pad=self.decode_pad)


@dataclass(frozen=True, kw_only=True)
class Gains:
    """The status's PSNR gains at 256² and 1024²: over the milestone, or over the milestone of the recipe
    ``baseline``, through that recipe's evaluation in ``WORK`` (:func:`baseline_psnr`). ``target``: the
    gain to reach (None: the gains are reported only, as they are when the baseline's evaluation is
    missing)."""

    target: float | None = None
    baseline: str | None = None


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """How a recipe's model is evaluated and judged. ``args``: training.evaluate's arguments, with the
    placeholders of :func:`protocol` (the card shows them too); ``report``: the report's file in ``WORK``
    (a later recipe's baseline reads it); ``judges``: the status's targets, each a function of the report
    giving :data:`Check` s; ``gains``: the PSNR gains the status states first (None: none);
    ``pfid``: the arguments of a sample patch-FID run of this model and of the milestone, each kept as
    ``WORK/pfid-<name>.json`` and shown side by side in the card (empty: none); ``strips``: the folder
    in ``WORK`` of the comparison strips, the first of which the card shows (None: none)."""

    args: tuple[str, ...]
    report: str
    judges: tuple[Callable[[dict], list[Check]], ...]
    gains: Gains | None = None
    pfid: tuple[str, ...] = ()
    strips: str | None = None


@dataclass(frozen=True, kw_only=True)
class Card:
    """The texts of a recipe's model card, templates that :func:`model_card` fills from the model's facts
    (:func:`model_facts`, the photo counts, ``name``, ``milestone``, ``n_holdout``): ``title``; ``model``,
    the architecture paragraph; ``data``, the photos and how the stages use them (their presets as
    ``stages[<name>]``); ``command``, the training command shown; ``history``, where the model comes from;
    ``kept``, the table's rows of what the model keeps from the milestone as it is; ``timing``, a note under
    the table; ``evaluated``, what the evaluation ran on; ``strip``, the strip's section; ``seeds``, the
    number of samples on the contact sheet; ``licence``."""

    title: str
    model: str
    data: str
    command: str
    evaluated: str
    licence: str
    seeds: int = 8
    history: str = ""
    kept: tuple[Part, ...] = ()
    timing: str = ""
    strip: str = ""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one version of the embedded model is made (see the module docstring): its photo set (``photos``,
    its folder in ``WORK``; ``photo_set``, training.photoset's ``--set``), the ``milestone`` it continues
    (None: from scratch), its ``stages`` in order, its ``export``, its ``evaluation`` and its ``card``."""

    name: str
    photos: str
    photo_set: str
    milestone: Milestone | None
    stages: tuple[Stage, ...]
    export: Refit | Assembly
    evaluation: Evaluation
    card: Card

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)

    def source(self, work: Path, name: str) -> Path:
        """The model that ``name`` (a stage's or :data:`MILESTONE`) stands for: a stage's trained model in
        ``work``, or the milestone's copy there."""
        return work / self.milestone.folder if name == MILESTONE else work / self.stage(name).run / "model"


# --- export and pictures ---------------------------------------------------------------------------

def export(model: Path, out: Path, autoencoder: Path | None = None) -> None:
    """Copy a trained model folder to ``out`` with the UNet in fp16 (half the bytes).

    ``autoencoder``: a model folder whose decoder and renderer were refit on ``model``'s frozen
    encoder (same latents): its autoencoder weights are shipped instead, and its run is recorded
    in the meta as ``"zoom": {from, steps, seconds}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    cfg = read_config(model)
    if autoencoder is not None:
        refit = read_config(autoencoder)
        if refit.autoencoder != cfg.autoencoder:
            raise ValueError(f"the autoencoder of {autoencoder} differs from {model}'s")
        cfg.meta = {**cfg.meta, "zoom": {"from": str(autoencoder), "steps": refit.meta.get("stage1_steps"),
                                         "seconds": refit.meta.get("stage1_seconds")}}
    write_config(out, cfg)
    shutil.copyfile((autoencoder or model) / "autoencoder.safetensors", out / "autoencoder.safetensors")
    unet = {k: v.half() for k, v in load_file(str(model / "unet.safetensors")).items()}
    save_file(unet, str(out / "unet.safetensors"))


def contact_sheet(pipe: Pipeline, path: Path, seeds: range = range(16), steps: int = 50, side: int = 256,
                  per_row: int = 4) -> None:
    """Samples of ``seeds`` rendered at ``side``², ``per_row`` to a row, as one JPEG."""
    tiles = [pipe.render(pipe.field(pipe.sample(s, steps=steps)), side, side) for s in seeds]
    rows = [np.concatenate(tiles[i:i + per_row], axis=1) for i in range(0, len(tiles), per_row)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=90)


def composition_sheet(pipe: Pipeline, path: Path, seed: int = 0, steps: int = 30, side: int = 384) -> None:
    """One row per example composition (:mod:`infd_core.compositions`, held as a whole-canvas
    sketch): the sketch, the picture rendered at 1024² (shown at ``side``²), the centre ``side``² of
    that render at 1:1 and the centre ``side``² of a 2048² render at 1:1; as one JPEG."""
    from infd_core import compositions
    from infd_core.guidance import guided_sample
    from infd_core.regions import Layout

    rows = []
    for name in compositions.names():
        sketch = compositions.example(name)
        z, _ = guided_sample(pipe, Layout((compositions.whole_canvas(sketch),)), seed=seed, steps=steps,
                             describe_regions=False)
        field = pipe.field(z)
        full = pipe.render(field, 1024, 1024)
        c, c2 = (1024 - side) // 2, (2048 - side) // 2
        rows.append(np.concatenate([np.asarray(Image.fromarray(sketch).resize((side, side), Image.Resampling.BICUBIC)),
                                    np.asarray(Image.fromarray(full).resize((side, side), Image.Resampling.BOX)),
                                    full[c:c + side, c:c + side],
                                    pipe.render(field, 2048, 2048, PixelRange(c2, c2 + side, c2, c2 + side))], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=88)


def pictures(pipe: Pipeline, out: Path, seeds: range = range(8), zoom_seed: int = 0, steps: int = 50) -> None:
    """``samples.jpg`` (contact sheet, 256² each), ``zoom.jpg`` (one sample at 512, 1K, 2K, 4K:
    the whole image at 512, then the centre 512² crop of each larger render) and ``composition.jpg``
    (:func:`composition_sheet`)."""
    contact_sheet(pipe, out / "samples.jpg", seeds, steps)
    composition_sheet(pipe, out / "composition.jpg", steps=steps)
    field = pipe.field(pipe.sample(zoom_seed, steps=steps))
    views = []
    for size in (512, 1024, 2048, 4096):
        c = (size - 512) // 2
        views.append(pipe.render(field, size, size, PixelRange(c, c + 512, c, c + 512)))
    Image.fromarray(np.concatenate(views, axis=1)).save(out / "zoom.jpg", quality=90)


def export_stages(decoder: Path, dm: Path, out: Path, decode_pad: int | None = None) -> None:
    """A model folder from a continuation's stages: the autoencoder of ``decoder`` (the stage-1 run)
    and the UNet of ``dm`` (a stage-2 run's EMA UNet, or a model folder's), fp16 on disk, trained on
    latents of the same encoder -- checked weight for weight, since a UNet is only valid on its
    encoder's latents. ``decode_pad``: set the autoencoder's (None: the run's)."""
    ae, unet = read_config(decoder), read_config(dm)
    ae_w, dm_w = load_file(str(decoder / "autoencoder.safetensors")), load_file(str(dm / "autoencoder.safetensors"))
    enc = [k for k in ae_w if k.startswith("encoder.")]
    if not enc or any(k not in dm_w or not ae_w[k].equal(dm_w[k]) for k in enc):
        raise ValueError(f"{decoder} and {dm} have different encoders: the UNet would not match the latents")
    meta = {"decoder": {k: ae.meta.get(k)
                        for k in ("encoder", "init", "stage1_steps", "stage1_seconds", "stage1_config")},
            "diffusion": unet.meta.get("diffusion")  # a model folder's UNet: its own record
            or {k: unet.meta.get(k) for k in ("stage2_init", "stage2_steps", "stage2_seconds", "stage2_config")}}
    out.mkdir(parents=True, exist_ok=True)
    autoencoder = ae.autoencoder if decode_pad is None else replace(ae.autoencoder, decode_pad=decode_pad)
    write_config(out, ModelConfig(name=ae.name, autoencoder=autoencoder, diffusion=unet.diffusion, meta=meta))
    shutil.copyfile(decoder / "autoencoder.safetensors", out / "autoencoder.safetensors")
    save_file({k: v.half() for k, v in load_file(str(dm / "unet.safetensors")).items()}, str(out / "unet.safetensors"))


# --- the model card ---------------------------------------------------------------------------------

CARD = """# {title}

A small image neural field diffusion model (INFD, Chen et al. 2024) trained **on this project's
2-core CPU machine** from photos that install offline. It is a demo model: it runs interactively
on a CPU and shows the whole pipeline (any-resolution rendering, deep zoom, guidance); it is not
a high-quality generator.

## Status
{status}

## Data
{data}

## Sizes (`{family}` preset)
| part | parameters |
|---|---|
{sizes}

{model}

## Training (one command: `{command}`)
{history}| stage | steps | batch | wall time | settings |
|---|---|---|---|---|
{rows}

{timing}## Evaluation on {evaluated}
Command: `python -m training.evaluate {evaluation_command}`

{evaluation}

{pfid}{strip}## Samples (seeds 0–{last_seed}, 256²)
![samples](samples.jpg)

## Zoom sequence (seed 0: the whole image at 512², then the centre 512² of renders at 1K, 2K, 4K)
![zoom](zoom.jpg)

## Compositions (`infd_core.compositions`: each example sketch held at 4-cell blocks, seed 0, 30 steps: \
the sketch, the 1024² render, its centre 384² at 1:1, and the centre 384² of the 2048² render at 1:1)
The layout and colours are the sketch's (held as the latent's block means); the texture is the model's.
![composition](composition.jpg)

## Licence of the training data
{licence}
"""


def model_card(out: Path, work: Path, recipe: Recipe, report: dict, pfids: dict[str, dict]) -> None:
    """Write the card (``README.md``) and the photo credits (``MANIFEST.md``) of ``recipe``'s model in
    ``out``, from its evaluation ``report`` and the sample patch-FID reports ``pfids`` (``{label: report}``,
    shown side by side; none: no table). A recipe whose PSNR gains have a baseline reads that recipe's
    evaluation in ``work`` (without it, the gains over the milestone are reported without a target)."""
    card, meta = recipe.card, read_config(out).meta
    stages = {s.name: preset(s) for s in recipe.stages}
    facts = {**model_facts(out), **photo_counts(work / recipe.photos), "name": recipe.name,
             "milestone": recipe.milestone, "n_holdout": len(report["images"])}
    shown = protocol(recipe, DEFAULT_WORK, DEFAULT_OUT.relative_to(REPO), report["settings"])
    text = CARD.format(
        title=card.title.format(**facts), status=status(report, recipe, baseline_report(work, recipe)),
        data=card.data.format(stages=stages, **facts), family=facts["family"], sizes=facts["sizes"],
        model=card.model.format(**facts), command=card.command, history=paragraph(card.history),
        rows=training_rows((*recipe.stages, *card.kept), meta, facts), timing=paragraph(card.timing),
        evaluated=card.evaluated.format(**facts), evaluation_command=" ".join(fill(recipe.evaluation.args, shown)),
        evaluation=evaluate.markdown(report), pfid=paragraph(pfid_table(pfids) if pfids else ""),
        strip=paragraph(card.strip.format(**facts)), last_seed=card.seeds - 1, licence=card.licence)
    (out / "README.md").write_text(text)
    milestone = work / recipe.milestone.folder / "MANIFEST.md" if recipe.milestone else None
    (out / "MANIFEST.md").write_text(photo_credits(work / recipe.photos / "MANIFEST.md", milestone))


def paragraph(text: str) -> str:
    """``text`` followed by a blank line; nothing for no text."""
    return f"{text}\n\n" if text else ""


def model_facts(out: Path) -> dict[str, Any]:
    """What the card templates may state about the model folder ``out``: its family, sizes, latent,
    decoder, renderer, sampler and bytes on disk."""
    cfg = read_config(out)
    d = Pipeline.load(out).describe()
    a = cfg.autoencoder
    reg = "VQ" if a.regularizer == "vq" else "KL"
    thumbnail = "the image's 4×4-average thumbnail plus a learned residual"
    return {
        "family": cfg.name, "sizes": "\n".join(f"| {k} | {v / 1e6:.2f}M |" for k, v in d["params"].items()),
        "latent": f"{a.z_channels}×{a.latent_size}×{a.latent_size}", "reg": reg,
        "regularizer": f"VQ, {a.n_embed} codes" if a.regularizer == "vq" else f"KL, weight {a.kl_weight:g}",
        "thumbnail_note": (f"; the latent mean is {thumbnail}, and φ adds the upsampled latent (`thumbnail_skip`)"
                           if a.thumbnail_skip else ""),
        "thumbnail_brief": f" ({reg}; the mean is {thumbnail})" if a.thumbnail_skip else "",
        "base": ("; it predicts a residual over φ's first 3 channels interpolated bilinearly"
                 if a.renderer.base != "none" else ""),
        "phi": d["phi_channels"], "dec_ch": a.decoder.ch, "dec_blocks": a.decoder.num_res_blocks + 1,
        "width": a.renderer.width, "blocks": a.renderer.blocks, "radius": d["receptive_radius"],
        "bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6,
        "prediction": {"v": "v-prediction", "epsilon": "ε-prediction"}[cfg.diffusion.prediction],
        "eta": cfg.diffusion.eta}


def photo_counts(photos: Path) -> dict[str, int]:
    """``photos_train`` and ``photos_holdout``: the photos of each split in a photo set's manifest."""
    manifest = json.loads((photos / "manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) else manifest
    return {f"photos_{s}": sum(1 for f in files if f.get("split") == s) for s in ("train", "holdout")}


def preset(part: Part, overrides: Sequence[str] = ()) -> Any:
    """A part's preset (training/configs) with ``key=value`` overrides, as its training reads it."""
    return load_json_config(CONFIG_CLASSES[part.trains], CONFIGS / part.config, list(overrides))


def run_record(meta: dict, path: str) -> dict[str, Any]:
    """``{steps, seconds, config}`` of a training run from a model's ``meta``: ``path`` is the dotted path of
    its step count; its wall time and its training config sit beside it (``seconds``, ``config`` for
    ``steps``). What was not recorded is None."""
    *parents, key = path.split(".")
    node = meta
    for name in parents:
        node = node.get(name) or {}
    return {"steps": node.get(key), "seconds": node.get(key.replace("steps", "seconds")),
            "config": node.get(key.replace("steps", "config"))}


def autoencoder_stages(meta: dict) -> tuple[dict, ...]:
    """The records (:func:`run_record`) of v1's three autoencoder stages (first pass, decoder, fine-tune)
    from a model's ``meta``: the last stage's own record plus the ``init`` / ``encoder`` history it
    carries (training.autoencoder)."""
    return tuple(run_record(meta, RECIPES["v1"].stage(name).record) for name in ("ae", "decoder", "finetune"))


@dataclass(frozen=True)
class Run:
    """A training run as a row's template reads it (``{run.<phrase>}``): phrases of its preset ``cfg`` (an
    autoencoder preset's) and of its ``record`` (:func:`run_record`)."""

    cfg: Any
    record: dict

    @property
    def origin(self) -> str:
        """Where its decoder and renderer started: the milestone's, grown or continued."""
        grown = (self.record["config"] or {}).get("grow")
        return "grown from the milestone's (training.grow)" if grown else "continued from the milestone's"

    @property
    def losses(self) -> str:
        """Its reconstruction losses."""
        c = self.cfg
        texture = (f" + texture loss (weight {c.texture_weight:g}, {c.texture_patch}-px Gram windows, levels above "
                   f"{c.texture_min_r}²)" if c.texture_weight else "")
        return "L1 + LPIPS-VGG" + texture

    @property
    def gan(self) -> str:
        """When its PatchGAN starts (``, no GAN`` where it never does)."""
        c = self.cfg
        return ", no GAN" if c.disc_start >= c.steps else f" + adaptive PatchGAN from step {c.disc_start}"

    @property
    def precision(self) -> str:
        """Its forward passes' precision."""
        return "bf16 autocast" if self.cfg.precision == "bf16" else "fp32"


def minutes(seconds: float | None) -> str:
    """A wall time as the card's table shows it."""
    return "not recorded" if seconds is None else f"{seconds / 60:.0f} min"


def training_rows(parts: Sequence[Part], meta: dict, facts: dict[str, Any]) -> str:
    """The card's training table rows, one per part: its ``describe`` filled from its preset (``cfg``), its
    run (``run``, :class:`Run`) and the model's ``facts``, then the steps, batch and wall time its record
    in ``meta`` holds, and its preset's file."""
    rows = []
    for part in parts:
        cfg, record = preset(part), run_record(meta, part.record)
        what = part.describe.format(cfg=cfg, run=Run(cfg, record), **facts)
        rows.append(f"| {what} | {record['steps']} | {cfg.batch} | {minutes(record['seconds'])} | "
                    f"`training/configs/{part.config}` |")
    return "\n".join(rows)


def protocol(recipe: Recipe, work: Path, model: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the evaluation's placeholders: ``{model}``, ``{milestone}`` (its copy in ``work``),
    ``{holdout}`` and ``{train}`` (the photo set's splits in ``work``), ``{strips}`` (their folder in
    ``work``), and ``{samples}``, ``{crops}``, ``{steps}``, ``{refine}`` from ``settings``."""
    photos, strips = work / recipe.photos, recipe.evaluation.strips
    return {"model": model, "milestone": work / recipe.milestone.folder if recipe.milestone else None,
            "holdout": photos / "holdout", "train": photos / "train", "strips": work / strips if strips else None,
            **{k: settings[k] for k in ("samples", "crops", "steps", "refine")}}


def fill(template: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """``template``'s arguments with their ``{placeholders}`` filled from ``values``."""
    return [arg.format(**values) for arg in template]


def photo_credits(photos: Path, milestone: Path | None) -> str:
    """The photo credits of a model: its own photo set's (``photos``), then those of the milestone it
    continues (``milestone``: its encoder and UNet were trained on those), unless the milestone's already
    begin with this set's."""
    own = photos.read_text()
    before = milestone.read_text() if milestone is not None and milestone.exists() else ""
    if not before or before.startswith(own):
        return before or own
    heading = "# The milestone's photos (its encoder and UNet, which this model continues, saw these)"
    return f"{own.rstrip()}\n\n{heading}\n\n{before}"


def pfid_table(reports: dict[str, dict]) -> str:
    """Sample pFID of several models (``{label: evaluate report}``), side by side."""
    any_report = next(iter(reports.values()))
    pf = any_report["pfid"]
    feats = next(iter(pf["by_features"]))
    out = [f"### {feats}: samples against the {pf['n_reference']} training photos (`{pf['reference']}`)", "",
           f"{pf['n_samples']} samples per model (seeds 0–{pf['n_samples'] - 1}, "
           f"{any_report['settings']['steps']} steps), "
           f"{pf['crops']} random crops per set for P < 1K. Small-N FID is biased upwards: compare only within "
           "this table.", "", "| model | " + " | ".join(pf["by_features"][feats]) + " |",
           "|---|" + "---:|" * len(pf["by_features"][feats])]
    for label, r in reports.items():
        vals = r["pfid"]["by_features"][feats]
        out.append(f"| {label} | " + " | ".join(f"{v['samples']:.1f}" for v in vals.values()) + " |")
    return "\n".join(out)


# --- the status: the recipe's targets, met or not ---------------------------------------------------

BAND_LIMIT = 3.0  # /255: about the smallest uniform colour shift one sees along an edge of a natural image


def status(report: dict, recipe: Recipe, earlier: dict | None = None) -> str:
    """The card's status paragraph: the recipe's PSNR gains (:func:`psnr_gains`), then its judges' targets,
    each met or not, with the numbers. ``earlier``: the evaluation of the recipe whose milestone the PSNR
    gains are measured against (:func:`baseline_report`)."""
    facts, checks = psnr_gains(report, recipe, earlier)
    checks += [check for judge in recipe.evaluation.judges for check in judge(report)]
    line = "; ".join(facts + [f"{t}: {'met' if ok else 'not met'} ({v})" for t, ok, v in checks])
    head = "Meets" if all(ok for _, ok, _ in checks) else "Not yet at all"
    return f"{head} its {recipe.name} targets: {line}.{chain_note(recipe, earlier)} Details below."


def baseline_report(work: Path, recipe: Recipe) -> dict | None:
    """The evaluation of the recipe named as ``recipe``'s PSNR baseline, where it names one and the
    evaluation is in ``work``."""
    gains = recipe.evaluation.gains
    if gains is None or gains.baseline is None:
        return None
    path = work / RECIPES[gains.baseline].evaluation.report
    return json.loads(path.read_text()) if path.exists() else None


def psnr_gains(report: dict, recipe: Recipe, earlier: dict | None) -> tuple[list[str], list[Check]]:
    """The PSNR gains at 256² and 1024² over the baseline (:class:`Gains`): as targets where the recipe
    sets one and its baseline was read, else as facts; none where the recipe states no gains."""
    gains = recipe.evaluation.gains
    if gains is None:
        return [], []
    mean, base = report["reconstruction"]["mean"], baseline_psnr(report, earlier)
    base_name = baseline_name(recipe, earlier)
    targeted = gains.target is not None and (gains.baseline is None or earlier is not None)
    facts, checks = [], []
    for s in ("256", "1024"):
        gain = mean["model"][s]["psnr"] - base[s]
        if not targeted:
            facts.append(f"PSNR at {s}² {gain:+.2f} dB over {base_name}")
        else:
            checks.append((f"PSNR at {s}² +{gains.target:g} dB over {base_name}", gain >= gains.target,
                           f"{gain:+.2f} dB"))
    return facts, checks


def baseline_psnr(report: dict, earlier: dict | None) -> dict[str, float]:
    """PSNR by size of the model the PSNR targets are measured against: this evaluation's milestone,
    or (``earlier``: the evaluation of the recipe that made that milestone) the milestone's own
    milestone. Both evaluations must score the shared model alike (same photos, same protocol), so
    the gains add up; ValueError otherwise."""
    mean = report["reconstruction"]["mean"]
    if earlier is None:
        return {s: v["psnr"] for s, v in mean["compare"].items()}
    before = earlier["reconstruction"]["mean"]
    for s, v in mean["compare"].items():
        if s in before["model"] and abs(v["psnr"] - before["model"][s]["psnr"]) > 0.01:
            raise ValueError(f"the two evaluations score the shared model differently at {s}² "
                             f"({v['psnr']:.2f} vs {before['model'][s]['psnr']:.2f} dB): not the same protocol")
    return {s: v["psnr"] for s, v in before["compare"].items()}


def baseline_name(recipe: Recipe, earlier: dict | None) -> str:
    """What the card calls the model the PSNR gains are measured against: the baseline recipe's milestone
    where its evaluation (``earlier``) was read, else this recipe's."""
    return RECIPES[recipe.evaluation.gains.baseline].milestone.name if earlier is not None else recipe.milestone.name


def chain_note(recipe: Recipe, earlier: dict | None) -> str:
    """The status's sentence on chained PSNR gains (none without the baseline's evaluation)."""
    if earlier is None:
        return ""
    base_name = baseline_name(recipe, earlier)
    return (f" The PSNR gains over {base_name} add the {recipe.evaluation.gains.baseline} evaluation's (against "
            f"{base_name}) to this one's (against {recipe.milestone.name}): same photos and protocol, and both "
            "score the shared model alike.")


def thumbnail_lpips(report: dict) -> list[Check]:
    """1024² LPIPS at or below bicubic upsampling of a 128² thumbnail."""
    mean = report["reconstruction"]["mean"]
    m, b = mean["model"]["1024"]["lpips"], mean["bicubic-128"]["1024"]["lpips"]
    return [("1024² LPIPS at or below bicubic of a 128² thumbnail", m <= b, f"{m:.4f} vs {b:.4f}")]


def grid_checks(report: dict) -> list[Check]:
    """φ-grid visibility at or below bicubic's at each measured size."""
    grid = report["grid"]["mean"]
    return [(f"φ-grid visibility at {s}² at or below bicubic's", grid["model"][s] <= grid["bicubic"][s],
             f"{grid['model'][s]:.2f} vs {grid['bicubic'][s]:.2f}") for s in map(str, report["grid"]["sizes"])]


def consistency_checks(report: dict) -> list[Check]:
    """Scale consistency of at least 35 dB on every photo."""
    worst = min(report["scale_consistency"]["per_image_db"]["model"].values())
    return [("scale consistency ≥ 35 dB on every photo", worst >= 35, f"min {worst:.2f} dB")]


def border_checks(report: dict) -> list[Check]:
    """No coloured band along a border (mean cast at most :data:`BAND_LIMIT` on every side), where measured."""
    if "border" not in report:
        return []
    side, cast = max(report["border"]["mean"]["model"].items(), key=lambda kv: kv[1])
    return [(f"no coloured band along a border (mean cast at {report['border']['size']}² ≤ {BAND_LIMIT:g}/255 "
             "on every side)", cast <= BAND_LIMIT, f"worst: {side} {cast:.1f}")]


def detail_checks(report: dict) -> list[Check]:
    """The detail targets against the milestone (``compare``), where the report has the judges: at
    2048² 1:1 the sharpness ratio on the photos at least 2048 px (their reference is not upsampled; on all
    the photos where none is that large) at least halfway from the milestone's to 1.0, flat-region noise
    at most bicubic's, patch-FID 256/1K below the milestone's, 1024² LPIPS at most 0.01 above the
    milestone's."""
    if "detail" not in report or "compare" not in report["detail"]["mean"]:
        return []
    dt, out = report["detail"], []
    size = dt["size"]
    native = dt["native_mean"] if dt.get("native") else dt["mean"]
    s, s0 = native["model"]["sharpness"], native["compare"]["sharpness"]
    out.append((f"sharpness at {size}² 1:1 at least halfway from the milestone's to the photo's", s >= (s0 + 1) / 2,
                f"{s:.3f}, milestone {s0:.3f}, photo 1"))
    n, nb = dt["mean"]["model"]["noise"], dt["mean"]["bicubic"]["noise"]
    out.append(("flat-region noise at most bicubic's", n <= nb, f"{n:.3f} vs {nb:.3f}"))
    for values in report.get("pfid", {}).get("by_features", {}).values():
        v = values.get(evaluate.patch_label(256, report["settings"]["fid_size"]))
        if v and "compare" in v:
            out.append(("patch-FID 256/1K below the milestone's", v["reconstruction"] < v["compare"],
                        f"{v['reconstruction']:.2f} vs {v['compare']:.2f}"))
    mean = report["reconstruction"]["mean"]
    m, m0 = mean["model"]["1024"]["lpips"], mean["compare"]["1024"]["lpips"]
    out.append(("1024² LPIPS at most 0.01 above the milestone's", m <= m0 + 0.01, f"{m:.4f} vs {m0:.4f}"))
    return out


# --- the recipes ------------------------------------------------------------------------------------

UNET_SETTINGS = " (v-prediction, EMA {cfg.ema}, lr {cfg.lr:g}, bf16 autocast)"

NATURE_DECODER = dict(  # a continued recipe's decoder stage, less its preset and run folder
    name="decoder", trains="autoencoder", init=(f"init_encoder={MILESTONE}",), decoder_of=MILESTONE,
    steps_flag="--decoder-steps", record="decoder.stage1_steps",
    describe="decoder + renderer of `{family}` {run.origin} on its frozen encoder ({run.losses}{run.gan}; levels up to "
             "{cfg.max_r}², {cfg.crops_per_image} crops per image, cosine lr {cfg.lr:g} → {cfg.lr_final:g}, "
             "{run.precision})")

KEPT_UNET = Part(
    trains="diffusion", config="dm_cpu2.json", record="diffusion.stage2_steps",
    describe="the milestone's UNet as it is (the latents did not change); it was fine-tuned on the nature latents"
             + UNET_SETTINGS)

# a continued recipe's evaluation against its milestone on the held-out photos, less its files: reconstruction,
# φ grid and borders at 2048² and 4096², detail at 2048² 1:1, patch-FID 256/1K of the reconstructions (bicubic,
# Real-ESRGAN and the milestone beside), the strips; then the sample patch-FID of both models
NATURE_EVALUATION = dict(
    args=("--model", "{model}", "--compare", "{milestone}", "--data", "{holdout}", "--grid-sizes", "2048", "4096",
          "--detail-size", "2048", "--patch-sizes", "256", "--strips", "{strips}"),
    pfid=("--model", "{model}", "--data", "{holdout}", "--fid-data", "{train}", "--samples", "{samples}",
          "--crops", "{crops}", "--scales", "256", "--patch-sizes", "256", "1024", "--grid-sizes", "--no-esrgan",
          "--detail-size", "0", "--steps", "{steps}"),
    judges=(thumbnail_lpips, grid_checks, consistency_checks, border_checks, detail_checks))

NATURE_CARD = dict(  # a continued recipe's card, less its history and the parts kept as they are
    title="infd-cpu-photos — the embedded default model ({name})",
    model="""Latent {latent}{thumbnail_brief}; the decoder (base {dec_ch}, {dec_blocks} ResNet blocks per level) \
gives φ {phi}×256×256;
CLIF renderer width {width} with {blocks} ResNet blocks and no normalisation, reading φ interpolated
bilinearly at each pixel (no φ-cell grid when zoomed in; tiles are bit-exact pieces of a whole
render), receptive radius {radius} px. Stored: autoencoder fp32, UNet fp16 ({bytes:.1f} MB in all).""",
    data=("The `nature` set of `python -m training.photoset` ({photos_train} training photos, {photos_holdout} held "
          "out): landscapes, plants, animals, water and sky from scikit-image, scikit-learn and Debian packages "
          "(wallpapers, GCompris, Enlightenment, tuxtype, LXQt, tagua, palapeli). The held-out photos were chosen "
          "for fine detail: spruce needles, lichen, a cheetah, a gorilla, rice terraces, a flower meadow, a honey "
          "bee, a hedgehog."),
    command="python -m training.default_model",
    timing="Wall times were measured with each run on one thread beside other work on the 2 cores.",
    evaluated="the {n_holdout} detailed held-out photos, against the milestone ({milestone.name})",
    strip=("## At 1:1: 2048², the centre 512² of each held-out photo (photo, bicubic of the 256² input, "
           "Real-ESRGAN ×4 of it, the milestone {milestone.name}, this model)\n![strip](strip.jpg)"),
    seeds=16,
    licence="""See `MANIFEST.md` beside this card (licence and credit of every photo, as each package states them:
this campaign's photos, then those of the milestone it continues).""")

RECIPES = {recipe.name: recipe for recipe in (  # --recipe NAME
    Recipe(
        name="v1", photos="photos", photo_set="v1", milestone=None,
        stages=(
            Stage(name="ae", trains="autoencoder", config="ae_cpu.json", run="ae", steps_flag="--ae-steps",
                  record="init.before.encoder.steps",
                  describe="autoencoder (L1 + LPIPS-VGG + {reg} + adaptive PatchGAN from step {cfg.disc_start})"),
            Stage(name="decoder", trains="autoencoder", config="ae_cpu_decoder.json", run="decoder",
                  init=("init_encoder=ae",), steps_flag="--decoder-steps", record="init.steps",
                  describe="decoder + renderer afresh on the frozen encoder (same losses, PatchGAN from step "
                           "{cfg.disc_start}, {cfg.crops_per_image} crops per image, cosine lr {cfg.lr:g} → "
                           "{cfg.lr_final:g})"),
            Stage(name="finetune", trains="autoencoder", config="ae_cpu_finetune.json", run="finetune",
                  init=("init=decoder",), steps_flag="--finetune-steps", record="stage1_steps",
                  describe="the whole autoencoder fine-tuned, encoder included (fresh PatchGAN from step "
                           "{cfg.disc_start}, cosine lr {cfg.lr:g} → {cfg.lr_final:g})"),
            Stage(name="dm", trains="diffusion", config="dm_cpu.json", run="dm", latents="finetune",
                  steps_flag="--dm-steps", record="stage2_steps",
                  describe="diffusion ({prediction}, authors' schedule, EMA {cfg.ema}; samples with DDIM η = {eta:g} "
                           "and clamps x0 to the training latents' range)"),
            Stage(name="zoom", trains="autoencoder", config="ae_cpu_zoom.json", run="zoom",
                  init=("init=dm", "init_encoder=dm"), steps_flag="--zoom-steps", record="zoom.steps",
                  describe="decoder + renderer refit for deep zoom on the frozen encoder (levels up to {cfg.max_r}², "
                           "the posterior mean, fresh PatchGAN from step {cfg.disc_start}, cosine lr {cfg.lr:g} → "
                           "{cfg.lr_final:g}); the UNet stays valid"),
        ),
        export=Refit(unet="dm", autoencoder="zoom"),
        evaluation=Evaluation(
            args=("--model", "{model}", "--data", "{holdout}", "--fid-data", "{train}", "--samples", "{samples}",
                  "--crops", "{crops}", "--steps", "{steps}", "--refine", "{refine}"),
            judges=(evaluate.targets,), report="evaluation.json"),
        card=Card(
            title="infd-cpu-photos — the embedded default model",
            model="""Latent {latent} ({regularizer}{thumbnail_note}), φ {phi}×256×256, CLIF renderer width {width} \
with {blocks} ResNet blocks and
no normalisation (tiles are bit-exact pieces of a whole render){base}, receptive radius {radius} px.
Stored: autoencoder fp32, UNet fp16 ({bytes:.1f} MB in all).""",
            data=("{photos_train} training photos and {photos_holdout} held-out photos from scikit-image, scikit-learn "
                  "and the Debian packages mate-backgrounds and plasma-workspace-wallpapers (up to 2560 px; assembled "
                  "by `python -m training.photoset`). Autoencoder: random square sub-images "
                  "({stages[ae].square_crops}) of each photo, randomly downsampled to r ∈ [{stages[ae].min_r}, "
                  "{stages[ae].max_r}], "
                  "{stages[ae].patch}² crops. Diffusion: {stages[dm].repeats} augmented latents per photo."),
            command="python -m training.default_model --recipe v1",
            evaluated="the {n_holdout} held-out photos",
            licence="""See `MANIFEST.md` beside this card: GPL-2+ (Debian wallpapers), CC0 / public domain \
(scikit-image),
CC-BY-2.0 (scikit-learn's two photos).""")),
    Recipe(
        name="v2", photos="photos-nature", photo_set="nature",
        milestone=Milestone(name="v1", family="cpu", folder="milestone"),
        stages=(
            Stage(**NATURE_DECODER, config="ae_cpu2_decoder.json", run="decoder2"),
            Stage(name="dm", trains="diffusion", config="dm_cpu2.json", run="dm2", init=(f"init={MILESTONE}",),
                  latents=MILESTONE, steps_flag="--dm-steps", record="diffusion.stage2_steps",
                  describe="the milestone's UNet fine-tuned on the nature latents" + UNET_SETTINGS),
        ),
        export=Assembly(autoencoder="decoder", unet="dm", decode_pad=0),
        evaluation=Evaluation(**NATURE_EVALUATION, report="evaluation-v2.json", strips="strips",
                              gains=Gains(target=2.0)),
        card=Card(**NATURE_CARD, history="""\
v2 continues from the v1 model (the milestone, git history of this folder; rebuilt from scratch
by `python -m training.default_model --recipe v1`, ~2.6 CPU-hours): its encoder (frozen, so the
latents do not change), its decoder and renderer, grown into larger ones that start out computing
v1's φ (`training/grow.py`), and its UNet.""")),
    Recipe(
        name="v3", photos="photos-nature", photo_set="nature",
        milestone=Milestone(name="v2", family="cpu2", folder="milestone-v2"),
        stages=(Stage(**NATURE_DECODER, config="ae_cpu3_decoder.json", run="decoder3"),),
        export=Assembly(autoencoder="decoder", unet=MILESTONE, decode_pad=2),
        evaluation=Evaluation(**NATURE_EVALUATION, report="evaluation-v3.json", strips="strips-v3",
                              gains=Gains(target=2.0, baseline="v2")),
        card=Card(**NATURE_CARD, kept=(KEPT_UNET,), history="""\
v3 continues from the v2 model (the milestone, git history of this folder; `--recipe v2` rebuilds
it from v1): its encoder (frozen, so the latents do not change), its decoder and renderer, grown
into `cpu3`'s (a 256² level twice as wide, projected to the same φ; `training/grow.py`), and its
UNet as it is. Fine-tuning the encoder too was measured and gained nothing (an optimal latent per
image gains only +0.8 dB at 256², +0.4 dB at 1024²). It decodes with 2 latent cells of reflection
around the latent (`decode_pad`): trained without, the decoder left a colour cast along the top
border (the top 16 px of 4096² renders −23/255 in red on the held-out photos); with it no side's
cast exceeds 3/255 (see the border table below), and PSNR is unchanged.""")),
    Recipe(
        name="v4", photos="photos-nature", photo_set="nature",
        milestone=Milestone(name="v3", family="cpu3", folder="milestone-v3"),
        stages=(Stage(**NATURE_DECODER, config="ae_cpu4_texture.json", run="texture4"),),
        export=Assembly(autoencoder="decoder", unet=MILESTONE, decode_pad=2),
        evaluation=Evaluation(**NATURE_EVALUATION, report="evaluation-v4.json", strips="strips-v4", gains=Gains()),
        card=Card(**NATURE_CARD, kept=(KEPT_UNET,), history="""\
v4 continues from the v3 model (the milestone, git history of this folder): its encoder (frozen,
so the latents and its UNet stay valid), its decoder and renderer continued as they are (the same
`cpu3` sizes, decoding with the same 2 cells of reflection) with a **texture loss** added: on crops of
levels above 512² (above 2× the 256² encoder input, where the latent cannot know where each hair or
needle lies), the Gram matrices of VGG16 features (relu1_2, relu2_2, relu3_3, over 32-px windows)
must match the photo's (`training.losses.texture_loss`); L1 and LPIPS alone reward the mean, a blur.""")),
)}


# --- running a recipe -------------------------------------------------------------------------------

def check_milestone(folder: Path, recipe: Recipe) -> None:
    """Refuse a milestone of another family than the recipe continues: on a fresh checkout the
    shipped folder is the newest model, not this recipe's starting point."""
    m, family = recipe.milestone, read_config(folder).name
    if family != m.family:
        raise SystemExit(
            f"--recipe {recipe.name} continues from {m.name} (a {m.family} model), but {folder} is a "
            f"{family} model. Pass --milestone a copy of {m.name}, e.g. from the git history of "
            f"{DEFAULT_OUT} (git log -- {DEFAULT_OUT}), or run the recipe that made {m.name} first.")


def take_milestone(recipe: Recipe, work: Path, given: Path) -> None:
    """Check the recipe's milestone (its copy in ``work`` once made, else ``given``) and copy it there
    once, before the export overwrites ``--out`` (often ``--milestone``). A recipe from scratch has none."""
    if recipe.milestone is None:
        return
    copy = work / recipe.milestone.folder
    made = (copy / "config.json").exists()
    check_milestone(copy if made else given, recipe)
    if not made:
        shutil.copytree(given, copy)


def continue_or_grow(cfg: stage1.AETrainConfig, model: Path) -> None:
    """Start ``cfg``'s decoder and renderer from ``model``'s: continued as they are (with its decode_pad)
    where ``model`` is of the preset's family, grown into the preset's larger ones otherwise (training.grow:
    they start out computing the same φ)."""
    family = replace(read_config(model).autoencoder, decode_pad=0)  # decode_pad: set at export
    if family == stage1.model_config(cfg.model).autoencoder:
        cfg.model, cfg.init = str(model), str(model)
    else:
        cfg.grow = str(model)


def stage_config(stage: Stage, source: Callable[[str], Path]) -> Any:
    """A stage's preset with its ``init`` overrides (each source given as its model folder) and its
    decoder's start (:func:`continue_or_grow`)."""
    overrides = [f"{key}={source(name)}" for key, _, name in (item.partition("=") for item in stage.init)]
    cfg = preset(stage, overrides)
    if stage.decoder_of is not None:
        continue_or_grow(cfg, source(stage.decoder_of))
    return cfg


def train_stage(stage: Stage, source: Callable[[str], Path], photos: Path, work: Path, steps: int | None) -> None:
    """Train ``stage`` on the photos in ``photos``, resuming from its checkpoint in ``work/<run>``;
    ``steps``: stop early (None: the preset's)."""
    cfg, run = stage_config(stage, source), work / stage.run
    if stage.trains == "diffusion":
        stage2.train(cfg, source(stage.latents), [str(photos)], run, resume=True, steps=steps)
    else:
        stage1.train(cfg, [str(photos)], run, resume=True, steps=steps)


def sample_pfids(recipe: Recipe, values: dict[str, Any], work: Path) -> dict[str, dict]:
    """The recipe's sample patch-FID runs of the model and of the milestone, by the card's label; each
    report is kept as ``work/pfid-<name>.json`` (the card can be rewritten from it)."""
    if not recipe.evaluation.pfid:
        return {}
    models = ((recipe.name, "this model", values["model"]),
              (recipe.milestone.name, "the milestone", values["milestone"]))
    return {f"{name} ({who})": evaluate.main([*fill(recipe.evaluation.pfid, {**values, "model": model}),
                                              "--out", str(work / f"pfid-{name}.json")])
            for name, who, model in models}


def steps_dest(flag: str) -> str:
    """The attribute of the parsed command line that a ``--*-steps`` flag sets."""
    return flag.removeprefix("--").replace("-", "_")


def run(recipe: Recipe, args: argparse.Namespace) -> None:
    """Make ``recipe``'s model (see the module docstring) as the command line ``args`` asks."""
    work, source = args.work, partial(recipe.source, args.work)
    take_milestone(recipe, work, args.milestone)
    photos = work / recipe.photos
    if not (photos / "manifest.json").exists():
        photoset.main(["--out", str(photos), "--set", recipe.photo_set])
    if not args.skip_training:
        for stage in recipe.stages:
            train_stage(stage, source, photos / "train", work, getattr(args, steps_dest(stage.steps_flag)))
    recipe.export.write(source, args.out)
    values = protocol(recipe, work, args.out, {"samples": args.samples, "crops": args.crops,
                                               "steps": args.sample_steps, "refine": args.refine})
    report = evaluate.main([*fill(recipe.evaluation.args, values), "--out", str(work / recipe.evaluation.report)])
    pfids = sample_pfids(recipe, values, work)
    pictures(Pipeline.load(args.out), args.out, seeds=range(recipe.card.seeds), steps=args.sample_steps)
    if recipe.evaluation.strips is not None:
        strip = sorted(values["strips"].glob("*.png"))[0]
        Image.open(strip).convert("RGB").save(args.out / "strip.jpg", quality=90)
    model_card(args.out, work, recipe, report, pfids)
    print(f"wrote {args.out}")


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=list(RECIPES), default="v3",
                    help="v2, v3, v4: continue from --milestone; v1: from scratch (see RECIPES)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--milestone", type=Path, default=DEFAULT_OUT,
                    help="v2, v3, v4: the committed model to continue from")
    ap.add_argument("--ae-steps", type=int)
    ap.add_argument("--decoder-steps", type=int)
    ap.add_argument("--finetune-steps", type=int)
    ap.add_argument("--dm-steps", type=int)
    ap.add_argument("--zoom-steps", type=int)
    ap.add_argument("--samples", type=int, default=8, help="generated images for patch-FID")
    ap.add_argument("--crops", type=int, default=128, help="random crops per set for patch-FID")
    ap.add_argument("--refine", type=int, default=100, help="refinement steps of the evaluation's refined-latent row")
    ap.add_argument("--sample-steps", type=int, default=50, help="sampler steps for the samples (evaluation, pictures)")
    ap.add_argument("--skip-training", action="store_true", help="only export, evaluate and write the card")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the recipe that the command line names."""
    args = parser().parse_args(argv)
    run(RECIPES[args.recipe], args)


if __name__ == "__main__":
    main()
