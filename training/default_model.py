"""Retrain the embedded default model, in one command (resumable):

    python -m training.default_model [--recipe v4|v3|v2|v1] [--work runs/default] [--out assets/models/infd-cpu-photos]

``v4`` continues the committed v3 model in its own family: its decoder and renderer go on training
as they are on the frozen encoder (the UNet stays valid) with a texture loss on the crops above 2×
the encoder input (training/configs/ae_cpu4_texture.json, :func:`training.losses.texture_loss`); its
folders in ``WORK`` are ``milestone-v3``, ``texture4`` and ``strips-v4``. Its card adds the detail
judges (:mod:`training.detail`) and their targets against v3 (:func:`detail_checks`).

``v3`` (the default recipe, the embedded model) continues from the committed v2 model the way
``v2`` did from v1 (below), into the ``cpu3`` family (training/configs/ae_cpu3_decoder.json: a 256²
decoder level twice as wide), keeping the milestone's UNet as it is; its folders in ``WORK`` are
``milestone-v2``, ``decoder3`` and ``strips-v3`` (:data:`RECIPES`). Its card measures the PSNR
targets against v1 through the v2 evaluation (``WORK/evaluation-v2.json``).

``v2`` continues from a committed **milestone** model
(``--milestone``, default: the shipped folder, copied to ``WORK/milestone`` before anything is
overwritten) on the ``nature`` photo set (training.photoset: 123 training photos, 8 detailed ones
held out):

1. decoder + renderer of the ``cpu2`` family (a decoder with 2x and 4x wider low levels and one
   more ResNet block per level, bilinear phi features: :func:`infd_core.configs.cpu2`) on the
   milestone's frozen encoder (training/configs/ae_cpu2_decoder.json). A v1 milestone's decoder
   and renderer are grown into the larger ones (training.grow: it starts out computing v1's phi);
   a cpu2 milestone's are continued. The latents stay the milestone's, so its UNet stays valid;
2. the milestone's UNet fine-tuned on the nature photos' latents (training/configs/dm_cpu2.json);
3. export (:func:`export_stages`), evaluation against the milestone on the held-out photos (with the
   Real-ESRGAN x4 rows and comparison strips), pictures and the model card.

Each stage resumes from its checkpoint in ``WORK`` when re-run; ``--decoder-steps`` / ``--dm-steps``
stop a stage early (the card records what was run).

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
4. exports the model folder compactly (UNet in fp16) with a model card: data, sizes, steps,
   wall time, evaluation, a contact sheet of samples and a zoom sequence.

``--ae-steps`` / ``--decoder-steps`` / ``--finetune-steps`` / ``--dm-steps`` / ``--zoom-steps`` stop a
stage early (the card records what was run).
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

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
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "models" / "infd-cpu-photos"


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


CARD_INTRO = """A small image neural field diffusion model (INFD, Chen et al. 2024) trained **on this project's
2-core CPU machine** from photos that install offline. It is a demo model: it runs interactively
on a CPU and shows the whole pipeline (any-resolution rendering, deep zoom, guidance); it is not
a high-quality generator.

## Status
{status}

## Data
{data}

## Sizes (`PRESET` preset)
| part | parameters |
|---|---|
{sizes}
"""

CARD = "# infd-cpu-photos — the embedded default model\n\n" + CARD_INTRO.replace("PRESET", "cpu") + """
Latent {latent}, φ {phi}×256×256, CLIF renderer width {width} with {blocks} ResNet blocks and
no normalisation (tiles are bit-exact pieces of a whole render){base}, receptive radius {radius} px.
Stored: autoencoder fp32, UNet fp16 ({bytes:.1f} MB in all).

## Training (one command: `python -m training.default_model --recipe v1`)
| stage | steps | batch | wall time | settings |
|---|---|---|---|---|
| autoencoder (L1 + LPIPS-VGG + {reg} + adaptive PatchGAN from step {disc_start}) | {ae_steps} | {ae_batch} | {ae_time} | `training/configs/ae_cpu.json` |
| decoder + renderer afresh on the frozen encoder (same losses, PatchGAN from step {dec_disc_start}, {dec_crops} crops per image, cosine lr {dec_lr:g} → {dec_lr_final:g}) | {dec_steps} | {dec_batch} | {dec_time} | `training/configs/ae_cpu_decoder.json` |
| the whole autoencoder fine-tuned, encoder included (fresh PatchGAN from step {ft_disc_start}, cosine lr {ft_lr:g} → {ft_lr_final:g}) | {ft_steps} | {ft_batch} | {ft_time} | `training/configs/ae_cpu_finetune.json` |
| diffusion ({prediction}, authors' schedule, EMA {ema}; samples with DDIM η = {eta:g} and clamps x0 to the training latents' range) | {dm_steps} | {dm_batch} | {dm_time} | `training/configs/dm_cpu.json` |
| decoder + renderer refit for deep zoom on the frozen encoder (levels up to {zoom_max_r}², the posterior mean, fresh PatchGAN from step {zoom_disc_start}, cosine lr {zoom_lr:g} → {zoom_lr_final:g}); the UNet stays valid | {zoom_steps} | {zoom_batch} | {zoom_time} | `training/configs/ae_cpu_zoom.json` |

## Evaluation on the 3 held-out photos
Command: `python -m training.evaluate --model assets/models/infd-cpu-photos --data runs/default/photos/holdout --fid-data runs/default/photos/train --samples {samples} --crops {crops} --refine {refine}`

{evaluation}

## Samples (seeds 0–7, 256²)
![samples](samples.jpg)

## Zoom sequence (seed 0: the whole image at 512², then the centre 512² of renders at 1K, 2K, 4K)
![zoom](zoom.jpg)

## Compositions (`infd_core.compositions`: each example sketch held at 4-cell blocks, seed 0, 30 steps: the sketch, the 1024² render, its centre 384² at 1:1, and the centre 384² of the 2048² render at 1:1)
The layout and colours are the sketch's (held as the latent's block means); the texture is the model's.
![composition](composition.jpg)

## Licence of the training data
See `MANIFEST.md` beside this card: GPL-2+ (Debian wallpapers), CC0 / public domain (scikit-image),
CC-BY-2.0 (scikit-learn's two photos).
"""


def status(report: dict) -> str:
    """One paragraph for the card: which evaluation targets (training.evaluate.targets) are met."""
    checks = evaluate.targets(report)
    line = "; ".join(f"{t}: {'met' if ok else 'not met'} ({v})" for t, ok, v in checks)
    head = "Meets its targets" if all(ok for _, ok, _ in checks) else "Not yet at all its targets"
    return f"{head}: {line}. Details below."


def autoencoder_stages(meta: dict) -> tuple[dict, dict, dict]:
    """``{steps, seconds}`` of the three autoencoder stages (first pass, decoder, fine-tune) from a
    model's ``meta``: the last stage's own record plus the ``init`` / ``encoder`` history it
    carries (training.autoencoder). A stage that was not recorded has ``None`` values."""
    none = {"steps": None, "seconds": None}
    ft = {"steps": meta.get("stage1_steps"), "seconds": meta.get("stage1_seconds")}
    dec = meta.get("init", none)
    ae = dec.get("before", {}).get("encoder", none)
    return ae, dec, ft


def model_card(out: Path, work: Path, report: dict, samples: int, crops: int) -> None:
    cfg = read_config(out)
    pipe = Pipeline.load(out)
    d = pipe.describe()
    ae_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu.json", [])
    dec_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_decoder.json", [])
    ft_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_finetune.json", [])
    dm_cfg = load_json_config(stage2.DMTrainConfig, CONFIGS / "dm_cpu.json", [])
    zoom_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_zoom.json", [])
    zoom = cfg.meta.get("zoom", {"steps": None, "seconds": None})
    manifest = json.loads((work / "photos" / "manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) else manifest
    splits = {s: sum(1 for f in files if f.get("split") == s) for s in ("train", "holdout")}
    data = (f"{splits['train']} training photos and {splits['holdout']} held-out photos from scikit-image, "
            f"scikit-learn and the Debian packages mate-backgrounds and plasma-workspace-wallpapers "
            f"(up to 2560 px; assembled by `python -m training.photoset`). Autoencoder: random square "
            f"sub-images ({ae_cfg.square_crops}) of each photo, randomly downsampled to r ∈ [{ae_cfg.min_r}, "
            f"{ae_cfg.max_r}], {ae_cfg.patch}² crops. Diffusion: {dm_cfg.repeats} augmented latents per photo.")
    ae, dec, ft = autoencoder_stages(cfg.meta)
    hours = lambda s: "not recorded" if s is None else f"{s / 60:.0f} min"  # noqa: E731
    a = cfg.autoencoder
    latent = (f"{a.z_channels}×{a.latent_size}×{a.latent_size} (" +
              (f"VQ, {a.n_embed} codes" if a.regularizer == "vq" else f"KL, weight {a.kl_weight:g}") +
              ("; the latent mean is the image's 4×4-average thumbnail plus a learned residual, and φ adds "
               "the upsampled latent (`thumbnail_skip`)" if a.thumbnail_skip else "") + ")")
    base = "; it predicts a residual over φ's first 3 channels interpolated bilinearly" if a.renderer.base != "none" else ""
    text = CARD.format(
        latent=latent, width=a.renderer.width, blocks=a.renderer.blocks, base=base,
        reg="VQ" if a.regularizer == "vq" else "KL", data=data,
        sizes="\n".join(f"| {k} | {v / 1e6:.2f}M |" for k, v in d["params"].items()),
        phi=a.decoder.ch * a.decoder.ch_mult[0], radius=d["receptive_radius"],
        bytes=sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6, disc_start=ae_cfg.disc_start,
        ae_steps=ae["steps"], ae_batch=ae_cfg.batch, ae_time=hours(ae["seconds"]),
        dec_steps=dec["steps"], dec_batch=dec_cfg.batch, dec_time=hours(dec["seconds"]),
        dec_disc_start=dec_cfg.disc_start, dec_crops=dec_cfg.crops_per_image, dec_lr=dec_cfg.lr,
        dec_lr_final=dec_cfg.lr_final,
        ft_steps=ft["steps"], ft_batch=ft_cfg.batch, ft_time=hours(ft["seconds"]), ft_disc_start=ft_cfg.disc_start,
        ft_lr=ft_cfg.lr, ft_lr_final=ft_cfg.lr_final,
        dm_steps=cfg.meta.get("stage2_steps"), dm_batch=dm_cfg.batch,
        dm_time=hours(cfg.meta.get("stage2_seconds")),
        zoom_steps=zoom["steps"], zoom_batch=zoom_cfg.batch, zoom_time=hours(zoom["seconds"]),
        zoom_max_r=zoom_cfg.max_r, zoom_disc_start=zoom_cfg.disc_start, zoom_lr=zoom_cfg.lr,
        zoom_lr_final=zoom_cfg.lr_final,
        prediction={"v": "v-prediction", "epsilon": "ε-prediction"}[cfg.diffusion.prediction],
        ema=dm_cfg.ema, eta=cfg.diffusion.eta, samples=samples, crops=crops,
        refine=report["settings"]["refine"], evaluation=evaluate.markdown(report), status=status(report))
    (out / "README.md").write_text(text)
    shutil.copyfile(work / "photos" / "MANIFEST.md", out / "MANIFEST.md")



# --- v2, v3: continue from a committed milestone on its frozen encoder -----------------------------

@dataclass(frozen=True)
class Continuation:
    """A recipe that continues from a committed milestone model on the nature set, on the
    milestone's frozen encoder (the latents stay the milestone's): stage 1 trains a decoder and
    renderer (``ae_config``; grown from the milestone's when its family is larger, continued when
    it is the same); stage 2 fine-tunes the milestone's UNet on the nature latents (``dm_config``,
    run in ``WORK/<diffusion>``), or keeps it as it is (``diffusion=None``: the photos and latents
    did not change).
    Its runs are the folders ``WORK/<milestone>``, ``WORK/<autoencoder>``, ... ."""

    name: str
    before: str  # what the milestone is called in the card
    before_family: str  # the milestone's family (its config name): checked, a newer model is refused
    ae_config: str
    milestone: str  # the milestone's copy, made before the export overwrites the shipped folder
    autoencoder: str  # stage-1 run
    diffusion: str | None  # stage-2 run (None: the milestone's UNet is kept)
    strips: str
    history: str  # the card's paragraph on where the model comes from
    psnr_gain: float | None = None  # the card's target for the PSNR gain over the baseline (None: reported only)
    dm_config: str = "dm_cpu2.json"
    baseline: str | None = None  # the PSNR target's baseline: the milestone of this earlier recipe (None: ours)
    decode_pad: int = 0  # the exported model's AutoencoderConfig.decode_pad (its decoder was trained without)


RECIPES = {
    "v2": Continuation(
        name="v2", before="v1", before_family="cpu", ae_config="ae_cpu2_decoder.json", milestone="milestone",
        autoencoder="decoder2", diffusion="dm2", strips="strips", psnr_gain=2.0,
        history="""v2 continues from the v1 model (the milestone, git history of this folder; rebuilt from scratch
by `python -m training.default_model --recipe v1`, ~2.6 CPU-hours): its encoder (frozen, so the
latents do not change), its decoder and renderer, grown into larger ones that start out computing
v1's φ (`training/grow.py`), and its UNet."""),
    "v3": Continuation(
        name="v3", before="v2", before_family="cpu2", ae_config="ae_cpu3_decoder.json", milestone="milestone-v2",
        autoencoder="decoder3", diffusion=None, strips="strips-v3", psnr_gain=2.0, baseline="v2", decode_pad=2,
        history="""v3 continues from the v2 model (the milestone, git history of this folder; `--recipe v2` rebuilds
it from v1): its encoder (frozen, so the latents do not change), its decoder and renderer, grown
into `cpu3`'s (a 256² level twice as wide, projected to the same φ; `training/grow.py`), and its
UNet as it is. Fine-tuning the encoder too was measured and gained nothing (an optimal latent per
image gains only +0.8 dB at 256², +0.4 dB at 1024²). It decodes with 2 latent cells of reflection
around the latent (`decode_pad`): trained without, the decoder left a colour cast along the top
border (the top 16 px of 4096² renders −23/255 in red on the held-out photos); with it no side's
cast exceeds 3/255 (see the border table below), and PSNR is unchanged."""),
    "v4": Continuation(
        name="v4", before="v3", before_family="cpu3", ae_config="ae_cpu4_texture.json", milestone="milestone-v3",
        autoencoder="texture4", diffusion=None, strips="strips-v4", decode_pad=2,
        history="""v4 continues from the v3 model (the milestone, git history of this folder): its encoder (frozen,
so the latents and its UNet stay valid), its decoder and renderer continued as they are (the same
`cpu3` sizes, decoding with the same 2 cells of reflection) with a **texture loss** added: on crops of
levels above 512² (above 2× the 256² encoder input, where the latent cannot know where each hair or
needle lies), the Gram matrices of VGG16 features (relu1_2, relu2_2, relu3_3, over 32-px windows)
must match the photo's (`training.losses.texture_loss`); L1 and LPIPS alone reward the mean, a blur."""),
}


def evaluation_args(model: Path, milestone: Path, holdout: Path, strips: Path) -> list[str]:
    """``training.evaluate``'s arguments for a continued model against its milestone on the held-out
    photos: reconstruction, φ grid and borders at 2048² and 4096², detail at 2048² 1:1, patch-FID
    256/1K of the reconstructions (bicubic, Real-ESRGAN and the milestone beside), the strips."""
    return ["--model", str(model), "--compare", str(milestone), "--data", str(holdout), "--grid-sizes", "2048", "4096",
            "--detail-size", "2048", "--patch-sizes", "256", "--strips", str(strips)]


def evaluation_file(work: Path, recipe: str) -> Path:
    """Where a continued recipe's evaluation against its milestone is kept (a later recipe reads it)."""
    return work / f"evaluation-{recipe}.json"


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
    meta = {"decoder": {k: ae.meta.get(k) for k in ("encoder", "init", "stage1_steps", "stage1_seconds", "stage1_config")},
            "diffusion": unet.meta.get("diffusion")  # a model folder's UNet: its own record
            or {k: unet.meta.get(k) for k in ("stage2_init", "stage2_steps", "stage2_seconds", "stage2_config")}}
    out.mkdir(parents=True, exist_ok=True)
    autoencoder = ae.autoencoder if decode_pad is None else replace(ae.autoencoder, decode_pad=decode_pad)
    write_config(out, ModelConfig(name=ae.name, autoencoder=autoencoder, diffusion=unet.diffusion, meta=meta))
    shutil.copyfile(decoder / "autoencoder.safetensors", out / "autoencoder.safetensors")
    save_file({k: v.half() for k, v in load_file(str(dm / "unet.safetensors")).items()}, str(out / "unet.safetensors"))


CARD_CONTINUED = "# infd-cpu-photos — the embedded default model ({name})\n\n" + CARD_INTRO.replace("PRESET", "{family}") + """
Latent {latent}; the decoder (base {dec_ch}, {dec_blocks} ResNet blocks per level) gives φ {phi}×256×256;
CLIF renderer width {width} with {blocks} ResNet blocks and no normalisation, reading φ interpolated
bilinearly at each pixel (no φ-cell grid when zoomed in; tiles are bit-exact pieces of a whole
render), receptive radius {radius} px. Stored: autoencoder fp32, UNet fp16 ({bytes:.1f} MB in all).

## Training (one command: `python -m training.default_model`)
{history}

| stage | steps | batch | wall time | settings |
|---|---|---|---|---|
| decoder + renderer of `{family}` {dec_from} on its frozen encoder ({dec_losses}{dec_gan}; levels up to {dec_max_r}², {dec_crops} crops per image, cosine lr {dec_lr:g} → {dec_lr_final:g}, {dec_precision}) | {dec_steps} | {dec_batch} | {dec_time} | `training/configs/{ae_config}` |
| {dm_what} (v-prediction, EMA {ema}, lr {dm_lr:g}, bf16 autocast) | {dm_steps} | {dm_batch} | {dm_time} | `training/configs/{dm_config}` |

Wall times were measured with each run on one thread beside other work on the 2 cores.

## Evaluation on the {n_holdout} detailed held-out photos, against the milestone ({before})
Command: `python -m training.evaluate {evaluation_command}`

{evaluation}

{pfid}

## At 1:1: 2048², the centre 512² of each held-out photo (photo, bicubic of the 256² input, Real-ESRGAN ×4 of it, the milestone {before}, this model)
![strip](strip.jpg)

## Samples (seeds 0–15, 256²)
![samples](samples.jpg)

## Zoom sequence (seed 0: the whole image at 512², then the centre 512² of renders at 1K, 2K, 4K)
![zoom](zoom.jpg)

## Compositions (`infd_core.compositions`: each example sketch held at 4-cell blocks, seed 0, 30 steps: the sketch, the 1024² render, its centre 384² at 1:1, and the centre 384² of the 2048² render at 1:1)
The layout and colours are the sketch's (held as the latent's block means); the texture is the model's.
![composition](composition.jpg)

## Licence of the training data
See `MANIFEST.md` beside this card (licence and credit of every photo, as each package states them:
this campaign's photos, then those of the milestone it continues).
"""


BAND_LIMIT = 3.0  # /255: about the smallest uniform colour shift one sees along an edge of a natural image


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


def status_continued(report: dict, recipe: Continuation, earlier: dict | None = None) -> str:
    """The card's status paragraph: the recipe's targets, each met or not, with the numbers (a PSNR
    gain without a target is reported as it is). ``earlier``: the evaluation of ``recipe.baseline``,
    whose milestone the PSNR targets are measured against."""
    mean = report["reconstruction"]["mean"]
    base = baseline_psnr(report, earlier)
    base_name = RECIPES[recipe.baseline].before if earlier is not None else recipe.before
    targeted = recipe.psnr_gain is not None and (recipe.baseline is None or earlier is not None)  # no baseline read: no target
    checks, facts = [], []
    for s in ("256", "1024"):
        gain = mean["model"][s]["psnr"] - base[s]
        if not targeted:
            facts.append(f"PSNR at {s}² {gain:+.2f} dB over {base_name}")
        else:
            checks.append((f"PSNR at {s}² +{recipe.psnr_gain:g} dB over {base_name}", gain >= recipe.psnr_gain,
                           f"{gain:+.2f} dB"))
    m, b = mean["model"]["1024"]["lpips"], mean["bicubic-128"]["1024"]["lpips"]
    checks.append(("1024² LPIPS at or below bicubic of a 128² thumbnail", m <= b, f"{m:.4f} vs {b:.4f}"))
    grid = report["grid"]["mean"]
    for s in map(str, report["grid"]["sizes"]):
        g, gb = grid["model"][s], grid["bicubic"][s]
        checks.append((f"φ-grid visibility at {s}² at or below bicubic's", g <= gb, f"{g:.2f} vs {gb:.2f}"))
    worst = min(report["scale_consistency"]["per_image_db"]["model"].values())
    checks.append(("scale consistency ≥ 35 dB on every photo", worst >= 35, f"min {worst:.2f} dB"))
    if "border" in report:
        side, cast = max(report["border"]["mean"]["model"].items(), key=lambda kv: kv[1])
        checks.append((f"no coloured band along a border (mean cast at {report['border']['size']}² ≤ {BAND_LIMIT:g}/255 "
                       "on every side)", cast <= BAND_LIMIT, f"worst: {side} {cast:.1f}"))
    checks += detail_checks(report)
    line = "; ".join(facts + [f"{t}: {'met' if ok else 'not met'} ({v})" for t, ok, v in checks])
    head = "Meets" if all(ok for _, ok, _ in checks) else "Not yet at all"
    chain = "" if earlier is None else (f" The PSNR gains over {base_name} add the {recipe.baseline} evaluation's "
                                        f"(against {base_name}) to this one's (against {recipe.before}): same photos "
                                        "and protocol, and both score the shared model alike.")
    return f"{head} its {recipe.name} targets: {line}.{chain} Details below."


def detail_checks(report: dict) -> list[tuple[str, bool, str]]:
    """The detail targets against the milestone (``compare``), where the report has the judges: at
    2048² 1:1 the sharpness ratio on the photos at least 2048 px (their reference is not upsampled) at
    least halfway from the milestone's to 1.0, flat-region noise at most bicubic's, patch-FID 256/1K
    below the milestone's, 1024² LPIPS at most 0.01 above the milestone's."""
    if "detail" not in report or "compare" not in report["detail"]["mean"]:
        return []
    dt, out = report["detail"], []
    size = dt["size"]
    native = dt["native_mean"] or dt["mean"]
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


def pfid_table(reports: dict[str, dict]) -> str:
    """Sample pFID of several models (``{label: evaluate report}``), side by side."""
    any_report = next(iter(reports.values()))
    pf = any_report["pfid"]
    feats = next(iter(pf["by_features"]))
    out = [f"### {feats}: samples against the {pf['n_reference']} training photos (`{pf['reference']}`)", "",
           f"{pf['n_samples']} samples per model (seeds 0–{pf['n_samples'] - 1}, {any_report['settings']['steps']} steps), "
           f"{pf['crops']} random crops per set for P < 1K. Small-N FID is biased upwards: compare only within "
           "this table.", "", "| model | " + " | ".join(pf["by_features"][feats]) + " |",
           "|---|" + "---:|" * len(pf["by_features"][feats])]
    for label, r in reports.items():
        vals = r["pfid"]["by_features"][feats]
        out.append(f"| {label} | " + " | ".join(f"{v['samples']:.1f}" for v in vals.values()) + " |")
    return "\n".join(out)


def model_card_continued(out: Path, work: Path, report: dict, pfids: dict[str, dict], recipe: Continuation) -> None:
    """The card of a continued model; a recipe with a ``baseline`` reads that recipe's evaluation
    (``WORK/evaluation-<baseline>.json``; without it, the PSNR gains over our milestone are reported
    without a target)."""
    earlier_file = evaluation_file(work, recipe.baseline) if recipe.baseline else None
    earlier = json.loads(earlier_file.read_text()) if earlier_file and earlier_file.exists() else None
    cfg = read_config(out)
    pipe = Pipeline.load(out)
    d = pipe.describe()
    dec_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / recipe.ae_config, [])
    dm_cfg = load_json_config(stage2.DMTrainConfig, CONFIGS / recipe.dm_config, [])
    manifest = json.loads((work / "photos-nature" / "manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) else manifest
    splits = {s: sum(1 for f in files if f.get("split") == s) for s in ("train", "holdout")}
    data = (f"The `nature` set of `python -m training.photoset` ({splits['train']} training photos, "
            f"{splits['holdout']} held out): landscapes, plants, animals, water and sky from scikit-image, "
            "scikit-learn and Debian packages (wallpapers, GCompris, Enlightenment, tuxtype, LXQt, tagua, palapeli). "
            "The held-out photos were chosen for fine detail: spruce needles, lichen, a cheetah, a gorilla, rice "
            "terraces, a flower meadow, a honey bee, a hedgehog.")
    minutes = lambda s: "not recorded" if s is None else f"{s / 60:.0f} min"  # noqa: E731
    a = cfg.autoencoder
    dec, dm = cfg.meta.get("decoder", {}), cfg.meta.get("diffusion", {})
    latent = (f"{a.z_channels}×{a.latent_size}×{a.latent_size} (KL; the mean is the image's 4×4-average thumbnail "
              "plus a learned residual)" if a.thumbnail_skip else f"{a.z_channels}×{a.latent_size}×{a.latent_size}")
    dm_what = ("the milestone's UNet fine-tuned on the nature latents" if recipe.diffusion else
               "the milestone's UNet as it is (the latents did not change); it was fine-tuned on the nature latents")
    text = CARD_CONTINUED.format(
        name=recipe.name, family=cfg.name, history=recipe.history, ae_config=recipe.ae_config,
        dm_config=recipe.dm_config, dm_what=dm_what, before=recipe.before, milestone=recipe.milestone,
        strips=recipe.strips, status=status_continued(report, recipe, earlier), data=data, latent=latent,
        sizes="\n".join(f"| {k} | {v / 1e6:.2f}M |" for k, v in d["params"].items()),
        dec_ch=a.decoder.ch, dec_blocks=a.decoder.num_res_blocks + 1, phi=d["phi_channels"],
        width=a.renderer.width, blocks=a.renderer.blocks, radius=d["receptive_radius"],
        bytes=sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6,
        dec_gan=", no GAN" if dec_cfg.disc_start >= dec_cfg.steps else f" + adaptive PatchGAN from step {dec_cfg.disc_start}",
        dec_from=("grown from the milestone's (training.grow)" if (dec.get("stage1_config") or {}).get("grow")
                  else "continued from the milestone's"),
        dec_losses="L1 + LPIPS-VGG" + (f" + texture loss (weight {dec_cfg.texture_weight:g}, {dec_cfg.texture_patch}-px "
                                       f"Gram windows, levels above {dec_cfg.texture_min_r}²)"
                                       if dec_cfg.texture_weight else ""),
        dec_precision="bf16 autocast" if dec_cfg.precision == "bf16" else "fp32",
        evaluation_command=" ".join(evaluation_args(Path("assets/models/infd-cpu-photos"),
                                                    Path("runs/default") / recipe.milestone,
                                                    Path("runs/default/photos-nature/holdout"),
                                                    Path("runs/default") / recipe.strips)),
        dec_max_r=dec_cfg.max_r, dec_crops=dec_cfg.crops_per_image,
        dec_lr=dec_cfg.lr, dec_lr_final=dec_cfg.lr_final, dec_steps=dec.get("stage1_steps"), dec_batch=dec_cfg.batch,
        dec_time=minutes(dec.get("stage1_seconds")), ema=dm_cfg.ema, dm_lr=dm_cfg.lr,
        dm_steps=dm.get("stage2_steps"), dm_batch=dm_cfg.batch, dm_time=minutes(dm.get("stage2_seconds")),
        n_holdout=len(report["images"]), evaluation=evaluate.markdown(report), pfid=pfid_table(pfids))
    (out / "README.md").write_text(text)
    (out / "MANIFEST.md").write_text(manifest_continued(work / "photos-nature" / "MANIFEST.md",
                                                        work / recipe.milestone / "MANIFEST.md"))


def manifest_continued(photos: Path, milestone: Path) -> str:
    """The photo credits of a continued model: its own photo set's, then the milestone's (its encoder
    and UNet were trained on those), unless the milestone's already begin with this set's."""
    own = photos.read_text()
    before = milestone.read_text() if milestone.exists() else ""
    if not before or before.startswith(own):
        return before or own
    return own.rstrip() + "\n\n# The milestone's photos (its encoder and UNet, which this model continues, saw these)\n\n" + before


def check_milestone(folder: Path, recipe: Continuation) -> None:
    """Refuse a milestone of another family than the recipe continues: on a fresh checkout the
    shipped folder is the newest model, not this recipe's starting point."""
    family = read_config(folder).name
    if family != recipe.before_family:
        raise SystemExit(
            f"--recipe {recipe.name} continues from {recipe.before} (a {recipe.before_family} model), but {folder} is a "
            f"{family} model. Pass --milestone a copy of {recipe.before}, e.g. from the git history of "
            f"{DEFAULT_OUT} (git log -- {DEFAULT_OUT}), or run the recipe that made {recipe.before} first.")


def main_continued(args: argparse.Namespace, recipe: Continuation) -> None:
    photos, milestone = args.work / "photos-nature", args.work / recipe.milestone
    check_milestone(milestone if (milestone / "config.json").exists() else args.milestone, recipe)
    if not (photos / "manifest.json").exists():
        photoset.main(["--out", str(photos), "--set", "nature"])
    if not (milestone / "config.json").exists():  # before the export overwrites it (--out is often --milestone)
        shutil.copytree(args.milestone, milestone)
    train = [str(photos / "train")]
    ae_run = args.work / recipe.autoencoder
    unet = args.work / recipe.diffusion / "model" if recipe.diffusion else milestone
    if not args.skip_training:
        dec = load_json_config(stage1.AETrainConfig, CONFIGS / recipe.ae_config, [f"init_encoder={milestone}"])
        family = replace(read_config(milestone).autoencoder, decode_pad=0)  # decode_pad: set at export
        if family == stage1.model_config(dec.model).autoencoder:
            # the same family: continue the milestone's decoder as it is (with its decode_pad)
            dec.model, dec.init = str(milestone), str(milestone)
        else:  # a smaller family: its decoder and renderer grown, starting from the same phi
            dec.grow = str(milestone)
        stage1.train(dec, train, ae_run, resume=True, steps=args.decoder_steps)
        if recipe.diffusion:
            dm = load_json_config(stage2.DMTrainConfig, CONFIGS / recipe.dm_config, [f"init={milestone}"])
            stage2.train(dm, milestone, train, unet.parent, resume=True, steps=args.dm_steps)
    export_stages(ae_run / "model", unet, args.out, decode_pad=recipe.decode_pad)
    strips = args.work / recipe.strips
    report = evaluate.main([*evaluation_args(args.out, milestone, photos / "holdout", strips),
                            "--out", str(evaluation_file(args.work, recipe.name))])
    pfids = {}
    for name, label, model in ((recipe.name, f"{recipe.name} (this model)", args.out),
                               (recipe.before, f"{recipe.before} (the milestone)", milestone)):
        pfids[label] = evaluate.main(["--model", str(model), "--data", str(photos / "holdout"), "--fid-data", *train,
                                      "--samples", str(args.samples), "--crops", str(args.crops), "--scales", "256",
                                      "--patch-sizes", "256", "1024", "--grid-sizes", "--no-esrgan", "--detail-size", "0",
                                      "--steps", str(args.sample_steps),
                                      "--out", str(args.work / f"pfid-{name}.json")])  # kept: the card can be rewritten
    pipe = Pipeline.load(args.out)
    pictures(pipe, args.out, seeds=range(16), steps=args.sample_steps)
    strip = sorted(strips.glob("*.png"))[0]
    Image.open(strip).convert("RGB").save(args.out / "strip.jpg", quality=90)
    model_card_continued(args.out, args.work, report, pfids, recipe)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=[*RECIPES, "v1"], default="v3",
                    help="v2, v3: continue from --milestone (see RECIPES); v1: from scratch")
    ap.add_argument("--work", type=Path, default=Path("runs/default"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--milestone", type=Path, default=DEFAULT_OUT, help="v2, v3: the committed model to continue from")
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
    args = ap.parse_args(argv)
    if args.recipe in RECIPES:
        return main_continued(args, RECIPES[args.recipe])
    photos = args.work / "photos"
    if not (photos / "manifest.json").exists():
        photoset.main(["--out", str(photos)])
    if not args.skip_training:
        ae = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu.json", [])
        stage1.train(ae, [str(photos / "train")], args.work / "ae", resume=True, steps=args.ae_steps)
        dec = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_decoder.json",
                               [f"init_encoder={args.work / 'ae' / 'model'}"])
        stage1.train(dec, [str(photos / "train")], args.work / "decoder", resume=True, steps=args.decoder_steps)
        ft = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_finetune.json",
                              [f"init={args.work / 'decoder' / 'model'}"])
        stage1.train(ft, [str(photos / "train")], args.work / "finetune", resume=True, steps=args.finetune_steps)
        dm = load_json_config(stage2.DMTrainConfig, CONFIGS / "dm_cpu.json", [])
        stage2.train(dm, args.work / "finetune" / "model", [str(photos / "train")], args.work / "dm", resume=True,
                     steps=args.dm_steps)
        dm_model = args.work / "dm" / "model"
        zoom = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu_zoom.json",
                                [f"init={dm_model}", f"init_encoder={dm_model}"])
        stage1.train(zoom, [str(photos / "train")], args.work / "zoom", resume=True, steps=args.zoom_steps)
    export(args.work / "dm" / "model", args.out, autoencoder=args.work / "zoom" / "model")
    report = evaluate.main(["--model", str(args.out), "--data", str(photos / "holdout"),
                            "--fid-data", str(photos / "train"), "--samples", str(args.samples),
                            "--crops", str(args.crops), "--steps", str(args.sample_steps), "--refine", str(args.refine),
                            "--out", str(args.work / "evaluation.json")])
    pictures(Pipeline.load(args.out), args.out, steps=args.sample_steps)
    model_card(args.out, args.work, report, args.samples, args.crops)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
