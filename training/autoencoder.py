"""Stage 1: train the neural-field autoencoder (E, VQ, D, CLIF) on mixed-resolution images.

    python -m training.autoencoder --config training/configs/ae_cpu.json --data photos/train --out runs/ae
    torchrun --nproc_per_node 4 -m training.autoencoder --config training/configs/ae_ffhq.json ...

Each step: encoder input = whole image at 256²; target = a random P×P crop of the image
randomly downsampled to r×r; prediction = the renderer queried at the crop's pixel centres and
cells (paper §4.1). Loss: L1 + LPIPS + VQ + adaptive hinge GAN (training.losses).

``init`` (a model folder) starts from that model's whole autoencoder, all of it trainable (a
fine-tune: the latents change, so a diffusion model must be retrained on them).
``init_encoder`` (a model folder) loads that model's encoder and freezes it: only the decoder
and renderer train, the latents stay those of that model -- so a diffusion model trained on
them stays valid (the paper's recipe for its Stable Diffusion fine-tune, §5.6). Writes
``OUT/model`` (an infd model folder, autoencoder only), ``OUT/state.pt`` (resume),
``OUT/log.csv`` and ``OUT/samples/*.png``. ``--resume`` continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from infd_core.autoencoder import Autoencoder
from infd_core.checkpoint import load_weights, read_config, save_weights, write_config
from infd_core.configs import ModelConfig, preset
from infd_core.images import to_uint8

from .common import (CSVLog, Dist, autocast, chunk_batches, cleanup_distributed, load_json_config, load_state,
                     next_chunk, save_state, setup_distributed, unwrap, wall_time, wrap_ddp)
from .data import ImageFolder, MixedDataset, NeuralFieldCrops, RandomSquares
from .grow import grow_autoencoder
from .losses import AutoencoderLoss, NLayerDiscriminator


@dataclass
class AETrainConfig:
    """Stage-1 settings; defaults are the authors' (their released FFHQ configuration) except where the cpu preset overrides."""

    model: str | dict[str, Any] = "paper"  # preset name, model folder or a full ModelConfig JSON dict
    batch: int = 8  # per process
    lr: float = 3.6e-5
    lr_final: float | None = None  # cosine decay from lr to this at ``steps`` (None: constant lr)
    betas: tuple[float, float] = (0.5, 0.9)
    patch: int = 256
    min_r: int = 256
    max_r: int = 1024
    p_max: float = 0.5
    crops_per_image: int = 1  # >1: several (level, crop) pairs per encoded image (cheaper signal on CPUs)
    square_crops: tuple[float, float] | None = None  # augment: random square sub-images (fraction of short side)
    mix_weights: list[float] | None = None  # one per --data folder (the paper's "bal." mixing)
    lpips_weight: float = 1.0
    texture_weight: float = 0.0  # > 0: Gram-matrix texture loss (training.losses.texture_loss) on high levels
    texture_min_r: int = 512  # ... on crops of levels r > this (above 2x the 256² encoder input)
    texture_patch: int = 32  # image pixels per Gram window
    disc_weight: float = 0.75
    disc_start: int = 0
    disc_ndf: int = 64
    init: str | None = None  # model folder: start from its autoencoder weights (everything trains)
    init_encoder: str | None = None  # model folder: load its encoder, freeze it (train decoder + renderer)
    grow: str | None = None  # model folder: start from its autoencoder grown into this larger one (training.grow)
    posterior: str = "sample"  # KL only: decode a posterior "sample" (LDM) or the posterior "mean"
    steps: int = 100_000
    ckpt_every: int = 1000
    log_every: int = 50
    sample_every: int = 1000
    workers: int = 2
    cache_images: bool = False
    precision: str = "fp32"  # "bf16": autocast forward passes (3-6x faster on CPUs with AMX, no faster without it: measure)
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.square_crops is not None:
            self.square_crops = tuple(self.square_crops)
        if self.posterior not in ("sample", "mean"):
            raise ValueError(f"posterior must be 'sample' or 'mean', got {self.posterior!r}")


class FieldReconstruction(nn.Module):
    """The training forward pass (one module so DDP sees one call): image + query -> rendered crop.

    ``inp [B, 3, 256, 256]``, ``coord``/``cell [B, P, P, 2]`` -> ``(pred [B, 3, P, P], reg_loss)``;
    with K crops per image, ``coord``/``cell [B, K, P, P, 2]`` -> ``pred [B*K, 3, P, P]`` (image-major).
    """

    def __init__(self, ae: Autoencoder, sample: bool = True):
        super().__init__()
        self.ae, self.sample = ae, sample

    def forward(self, inp: Tensor, coord: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        z, reg = self.ae.regularize(self.ae.encoder_output(inp), sample=self.sample)
        phi = self.ae.features(z)
        if coord.ndim == 5:  # K crops per image: every crop renders from its image's phi
            phi = phi.repeat_interleave(coord.shape[1], dim=0)
            coord, cell = coord.flatten(0, 1), cell.flatten(0, 1)
        return self.ae.renderer(phi, coord, cell), reg


def model_config(spec: str | dict[str, Any]) -> ModelConfig:
    """A preset name, a model folder (its config, e.g. to continue it as it is) or a full config dict."""
    if isinstance(spec, dict):
        return ModelConfig.from_json(spec)
    return read_config(Path(spec)) if Path(spec).is_dir() else preset(spec)


def build_dataset(cfg: AETrainConfig, folders: list[str]) -> MixedDataset:
    sets = []
    for folder in folders:
        images = ImageFolder(folder, min_side=cfg.patch, cache=cfg.cache_images)
        if cfg.square_crops is not None:
            images = RandomSquares(images, cfg.square_crops, min_side=cfg.min_r)
        sets.append(NeuralFieldCrops(images, patch=cfg.patch, min_r=cfg.min_r, max_r=cfg.max_r, p_max=cfg.p_max,
                                     crops=cfg.crops_per_image))
    return MixedDataset(sets, weights=cfg.mix_weights, length=10**9)


def train(cfg: AETrainConfig, data: list[str], out: Path, *, device: str = "cpu", resume: bool = False,
          steps: int | None = None, progress: bool = True) -> dict[str, float]:
    """Train (or resume) to ``steps`` (default ``cfg.steps``); returns the last logged values."""
    d = setup_distributed(device)
    try:
        return _train(cfg, data, out, d, resume, steps or cfg.steps, progress)
    finally:
        cleanup_distributed()


def _train(cfg: AETrainConfig, data: list[str], out: Path, d: Dist, resume: bool, total: int,
           progress: bool) -> dict[str, float]:
    mcfg = model_config(cfg.model)
    mcfg.diffusion = None
    if cfg.posterior == "mean" and mcfg.autoencoder.regularizer != "kl":
        raise ValueError(f"posterior='mean' needs a KL autoencoder, this one is {mcfg.autoencoder.regularizer!r}")
    torch.manual_seed(cfg.seed)
    ae = Autoencoder(mcfg.autoencoder).to(d.device)
    if cfg.init is not None:
        mcfg.meta["init"] = init_autoencoder(ae, Path(cfg.init))
    if cfg.grow is not None:
        mcfg.meta["grown"] = grow_autoencoder_from(ae, Path(cfg.grow))
    if cfg.init_encoder is not None:
        mcfg.meta["encoder"] = freeze_encoder(ae, Path(cfg.init_encoder))
    criterion = AutoencoderLoss(cfg.lpips_weight, cfg.disc_weight, cfg.disc_start,
                                discriminator=NLayerDiscriminator(ndf=cfg.disc_ndf),
                                texture_weight=cfg.texture_weight, texture_patch=cfg.texture_patch).to(d.device)
    opt_g = torch.optim.Adam([p for p in ae.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(criterion.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    if resume and (out / "state.pt").exists():
        state = load_state(out / "state.pt")
        load_weights(ae, out / "model" / "autoencoder.safetensors")
        load_weights(criterion.discriminator, out / "discriminator.safetensors")
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step = int(state["step"])
    net: nn.Module = FieldReconstruction(ae, sample=cfg.posterior == "sample")
    disc: nn.Module = criterion.discriminator
    net, disc = wrap_ddp(net, d), wrap_ddp(disc, d)
    criterion.discriminator = disc
    dataset = build_dataset(cfg, data)
    log = CSVLog(out / "log.csv") if d.main else None
    last: dict[str, float] = {}
    bar = tqdm(total=total, initial=step, desc="autoencoder", unit="step", disable=not (progress and d.main))
    while step < total:
        chunk, n = next_chunk(step, total, cfg.ckpt_every)
        for batch in chunk_batches(dataset, cfg.batch, n, seed=cfg.seed, chunk=chunk, rank=d.rank, workers=cfg.workers):
            set_lr((opt_g, opt_d), cosine_lr(step, total, cfg.lr, cfg.lr_final))
            batch = {k: v.to(d.device) for k, v in batch.items()}
            gt = batch["gt"].flatten(0, 1) if batch["gt"].ndim == 5 else batch["gt"]  # K crops: [B*K, 3, P, P]
            textured = crop_levels(batch["cell"]) > cfg.texture_min_r
            with autocast(d.device, cfg.precision):
                pred, reg = net(batch["inp"], batch["coord"], batch["cell"])
                pred = pred.float()
                g_loss, g_log = criterion.generator_loss(pred, gt, reg, ae.renderer.last_layer, step, textured)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            d_log = {}
            if step >= cfg.disc_start:  # before that the GAN terms are off: skip the discriminator entirely
                with autocast(d.device, cfg.precision):
                    d_loss, d_log = criterion.discriminator_loss(pred, gt, step)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            step += 1
            bar.update(1)
            last = {**g_log, **d_log}
            if not all(math.isfinite(v) for v in last.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {last}")
            if log is not None and (step % cfg.log_every == 0 or step == total):
                log.write(step, last)
                bar.set_postfix(l1=f"{last['l1']:.3f}", lpips=f"{last['lpips']:.3f}")
            if d.main and (step % cfg.sample_every == 0 or step == total):
                save_samples(batch["inp"], gt, pred, out / "samples" / f"{step:07d}.png")
        if d.main:
            save_checkpoint(out, mcfg, ae, unwrap(disc), opt_g, opt_d, step, cfg)
    bar.close()
    return last


def crop_levels(cell: Tensor) -> Tensor:
    """The level ``r`` (side of the whole image it was cut from) of each crop, ``[N]``, from its query
    cells ``[B, P, P, 2]`` or ``[B, K, P, P, 2]`` (image-major, like the predictions): a cell is ``2 / r``."""
    cell = cell.flatten(0, 1) if cell.ndim == 5 else cell
    return (2.0 / cell[:, 0, 0, 0]).round()


def _history(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Where a donor model's autoencoder was trained: ``{from, steps, seconds}`` (the stage-1 run)."""
    return {"from": str(folder), "steps": meta.get("stage1_steps"), "seconds": meta.get("stage1_seconds")}


def init_autoencoder(ae: Autoencoder, folder: Path) -> dict[str, Any]:
    """Load the whole autoencoder of the model in ``folder`` into ``ae`` (same architecture required).

    Returns the donor's history for the model's ``meta``: its stage-1 run plus, if the donor itself
    started from others (``init`` / ``encoder``), those records under ``"before"``."""
    donor_cfg = read_config(folder)
    if donor_cfg.autoencoder != ae.cfg:
        raise ValueError(f"the autoencoder of {folder} differs from this model's: "
                         f"{donor_cfg.autoencoder} vs {ae.cfg}")
    load_weights(ae, folder / "autoencoder.safetensors")
    before = {k: donor_cfg.meta[k] for k in ("init", "encoder") if k in donor_cfg.meta}
    return {**_history(donor_cfg.meta, folder), **({"before": before} if before else {})}


def grow_autoencoder_from(ae: Autoencoder, folder: Path) -> dict[str, Any]:
    """Load the smaller autoencoder of the model in ``folder`` into ``ae``, grown so that it starts
    out computing the same phi (:func:`training.grow.grow_autoencoder`). Returns its history and
    what grew, for the model's ``meta``."""
    donor_cfg = read_config(folder)
    donor = Autoencoder(donor_cfg.autoencoder)
    load_weights(donor, folder / "autoencoder.safetensors")
    return {**_history(donor_cfg.meta, folder), **grow_autoencoder(donor, ae)}


def freeze_encoder(ae: Autoencoder, folder: Path) -> dict[str, Any]:
    """Load the encoder (with its moments conv) of the model in ``folder`` into ``ae`` and freeze it.

    Returns where the encoder was trained (folder, steps, seconds) for the model's ``meta``."""
    donor_cfg = read_config(folder)
    donor = Autoencoder(donor_cfg.autoencoder)
    load_weights(donor, folder / "autoencoder.safetensors")
    try:
        ae.encoder.load_state_dict(donor.encoder.state_dict())
    except RuntimeError as e:
        raise ValueError(f"the encoder of {folder} does not fit this model's encoder: {e}") from None
    ae.encoder.requires_grad_(False)
    return donor_cfg.meta.get("encoder") or _history(donor_cfg.meta, folder)


def cosine_lr(step: int, total: int, lr: float, final: float | None) -> float:
    """Learning rate at ``step`` of ``total``: constant ``lr``, or a cosine from ``lr`` to ``final``."""
    if final is None:
        return lr
    t = min(step / max(total, 1), 1.0)
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * t))


def set_lr(optimizers: tuple[torch.optim.Optimizer, ...], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def save_checkpoint(out: Path, mcfg: ModelConfig, ae: Autoencoder, disc: nn.Module, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer, step: int, cfg: AETrainConfig) -> None:
    mcfg.meta = {**mcfg.meta, "stage1_steps": step, "stage1_seconds": round(wall_time(out / "log.csv")),
                 "stage1_config": dataclasses.asdict(cfg)}
    write_config(out / "model", mcfg)
    save_weights(ae, out / "model" / "autoencoder.safetensors")
    save_weights(disc, out / "discriminator.safetensors")
    save_state(out / "state.pt", {"step": step, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()})


@torch.no_grad()
def save_samples(inp: Tensor, gt: Tensor, pred: Tensor, path: Path) -> None:
    """A strip per crop: encoder input (256², shrunk to the crop size), ground-truth crop, rendered crop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    p, k = pred.shape[-1], pred.shape[0] // inp.shape[0]  # k crops per image, image-major
    rows = []
    for i in range(min(4, pred.shape[0])):
        small = torch.nn.functional.interpolate(inp[i // k:i // k + 1], size=(p, p), mode="area")[0]
        rows.append(torch.cat([small, gt[i], pred[i].detach().clamp(-1, 1)], dim=2))
    Image.fromarray(to_uint8(torch.cat(rows, dim=1))).save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file of AETrainConfig fields (see training/configs/)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    ap.add_argument("--data", nargs="+", required=True, help="image folder(s); several are mixed by mix_weights")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/state.pt if present")
    ap.add_argument("--steps", type=int, help="train until this step (default: config steps)")
    args = ap.parse_args(argv)
    cfg = load_json_config(AETrainConfig, args.config, args.set)
    last = train(cfg, args.data, args.out, device=args.device, resume=args.resume, steps=args.steps)
    print(json.dumps(last))


if __name__ == "__main__":
    main()
