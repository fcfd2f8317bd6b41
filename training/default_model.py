"""Retrain the embedded default model from scratch, in one command (resumable):

    python -m training.default_model [--work runs/default] [--out assets/models/infd-cpu-photos]

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
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file, save_file

from infd_core.checkpoint import read_config, write_config
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


def pictures(pipe: Pipeline, out: Path, seeds: range = range(8), zoom_seed: int = 0, steps: int = 50) -> None:
    """``samples.jpg`` (contact sheet, 256² each) and ``zoom.jpg`` (one sample at 512, 1K, 2K, 4K:
    the whole image at 512, then the centre 512² crop of each larger render)."""
    tiles = [pipe.render(pipe.field(pipe.sample(s, steps=steps)), 256, 256) for s in seeds]
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in range(0, len(tiles), 4)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "samples.jpg", quality=90)
    field = pipe.field(pipe.sample(zoom_seed, steps=steps))
    views = []
    for size in (512, 1024, 2048, 4096):
        c = (size - 512) // 2
        views.append(pipe.render(field, size, size, PixelRange(c, c + 512, c, c + 512)))
    Image.fromarray(np.concatenate(views, axis=1)).save(out / "zoom.jpg", quality=90)


CARD = """# infd-cpu-photos — the embedded default model

A small image neural field diffusion model (INFD, Chen et al. 2024) trained **on this project's
2-core CPU machine** from photos that install offline. It is a demo model: it runs interactively
on a CPU and shows the whole pipeline (any-resolution rendering, deep zoom, guidance); it is not
a high-quality generator.

## Status
{status}

## Data
{data}

## Sizes (`cpu` preset)
| part | parameters |
|---|---|
{sizes}

Latent {latent}, φ {phi}×256×256, CLIF renderer width {width} with {blocks} ResNet blocks and
no normalisation (tiles are bit-exact pieces of a whole render){base}, receptive radius {radius} px.
Stored: autoencoder fp32, UNet fp16 ({bytes:.1f} MB in all).

## Training (one command: `python -m training.default_model`)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/default"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
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
