"""The embedded model's family (``cpu3``) trained within a wall-clock budget, e.g. 10 minutes on one CUDA GPU:

    python -m training.fast pack --data runs/default/photos-nature/train --out runs/packed   # <= 48 MB of 512² JPEGs
    python -m training.fast train --data runs/packed --out runs/fast --minutes 10 --device cuda

``pack`` turns a photo folder into a small, fast-to-read training set: ``--per-image`` random square
sub-images of each photo (a fraction in ``--scale`` of its short side, so the set keeps close-ups
as well as whole views), resized to ``--size``² (LANCZOS) and stored as JPEG (quality 92), deterministic
for a seed; it stops adding crops when the next one would pass ``--max-mb`` and says so.

``train`` runs the two stages of :mod:`training.default_model`'s continued recipes (a ``cpu3``
decoder + renderer on the milestone's frozen encoder, then the milestone's UNet fine-tuned on the
new latents) with the same presets (``ae_cpu3_decoder.json``, ``dm_cpu2.json``), but sizes each
stage's step count to the budget: a short calibration run measures the seconds per step on this
device (batch sizes from ``--ae-batch`` / ``--dm-batch``: larger on a GPU), then the stage trains ``share x budget / seconds-per-step`` steps, so its cosine schedule ends
when its time does. ``--share`` splits the budget (default: 70 % decoder, 30 % UNet). The model
folder (``OUT/model``) is exported like the default model's (UNet in fp16).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from . import autoencoder as stage1
from . import diffusion as stage2
from .common import load_json_config
from .data import ImageFolder
from .default_model import CONFIGS, DEFAULT_OUT, export_stages

PACK_QUALITY = 92


def pack(data: Path, out: Path, size: int = 512, per_image: int = 6, scale: tuple[float, float] = (0.35, 1.0),
         max_mb: float = 48.0, seed: int = 0) -> dict:
    """Write ``per_image`` random ``size``² crops of every photo of ``data`` to ``out`` (see the module
    docstring); returns the manifest (also written as ``out/pack.json``)."""
    folder = ImageFolder(data)
    paths = folder.paths
    if not paths:
        raise ValueError(f"{data}: no images to pack")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    budget, used, written, skipped = int(max_mb * 1e6), 0, [], 0
    order = [(i, k) for k in range(per_image) for i in range(len(paths))]  # round-robin: a cut budget keeps every photo
    for i, k in order:
        path, img = paths[i], folder[i]
        side = min(img.size)
        s = max(size, round(side * rng.uniform(*scale))) if side > size else side
        x, y = rng.randint(0, img.width - s), rng.randint(0, img.height - s)
        crop = img.crop((x, y, x + s, y + s)).resize((size, size), Image.Resampling.LANCZOS)
        name = out / f"{path.stem}-{k}.jpg"
        crop.save(name, quality=PACK_QUALITY)
        n = name.stat().st_size
        if used + n > budget:
            name.unlink()
            skipped += 1
            continue
        used += n
        written.append(name.name)
    manifest = {"source": str(data), "size": size, "per_image": per_image, "scale": list(scale), "seed": seed,
                "files": len(written), "bytes": used, "skipped_over_budget": skipped}
    (out / "pack.json").write_text(json.dumps(manifest, indent=1))
    if skipped:
        print(f"pack: {skipped} crops left out to stay within {max_mb:g} MB")
    print(f"pack: {len(written)} crops of {size}² from {len(paths)} photos, {used / 1e6:.1f} MB in {out}")
    return manifest


def steps_for(seconds: float, per_step: float, least: int = 10) -> int:
    """Steps that fit ``seconds`` at ``per_step`` seconds each (at least ``least``)."""
    return max(least, int(seconds / per_step))


def calibrate(run: Callable[[int], None], calib: int) -> float:
    """Seconds per step of ``run(total_steps)`` (a resumable run): one cold step, then two resumed
    runs of ``calib`` and ``2 calib`` more steps; their difference cancels the start-up cost."""
    run(1)
    t0 = time.perf_counter()
    run(1 + calib)
    t1 = time.perf_counter()
    run(1 + 3 * calib)
    t2 = time.perf_counter()
    diff = (t2 - t1) - (t1 - t0)
    return diff / calib if diff > 0 else (t2 - t1) / (2 * calib)  # noise beat the difference: an upper bound


def train(data: Path, out: Path, minutes: float, device: str, milestone: Path, share: float = 0.7,
          ae_batch: int | None = None, dm_batch: int | None = None, calib: int = 5,
          ae_set: list[str] = (), dm_set: list[str] = ()) -> Path:
    """The two stages within ``minutes`` of wall time (calibration included); returns ``out/model``.
    ``ae_set`` / ``dm_set``: ``key=value`` overrides of the stages' presets."""
    budget = minutes * 60
    start = time.perf_counter()
    left = lambda: budget - (time.perf_counter() - start)  # noqa: E731
    enc = [f"init_encoder={milestone}", "ckpt_every=1000000", "sample_every=1000000", "log_every=10"]
    ae_over = enc + ([f"batch={ae_batch}"] if ae_batch else []) + list(ae_set)
    dm_over = [f"init={milestone}", "ckpt_every=1000000", "log_every=10"] + ([f"batch={dm_batch}"] if dm_batch else [])
    dm_over += list(dm_set)
    folders = [str(data)]

    def ae_run(steps: int, where: Path, over: list[str]) -> None:
        cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu3_decoder.json",
                               over + [f"steps={steps}", f"disc_start={steps // 2}", "workers=0"])
        stage1.train(cfg, folders, where, device=device, resume=True, steps=steps, progress=False)

    def dm_run(steps: int, where: Path, over: list[str]) -> None:
        cfg = load_json_config(stage2.DMTrainConfig, CONFIGS / "dm_cpu2.json", over + [f"steps={steps}"])
        stage2.train(cfg, milestone, folders, where, device=device, resume=True, steps=steps, progress=False)

    probe = out / "calibration"
    per_ae = calibrate(lambda n: ae_run(n, probe / "ae", ae_over), calib)
    ae_steps = steps_for(share * left() * 0.95, per_ae)
    print(f"decoder: {per_ae:.3f} s/step -> {ae_steps} steps")
    ae_run(ae_steps, out / "decoder", ae_over + [f"steps={ae_steps}"])
    per_dm = calibrate(lambda n: dm_run(n, probe / "dm", dm_over), calib)
    dm_steps = steps_for(left() * 0.9, per_dm)
    print(f"unet: {per_dm:.3f} s/step -> {dm_steps} steps")
    (out / "dm").mkdir(parents=True, exist_ok=True)  # the latents the calibration encoded: the same ones
    shutil.copyfile(probe / "dm" / "latents.safetensors", out / "dm" / "latents.safetensors")
    dm_run(dm_steps, out / "dm", dm_over)
    shutil.rmtree(probe, ignore_errors=True)
    export_stages(out / "decoder" / "model", out / "dm" / "model", out / "model")
    print(f"wrote {out / 'model'} in {(time.perf_counter() - start) / 60:.1f} min (budget {minutes:g})")
    return out / "model"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.fast", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a photo folder into a small set of square JPEG crops")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--per-image", type=int, default=6)
    p.add_argument("--scale", type=float, nargs=2, default=(0.35, 1.0))
    p.add_argument("--max-mb", type=float, default=48.0)
    p.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train the two stages within a wall-clock budget")
    t.add_argument("--data", type=Path, required=True, help="a packed set (or any photo folder)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--device", default="cuda")
    t.add_argument("--milestone", type=Path, default=DEFAULT_OUT, help="the model whose encoder and UNet to start from")
    t.add_argument("--share", type=float, default=0.7, help="part of the budget for the decoder stage")
    t.add_argument("--ae-batch", type=int, default=None, help="decoder-stage batch (default: the preset's)")
    t.add_argument("--dm-batch", type=int, default=None, help="UNet-stage batch (default: the preset's)")
    t.add_argument("--calibration-steps", type=int, default=5)
    t.add_argument("--ae-set", nargs="*", default=[], metavar="KEY=VALUE", help="override decoder-stage settings")
    t.add_argument("--dm-set", nargs="*", default=[], metavar="KEY=VALUE", help="override UNet-stage settings")
    args = ap.parse_args(argv)
    if args.command == "pack":
        if not 0 < args.scale[0] <= args.scale[1] <= 1:
            ap.error("--scale needs 0 < low <= high <= 1")
        pack(args.data, args.out, args.size, args.per_image, tuple(args.scale), args.max_mb, args.seed)
    else:
        if not 0 < args.share < 1:
            ap.error("--share must be between 0 and 1")
        train(args.data, args.out, args.minutes, args.device, args.milestone, args.share, args.ae_batch,
              args.dm_batch, args.calibration_steps, args.ae_set, args.dm_set)


if __name__ == "__main__":
    main()
