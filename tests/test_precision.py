"""Precision per part: measured once per machine and model, cached, applied part by part."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infd_core import configs, precision
from infd_core.pipeline import Pipeline, bf16_supported
from infd_core.precision import Precision


def test_precision_values_and_names() -> None:
    assert str(Precision.uniform("bf16")) == "bf16" and str(Precision()) == "fp32"
    mixed = Precision(decoder="bf16", renderer="bf16", unet="fp32")
    assert str(mixed) == "decoder bf16, renderer bf16, unet fp32"
    assert mixed.dtype("decoder") is torch.bfloat16 and mixed.dtype("unet") is None
    with pytest.raises(ValueError, match="unet precision"):
        Precision(unet="fp16")
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        Pipeline.from_config(configs.cpu(), precision="half")


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 kernels")
def test_parts_run_in_their_own_precision() -> None:
    mixed = Precision(decoder="fp32", renderer="bf16", unet="fp32")
    pipe = Pipeline.from_config(configs.cpu(), seed=0, precision=mixed)
    exact = Pipeline.from_config(configs.cpu(), seed=0)
    z = torch.randn(1, *pipe.latent_shape, generator=torch.Generator().manual_seed(1))
    a, b = pipe.field(z), exact.field(z)
    assert torch.equal(a.phi.float(), b.phi)  # the decoder ran in fp32
    img, ref = pipe.render(a, 128, 128).astype(float), exact.render(b, 128, 128).astype(float)
    assert 0 < np.abs(img - ref).mean() < 3  # the renderer ran in bf16: close, not equal
    assert pipe.describe()["precision"] == "decoder fp32, renderer bf16, unet fp32"
    assert torch.equal(pipe.sample(0, steps=2), exact.sample(0, steps=2))  # the UNet ran in fp32


def test_auto_measures_once_and_caches(tmp_path, monkeypatch) -> None:
    calls = []
    real = precision.measure

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, reps=1)

    monkeypatch.setattr(precision, "measure", counted)
    pipe = Pipeline.from_config(configs.cpu(), seed=0)
    cache = tmp_path / "precision.json"
    first = precision.auto(pipe.cfg.to_json(), pipe.autoencoder, pipe.unet, pipe.latent_shape, pipe.device, cache)
    again = precision.auto(pipe.cfg.to_json(), pipe.autoencoder, pipe.unet, pipe.latent_shape, pipe.device, cache)
    assert first == again and len(calls) == 1
    (entry,) = json.loads(cache.read_text()).values()
    assert set(entry["seconds"]) == {"decoder", "renderer", "unet"}
    assert all(t["fp32"] > 0 and t["bf16"] > 0 for t in entry["seconds"].values())
    cache.write_text("{broken")  # a damaged cache is measured again, not an error
    again = precision.auto(pipe.cfg.to_json(), pipe.autoencoder, pipe.unet, pipe.latent_shape, pipe.device, cache)
    assert isinstance(again, Precision) and len(calls) == 2
