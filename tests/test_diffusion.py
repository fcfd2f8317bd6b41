"""Schedule and samplers of infd_core.diffusion, on a tiny real UNet2DModel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from infd_core.diffusion import (
    Cancelled,
    DiffusionConfig,
    Step,
    alphas_cumprod,
    build_unet,
    make_scheduler,
    predict_x0,
    q_sample,
    sample,
    training_target,
    unet_eps,
    unet_kwargs,
)

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def cfg() -> DiffusionConfig:
    return DiffusionConfig(unet=unet_kwargs(32, (1, 2), 1, attn_levels=(1,), sample_size=16))


@pytest.fixture(scope="module")
def eps(cfg):
    torch.manual_seed(0)
    return unet_eps(build_unet(cfg).eval(), cfg)


def run(eps, cfg, seed: int = 0, **kw) -> Tensor:
    kw.setdefault("steps", 4)
    return sample(eps, cfg, SHAPE, generator=torch.Generator().manual_seed(seed), **kw)


def test_authors_schedule():
    cfg = DiffusionConfig()
    betas = cfg.betas()
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert betas[0] == 0.0015 and betas[-1] == pytest.approx(0.0195)
    assert np.allclose(np.diff(betas), (0.0195 - 0.0015) / 999)
    sched = make_scheduler(cfg, "ddim")
    assert torch.allclose(sched.alphas_cumprod.float(), alphas_cumprod(cfg))


def test_predict_x0_inverts_q_sample():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    ac = alphas_cumprod(DiffusionConfig())
    t = torch.tensor([500])
    x_t = q_sample(x0, t, noise, ac)
    assert torch.allclose(predict_x0(x_t, noise, ac[500]), x0, atol=1e-4)


@pytest.mark.parametrize("sampler,eta", [("ddim", 1.0), ("ddim", 0.0), ("ddpm", 1.0)])
def test_sampling_is_deterministic_for_a_seed_and_differs_between_seeds(eps, cfg, sampler, eta):
    a = run(eps, cfg, 0, sampler=sampler, eta=eta)
    b = run(eps, cfg, 0, sampler=sampler, eta=eta)
    c = run(eps, cfg, 1, sampler=sampler, eta=eta)
    assert a.shape == SHAPE and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-2


def test_eta_changes_the_result_for_the_same_initial_noise(eps, cfg):
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    stochastic = run(eps, cfg, 0, x_T=x_T, eta=1.0)
    deterministic = run(eps, cfg, 0, x_T=x_T, eta=0.0)
    assert torch.equal(deterministic, run(eps, cfg, 123, x_T=x_T, eta=0.0))  # eta 0: the generator is unused
    assert not torch.equal(stochastic, deterministic)


def test_callback_sees_every_step_in_order(eps, cfg):
    seen: list[Step] = []
    out = run(eps, cfg, steps=5, callback=seen.append)
    assert [s.index for s in seen] == list(range(5))
    assert all(s.total == 5 for s in seen)
    timesteps = [s.timestep for s in seen]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] == 999
    assert all(s.x.shape == s.x0.shape == SHAPE for s in seen)
    assert torch.equal(seen[-1].x, out)


def test_should_stop_cancels_between_steps(eps, cfg):
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    seen: list[Step] = []
    with pytest.raises(Cancelled, match="step 2 of 4"):
        run(eps, cfg, callback=seen.append, should_stop=should_stop)
    assert len(seen) == 2


def test_guidance_correction_is_added(eps, cfg):
    """With one deterministic step, x_0 = DDIM(x_T) + correction exactly."""
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    plain = run(eps, cfg, steps=1, eta=0.0, x_T=x_T)
    shifted = run(eps, cfg, steps=1, eta=0.0, x_T=x_T, guidance=lambda x_t, x0, i, n: torch.full_like(x_t, 0.5))
    assert torch.allclose(shifted, plain + 0.5, atol=1e-6)
    # over several steps the correction changes the trajectory; None means no correction
    assert not torch.allclose(run(eps, cfg, guidance=lambda *a: torch.full(SHAPE, 0.1)), run(eps, cfg))
    assert torch.equal(run(eps, cfg, guidance=lambda *a: None), run(eps, cfg))


def test_guidance_can_differentiate_x0_with_respect_to_x_t(eps, cfg):
    """The hook DPS needs: x0 is a differentiable function of x_t inside the hook."""
    norms: list[float] = []

    def dps(x_t: Tensor, x0: Tensor, step: int, total: int) -> Tensor:
        assert x_t.requires_grad and x0.requires_grad
        (grad,) = torch.autograd.grad(x0.square().sum(), x_t)
        norms.append(grad.norm().item())
        return -0.01 * grad

    out = run(eps, cfg, steps=3, guidance=dps)
    assert len(norms) == 3 and all(n > 0 for n in norms) and not out.requires_grad


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "steps"), ({"steps": 1001}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": "10"}, "steps"),
    ({"eta": -0.1}, "eta"), ({"eta": 1.5}, "eta"), ({"eta": float("nan")}, "eta"),
    ({"sampler": "euler"}, "sampler"),
])
def test_bad_sampler_arguments(eps, cfg, kw, match):
    with pytest.raises(ValueError, match=match):
        run(eps, cfg, **kw)


class Oracle(torch.nn.Module):
    """Stands in for a perfectly trained UNet: returns a fixed answer (the exact training target)."""

    def __init__(self, answer: Tensor):
        super().__init__()
        self.answer = answer

    def forward(self, x: Tensor, t: Tensor):
        return type("Out", (), {"sample": self.answer})()


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_a_perfect_model_of_either_prediction_gives_the_true_noise(prediction):
    """``training_target`` and ``unet_eps`` are inverse: what a UNet learns becomes ε for the samplers."""
    cfg = DiffusionConfig(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([999, 10])
    x_t = q_sample(x0, t, noise, alphas_cumprod(cfg))
    target = training_target(x0, noise, t, alphas_cumprod(cfg), prediction)
    assert torch.equal(target, noise) == (prediction == "epsilon")
    eps = unet_eps(Oracle(target), cfg)(x_t, t)
    assert torch.allclose(eps, noise, atol=1e-4)
    x0_back = torch.stack([predict_x0(x_t[i], eps[i], alphas_cumprod(cfg)[t[i]]) for i in range(2)])
    assert torch.allclose(x0_back[1], x0[1], atol=1e-3)  # at t = 999 the ε-route to x0 amplifies ~200x


def test_latent_range_clamps_every_x0_prediction(cfg):
    torch.manual_seed(0)
    unet = build_unet(cfg).eval()
    free = []
    run(unet_eps(unet, cfg), cfg, callback=lambda s: free.append(s.x0))
    assert max(float(x.abs().max()) for x in free) > 0.5  # the random UNet strays beyond the range below
    ranged = DiffusionConfig(**{**cfg.__dict__, "latent_mean": 0.5, "latent_std": 2.0, "latent_range": [0.0, 1.0]})
    seen = []
    run(unet_eps(unet, ranged), ranged, callback=lambda s: seen.append(s.x0))
    lo, hi = (0.0 - 0.5) / 2.0, (1.0 - 0.5) / 2.0  # the range in the UNet's normalised units
    assert all(float(x.min()) >= lo - 1e-6 and float(x.max()) <= hi + 1e-6 for x in seen)


@pytest.mark.parametrize("kw, match", [(dict(prediction="x0"), "prediction"), (dict(latent_range=(1.0, 0.0)), "min < max"),
                                       (dict(eta=1.5), "eta")])
def test_bad_diffusion_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**kw)
