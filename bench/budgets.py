"""The CPU family's budgets, measured: decoder (latent -> phi) at most 0.5 s per image and a UNet
step at most 150 ms, each in its faster precision; a 256² tile no slower than the v1 family's
renderer in the same precision, timed in the same run.

    python bench/budgets.py [--model DIR] [--reference DIR|cpu] [--reps 5] [--rounds 4]

``--model``: the model under test (default: the shipped one). ``--reference``: the renderer to
compare tiles with (default ``cpu``: the v1 preset, randomly initialised -- weights do not change
the cost). Both are timed interleaved, twice, by :func:`infd_core.precision.measure` (fp32 and
bf16 for decoder, renderer and UNet); the lower of the two rounds counts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import infd_bench  # noqa: F401  (puts the repository on sys.path)
from infd_bench import matmul_gflops
from infd_core import configs
from infd_core.pipeline import Pipeline, default_model_dir
from infd_core.precision import measure

DECODER_S = 0.5
UNET_S = 0.150


def load(spec: str) -> Pipeline:
    if spec in configs.PRESETS:
        return Pipeline.from_config(configs.preset(spec), seed=0)
    return Pipeline.load(Path(spec))


def timings(pipe: Pipeline, reps: int) -> dict[str, dict[str, float]]:
    return measure(pipe.autoencoder, pipe.unet, pipe.latent_shape, pipe.device, reps=reps)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--reference", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4,
                    help="model and reference timed alternately this many times; the best of each counts "
                         "(a shared VM's speed can change 2x between rounds)")
    args = ap.parse_args()
    model, ref = load(args.model), load(args.reference)
    print(f"# budgets: model={args.model} ({model.cfg.name}) reference={args.reference} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} fp32 matmul {matmul_gflops():.0f} GFLOP/s")
    rounds = [(timings(model, args.reps), timings(ref, args.reps)) for _ in range(args.rounds)]  # interleaved
    best = lambda i, part, prec: min(r[i][part][prec] for r in rounds)  # noqa: E731
    rows = []
    dec = min(best(0, "decoder", p) for p in ("fp32", "bf16"))
    rows.append(("decoder, latent -> phi (faster precision)", f"{dec * 1e3:.0f} ms", f"<= {DECODER_S * 1e3:.0f} ms",
                 dec <= DECODER_S))
    for prec in ("fp32", "bf16"):
        t, r = best(0, "renderer", prec), best(1, "renderer", prec)
        rows.append((f"256² tile, {prec}", f"{t * 1e3:.1f} ms", f"<= reference {r * 1e3:.1f} ms ({t / r:.2f}x)",
                     t <= r * 1.05))  # 5 %: the run-to-run noise of a quiet machine
    if model.unet is not None:
        u = min(best(0, "unet", p) for p in ("fp32", "bf16"))
        rows.append(("UNet step (faster precision)", f"{u * 1e3:.0f} ms", f"<= {UNET_S * 1e3:.0f} ms", u <= UNET_S))
    print("| part | measured | budget | holds |\n|---|---:|---|---|")
    for part, measured, budget, ok in rows:
        print(f"| {part} | {measured} | {budget} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
