"""Build the golden fixtures of ``infd_devkit/authors_fixtures.py`` with the authors' own code. Run once.

    git --git-dir=/path/to/mirror/of/yinboc/infd archive HEAD | tar -x -C /tmp/authors-infd
    pip install --target /tmp/authors-pydeps einops tensorboardX protobuf   # their imports
    PYTHONPATH=/tmp/authors-pydeps .venv/bin/python tools/make_authors_fixtures.py --authors /tmp/authors-infd

Their code is imported from that checkout, never copied here. For each model of ``SPECS`` it
builds their ``INFDBase`` (their model without the training losses, whose LPIPS needs
downloaded VGG weights), fills it with :func:`random_weights`, and records their encoder,
decoder, renderer (whole renders at 256², 256×384 and 384²; ``gen_samples``' 256² patches with
8-px padding at 384² and 512²), one UNet forward, and their DDIM sampler at 10 and 200 steps.
The full outputs and checkpoints are also left in the temporary folder; ``--report`` then
compares a fresh import with them on the full tensors and prints the differences (the fixtures
keep only samples of the large ones).
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infd_devkit.authors_fixtures import (DDIM_SEED, FIXTURES, SPECS, random_weights, summarize, test_image,  # noqa: E402
                                    test_latent, unet_inputs, weights_sha256)

WEIGHTS_SEED = 0


def authors_outputs(spec: dict, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything the fixtures record, computed by the authors' code on full tensors."""
    from diffusion.script_util import create_gaussian_diffusion
    from gen_samples import render_output_patchwise
    from models.infd_base import INFDBase
    from utils.geometry import make_coord_cell_grid

    class Model(INFDBase):  # their INFD minus its training losses: INFD.run_renderer calls the renderer so
        def run_renderer(self, z_dec, coord, cell):
            return self.renderer(z_dec=z_dec, coord=coord, cell=cell)

    model = Model(**copy.deepcopy(spec)).eval()
    model.load_state_dict(sd, strict=True)
    side = spec["z_shape"][1]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out["z"] = model.encode_z(test_image())
        latent = test_latent(sd, side)
        phi = model.decode_z(latent)
        out["phi"] = phi
        for h, w in ((256, 256), (256, 384), (384, 384)):
            coord, cell = make_coord_cell_grid((h, w), bs=1)
            out[f"render_{h}x{w}"] = model.renderer(phi, coord, cell)
        for n in (384, 512):
            out[f"patchwise_{n}"] = render_output_patchwise(latent, model, n, 256, 8)
        x, t = unet_inputs(side)
        out["unet_eps"] = model.z_dm_ema(x, t)
        for steps in (10, 200):
            dp = create_gaussian_diffusion(**{**spec["z_dp"], "timestep_respacing": f"ddim{steps}"})
            torch.manual_seed(DDIM_SEED)
            out[f"ddim_{steps}"] = dp.ddim_sample_loop(model.z_dm_ema, (1, 3, side, side), eta=1.0, clip_denoised=False)
    return out


def keep(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of the outputs a fixture stores."""
    kept: dict[str, torch.Tensor] = {}
    for name, x in outputs.items():
        if name in ("z", "unet_eps", "ddim_10", "ddim_200"):
            kept[name] = x.contiguous()
        else:
            kept.update(summarize(name, x, crop=name.startswith("patchwise") or name == "phi"))
    return kept


def ours(pth: Path, spec: dict, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same outputs from infd's import of ``pth`` (no authors' code involved)."""
    from infd_core.authors import import_authors
    from infd_core.diffusion import sample, unet_eps
    from infd_core.geometry import level_grid
    from infd_core.pipeline import Pipeline
    from infd_core.tiling import PixelRange, iter_authors_patches, render_pixels

    with tempfile.TemporaryDirectory() as tmp:
        import_authors(pth, Path(tmp) / "model")
        pipe = Pipeline.load(Path(tmp) / "model")
    side = spec["z_shape"][1]
    renderer, d = pipe.autoencoder.renderer, pipe.cfg.diffusion
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out["z"] = pipe.encode(test_image())
        field = pipe.field(test_latent(sd, side))
        out["phi"] = field.phi
        out["render_256x256"] = render_pixels(renderer, field.phi, 256, 256, PixelRange(0, 256, 0, 256),
                                              norm_stats=field.norm_stats)  # fixed statistics: measured at 256²
        for h, w in ((256, 384), (384, 384)):  # the authors' whole render: statistics of the whole level
            coord, cell = level_grid(h, w)
            out[f"render_{h}x{w}"] = renderer(field.phi, coord[None], cell[None])
        for n in (384, 512):
            img = torch.zeros(1, 3, n, n)
            for rng, rgb in iter_authors_patches(renderer, field.phi, n, n):
                img[..., rng.r0:rng.r1, rng.c0:rng.c1] = rgb
            out[f"patchwise_{n}"] = img
        x, t = unet_inputs(side)
        out["unet_eps"] = pipe.unet(x, t).sample
        for steps in (10, 200):
            out[f"ddim_{steps}"] = sample(unet_eps(pipe.unet, d), d, (1, 3, side, side), steps=steps, eta=1.0,
                                          generator=torch.Generator().manual_seed(DDIM_SEED))
    return out


def report() -> None:
    """Full-tensor differences between the authors' outputs (saved by a build) and infd's import."""
    for name, spec in SPECS.items():
        tmp = Path(tempfile.gettempdir())
        theirs = torch.load(tmp / f"authors-{name}-outputs.pt", weights_only=True)
        pth = tmp / f"authors-{name}.pth"
        mine = ours(pth, spec, torch.load(pth, weights_only=True)["model"]["sd"])
        for key in sorted(theirs):
            a, b = mine[key].float(), theirs[key].float()
            print(f"{name} {key:15s} max |Δ| {(a - b).abs().max().item():.2e}  "
                  f"relative {((a - b).abs().max() / b.abs().max()).item():.2e}  (max |authors'| {b.abs().max().item():.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", required=True, help="checkout of github.com/yinboc/infd (outside this repository)")
    ap.add_argument("--only", choices=sorted(SPECS))
    ap.add_argument("--report", action="store_true", help="compare infd's import with the last build's full outputs")
    args = ap.parse_args()
    if args.report:
        return report()
    authors = Path(args.authors).resolve()
    if ROOT in authors.parents or authors == ROOT:
        sys.exit("keep the authors' checkout outside this repository")
    sys.path.insert(0, str(authors))
    from models.infd_base import INFDBase

    commit = subprocess.run(["git", "-C", str(authors), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit = commit or (authors / "COMMIT").read_text().strip() if (authors / "COMMIT").exists() else commit
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name, spec in SPECS.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(0)  # the authors' constructors draw initial weights; ours replace them all
        keys = [(k, list(v.shape)) for k, v in INFDBase(**copy.deepcopy(spec)).state_dict().items()]
        sd = random_weights(keys, WEIGHTS_SEED)
        outputs = authors_outputs(spec, sd)
        save_file(keep(outputs), str(FIXTURES / f"{name}.safetensors"))
        meta = {"authors_repository": "https://github.com/yinboc/infd", "authors_commit": commit, "spec": spec,
                "seed": WEIGHTS_SEED, "sha256": weights_sha256(sd), "keys": keys}
        (FIXTURES / f"{name}.json").write_text(json.dumps(meta) + "\n")
        torch.save({"model": {"name": "infd", "args": spec, "sd": sd}}, Path(tempfile.gettempdir()) / f"authors-{name}.pth")
        torch.save(outputs, Path(tempfile.gettempdir()) / f"authors-{name}-outputs.pt")
        print(f"{name}: {sum(v.numel() for v in sd.values()) / 1e6:.2f}M parameters, outputs {sorted(outputs)}")


if __name__ == "__main__":
    main()
