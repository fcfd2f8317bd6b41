"""Stage 2: train the latent diffusion UNet on cached latents of a trained autoencoder.

    python -m training.diffusion --config training/configs/dm_cpu.json --ae runs/ae/model \
        --data photos/train --out runs/dm

First encodes the images once into ``OUT/latents.safetensors`` (with ``repeats`` random square
crops per image for small sets; reused on resume), stores the latents' mean/std in the model
config (the UNet sees normalised latents), then trains with the ε-objective under the authors'
schedule, AdamW, and an EMA of the weights (torch.optim.swa_utils). Writes ``OUT/model``: the
autoencoder plus the EMA UNet, a complete infd model folder. ``init`` (a model folder) starts
from that model's UNet, e.g. to follow a fine-tuned autoencoder's slightly moved latents.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import TensorDataset
from tqdm import tqdm

from infd_core.checkpoint import load_weights, read_config, save_weights, write_config
from infd_core.configs import preset
from infd_core.diffusion import DiffusionConfig, alphas_cumprod, build_unet, q_sample, training_target
from infd_core.pipeline import Pipeline

from .common import (CSVLog, Dist, autocast, chunk_batches, cleanup_distributed, load_json_config, load_state, next_chunk,
                     save_state, setup_distributed, unwrap, wall_time, wrap_ddp)
from .data import ImageFolder, SquareCrops


def ema_update(decay: float):
    """EMA step (``multi_avg_fn`` of :class:`AveragedModel`) with the usual warm-up: the decay after
    ``n`` updates is ``min(decay, (1 + n) / (10 + n))``, so a short run's average is not dominated by
    its first weights (a fixed 0.999 would keep ~20 % of the first 200 steps' weights after 1600)."""

    def update(averaged: list[Tensor], current: list[Tensor], n: Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))  # once per step, not per tensor
        for a, c in zip(averaged, current):
            a.lerp_(c, 1.0 - d)

    return update


@dataclass
class DMTrainConfig:
    """Stage-2 settings; defaults are the authors' (their released FFHQ configuration)."""

    unet: str | dict[str, Any] = "paper"  # preset name (its diffusion part) or DiffusionConfig JSON dict
    batch: int = 48  # per process
    lr: float = 9.6e-5
    weight_decay: float = 0.01
    ema: float = 0.9999
    init: str | None = None  # model folder: start from its (EMA) UNet weights
    steps: int = 600_000
    repeats: int = 1  # latents cached per image (random square crops if crop_scale is set)
    crop_scale: tuple[float, float] | None = None
    hflip: bool = True
    ckpt_every: int = 5000
    log_every: int = 100
    sample_every: int = 5000
    workers: int = 0
    precision: str = "fp32"  # "bf16": autocast the UNet's forward pass (the loss stays fp32; faster on CPUs with AMX: measure)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.crop_scale is not None:
            self.crop_scale = tuple(self.crop_scale)


def diffusion_config(spec: str | dict[str, Any]) -> DiffusionConfig:
    return preset(spec).diffusion if isinstance(spec, str) else DiffusionConfig(**spec)


@torch.no_grad()
def cache_latents(pipe: Pipeline, cfg: DMTrainConfig, data: list[str], path: Path) -> Tensor:
    """Encode every image ``repeats`` times (augmented) once; ``[N, 3, 64, 64]`` saved to ``path``."""
    if path.exists():
        return load_file(str(path))["z"]
    torch.manual_seed(cfg.seed)
    zs = []
    for folder in data:
        crops = SquareCrops(ImageFolder(folder, cache=True), size=pipe.input_size,
                            crop_scale=cfg.crop_scale, hflip=cfg.hflip, repeats=cfg.repeats)
        loader = torch.utils.data.DataLoader(crops, batch_size=16, num_workers=cfg.workers)
        for batch in tqdm(loader, desc=f"encode {folder}", unit="batch"):
            zs.append(pipe.encode(batch["inp"]).cpu())
    z = torch.cat(zs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"z": z.contiguous()}, str(path))
    return z


def train(cfg: DMTrainConfig, ae_dir: Path, data: list[str], out: Path, *, device: str = "cpu", resume: bool = False,
          steps: int | None = None, progress: bool = True) -> dict[str, float]:
    d = setup_distributed(device)
    try:
        return _train(cfg, ae_dir, data, out, d, resume, steps or cfg.steps, progress)
    finally:
        cleanup_distributed()


def _train(cfg: DMTrainConfig, ae_dir: Path, data: list[str], out: Path, d: Dist, resume: bool, total: int,
           progress: bool) -> dict[str, float]:
    ae_pipe = Pipeline.load(ae_dir, device=d.device) if (ae_dir / "config.json").exists() else None
    if ae_pipe is None:
        raise FileNotFoundError(f"{ae_dir}: no autoencoder model folder (run training.autoencoder first)")
    out.mkdir(parents=True, exist_ok=True)
    z = cache_latents(ae_pipe, cfg, data, out / "latents.safetensors") if d.main else None
    if d.world > 1:
        torch.distributed.barrier()
        z = load_file(str(out / "latents.safetensors"))["z"]
    dcfg = diffusion_config(cfg.unet)
    dcfg.latent_mean, dcfg.latent_std = float(z.mean()), float(z.std())
    dcfg.latent_range = (float(z.min()), float(z.max()))
    latents = TensorDataset(dcfg.normalize(z))

    torch.manual_seed(cfg.seed)
    unet = build_unet(dcfg).to(d.device)
    history = {"stage2_init": init_unet(unet, dcfg, Path(cfg.init))} if cfg.init is not None else {}
    ema = AveragedModel(unet, multi_avg_fn=ema_update(cfg.ema), use_buffers=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if resume and (out / "state.pt").exists():
        state = load_state(out / "state.pt")
        load_weights(unet, out / "unet_raw.safetensors")
        load_weights(ema.module, out / "model" / "unet.safetensors")
        ema.n_averaged.fill_(int(state["n_averaged"]))
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    net = wrap_ddp(unet, d)
    abar = alphas_cumprod(dcfg).to(d.device)
    log = CSVLog(out / "log.csv") if d.main else None
    last: dict[str, float] = {}
    bar = tqdm(total=total, initial=step, desc="diffusion", unit="step", disable=not (progress and d.main))
    while step < total:
        chunk, n = next_chunk(step, total, cfg.ckpt_every)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + chunk * 31 + d.rank)
        for (x0,) in chunk_batches(latents, cfg.batch, n, seed=cfg.seed, chunk=chunk, rank=d.rank, workers=0):
            x0 = x0.to(d.device)
            t = torch.randint(0, dcfg.num_train_timesteps, (x0.shape[0],), generator=gen).to(d.device)
            noise = torch.randn(x0.shape, generator=gen).to(d.device)
            target = training_target(x0, noise, t, abar, dcfg.prediction)
            with autocast(d.device, cfg.precision):
                pred = net(q_sample(x0, t, noise, abar), t).sample
            loss = nn.functional.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(unet)
            step += 1
            bar.update(1)
            last = {"loss": loss.item()}
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"non-finite loss at step {step}")
            if log is not None and (step % cfg.log_every == 0 or step == total):
                log.write(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
        if d.main:
            save_checkpoint(out, ae_dir, dcfg, unwrap(net), ema, opt, step, cfg, history)
            if step % cfg.sample_every == 0 or step == total:
                save_samples(out / "model", out / "samples" / f"{step:07d}.png", d.device)
    bar.close()
    return last


def init_unet(unet: nn.Module, dcfg: DiffusionConfig, folder: Path) -> dict[str, Any]:
    """Load the UNet of the model in ``folder`` into ``unet`` (same architecture required); returns
    where it was trained (``{from, steps, seconds}``) for the model's ``meta``."""
    donor = read_config(folder)
    if donor.diffusion is None or donor.diffusion.unet != dcfg.unet:
        raise ValueError(f"{folder} has no diffusion UNet of this architecture to start from")
    load_weights(unet, folder / "unet.safetensors")
    return {"from": str(folder), "steps": donor.meta.get("stage2_steps"), "seconds": donor.meta.get("stage2_seconds")}


def save_checkpoint(out: Path, ae_dir: Path, dcfg: DiffusionConfig, unet: nn.Module, ema: AveragedModel,
                    opt: torch.optim.Optimizer, step: int, cfg: DMTrainConfig, history: dict[str, Any]) -> None:
    mcfg = read_config(ae_dir)
    mcfg.diffusion = dcfg
    mcfg.meta = {**mcfg.meta, **history, "stage2_steps": step, "stage2_seconds": round(wall_time(out / "log.csv")),
                 "stage2_config": dataclasses.asdict(cfg)}
    model = out / "model"
    write_config(model, mcfg)
    if (model / "autoencoder.safetensors").resolve() != (ae_dir / "autoencoder.safetensors").resolve():
        (model / "autoencoder.safetensors").write_bytes((ae_dir / "autoencoder.safetensors").read_bytes())
    save_weights(ema.module, model / "unet.safetensors")
    save_weights(unet, out / "unet_raw.safetensors")
    save_state(out / "state.pt", {"step": step, "opt": opt.state_dict(), "n_averaged": int(ema.n_averaged)})


@torch.no_grad()
def save_samples(model_dir: Path, path: Path, device: torch.device, n: int = 4, steps: int = 50) -> None:
    """A row of ``n`` samples from the EMA model at 256²."""
    pipe = Pipeline.load(model_dir, device=device)
    imgs = [pipe.render(pipe.field(pipe.sample(seed, steps=steps)), 256, 256) for seed in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(imgs, axis=1)).save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file of DMTrainConfig fields (see training/configs/)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    ap.add_argument("--ae", required=True, type=Path, help="autoencoder model folder (stage-1 OUT/model)")
    ap.add_argument("--data", nargs="+", required=True, help="image folder(s) to encode")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int)
    args = ap.parse_args(argv)
    cfg = load_json_config(DMTrainConfig, args.config, args.set)
    print(json.dumps(train(cfg, args.ae, args.data, args.out, device=args.device, resume=args.resume, steps=args.steps)))


if __name__ == "__main__":
    main()
