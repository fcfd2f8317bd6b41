"""Training throughput of the `cpu` configs (training/configs/ae_cpu.json, dm_cpu.json) on this machine.

    python bench/training.py [--data runs/default/photos/train] [--steps 40]

Runs each stage for a few steps in a temporary folder with the real training code and data
(autoencoder before and after its discriminator starts, then diffusion on that autoencoder's
latents) and prints iterations/s from the stage's own log (warm-up steps excluded) and the
time a full run of the config's steps would take. Without --data it uses 4 scikit-image photos.
Run it on a quiet machine: another torch process slows every step several times.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infd_bench import matmul_gflops  # noqa: E402
from training import autoencoder as stage1  # noqa: E402
from training import diffusion as stage2  # noqa: E402
from training.common import load_json_config  # noqa: E402
from training.default_model import CONFIGS  # noqa: E402


def rate(log: Path, warmup: int) -> float:
    """Steps per second between logged step ``warmup`` and the last step of ``log`` (log_every=1)."""
    with log.open() as f:
        rows = [(int(r["step"]), float(r["time"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = rows[warmup - 1], rows[-1]
    return (s1 - s0) / (t1 - t0)


def duration(steps: int, per_second: float) -> str:
    minutes = steps / per_second / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def sample_photos(folder: Path) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="photo folder (default: 4 scikit-image photos)")
    ap.add_argument("--steps", type=int, default=40, help="steps per measurement")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# training throughput: torch={torch.__version__} threads={torch.get_num_threads()} load average={load} "
          f"fp32 matmul {matmul_gflops():.0f} GFLOP/s")
    ae_cfg = load_json_config(stage1.AETrainConfig, CONFIGS / "ae_cpu.json", [])
    dm_cfg = load_json_config(stage2.DMTrainConfig, CONFIGS / "dm_cpu.json", [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = str(args.data or sample_photos(root / "photos"))
        common = dict(steps=args.steps, ckpt_every=args.steps, log_every=1, sample_every=10**9)
        rates = {}
        for phase, disc_start in (("autoencoder, L1 + LPIPS", 10**9), ("autoencoder, + GAN", 0)):
            cfg = dataclasses.replace(ae_cfg, disc_start=disc_start, **common)
            stage1.train(cfg, [data], root / phase, progress=False)
            rates[phase] = rate(root / phase / "log.csv", args.warmup)
        cfg = dataclasses.replace(dm_cfg, repeats=1, **common)
        stage2.train(cfg, root / "autoencoder, + GAN" / "model", [data], root / "dm", progress=False)
        rates["diffusion"] = rate(root / "dm" / "log.csv", args.warmup)
    gan_steps = max(0, ae_cfg.steps - ae_cfg.disc_start)
    full = {"autoencoder, L1 + LPIPS": (ae_cfg.steps - gan_steps, ae_cfg.batch),
            "autoencoder, + GAN": (gan_steps, ae_cfg.batch), "diffusion": (dm_cfg.steps, dm_cfg.batch)}
    print("| stage | batch | it/s | images/s | config steps | time for them |")
    print("|---|---|---|---|---|---|")
    for phase, r in rates.items():
        steps, batch = full[phase]
        print(f"| {phase} | {batch} | {r:.2f} | {r * batch:.1f} | {steps} | {duration(steps, r)} |")


if __name__ == "__main__":
    main()
