"""Autoencoder losses, with the real offline VGG16 weights on a real photo."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, filters
from torch import nn

from training.losses import (
    AutoencoderLoss,
    NLayerDiscriminator,
    adaptive_weight,
    hed_weights_path,
    hinge_d_loss,
    hinge_g_loss,
    offline_lpips,
)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC image in [0, 1] → [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None] * 2 - 1


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """skimage's astronaut at 256², [1, 3, 256, 256] in [-1, 1]."""
    return F.interpolate(to_tensor(data.astronaut() / 255.0), size=256, mode="area")


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    hwc = (image[0].permute(1, 2, 0).numpy() + 1) / 2
    return to_tensor(filters.gaussian(hwc, sigma=sigma, channel_axis=-1))


def test_lpips_ranks_blur_and_is_zero_for_identical_images(astronaut):
    net = offline_lpips()
    with torch.no_grad():
        same = net(astronaut, astronaut).item()
        d1, d2, d4 = (net(astronaut, blur(astronaut, s)).item() for s in (1, 2, 4))
    assert abs(same) < 1e-6
    assert 0.01 < d1 < d2 < d4 < 0.5


def test_lpips_is_cached_and_frozen():
    net = offline_lpips("cpu")
    assert offline_lpips(torch.device("cpu")) is net
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_vgg_weights_come_from_the_hed_file():
    convs = [m for m in offline_lpips().net.modules() if isinstance(m, nn.Conv2d)]
    with h5py.File(hed_weights_path(), "r") as h5:
        first = torch.from_numpy(h5["block1/layers/conv2d/vars/0"][()]).permute(3, 2, 0, 1)
        second = torch.from_numpy(h5["block1/layers/conv2d_1/vars/0"][()]).permute(3, 2, 0, 1)
        last_bias = torch.from_numpy(h5["block5/layers/conv2d_2/vars/1"][()])
    assert torch.equal(convs[0].weight, first.flip(1))  # input channels BGR → RGB
    assert torch.equal(convs[1].weight, second)
    assert torch.equal(convs[-1].bias, last_bias)


def test_discriminator_output_shape():
    disc = NLayerDiscriminator()
    assert disc(torch.randn(2, 3, 128, 128)).shape == (2, 1, 14, 14)


def test_hinge_losses_on_hand_made_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (w**2).sum()  # gradient 2w = (2, 4)
    gan = (3 * w).sum()  # gradient (3, 3)
    weight = adaptive_weight(rec, gan, w)
    assert weight.item() == pytest.approx(math.sqrt(20) / (math.sqrt(18) + 1e-4))
    assert not weight.requires_grad
    assert adaptive_weight(rec, gan, w, max_weight=0.5).item() == 0.5


def test_one_step_lowers_reconstruction_loss(astronaut):
    torch.manual_seed(0)
    target = astronaut[:, :, 64:128, 96:160]  # 64² crop of the face
    source = blur(target, 2)
    generator = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1)
    )
    criterion = AutoencoderLoss(discriminator=NLayerDiscriminator(ndf=16))
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))

    def reconstruction_loss() -> float:
        with torch.no_grad():
            pred = generator(source)
            return (F.l1_loss(pred, target) + offline_lpips()(pred, target).mean()).item()

    before = reconstruction_loss()
    loss, log = criterion.generator_loss(
        generator(source), target, torch.tensor(0.0), generator[-1].weight, step=0
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert reconstruction_loss() < before
    assert log["rec"] == pytest.approx(before, rel=1e-5)
    assert log["adaptive_weight"] > 0
    assert set(log) == {"l1", "lpips", "texture", "reg", "rec", "g_loss", "adaptive_weight", "loss"}

    d_loss, d_log = criterion.discriminator_loss(generator(source), target, step=0)
    d_loss.backward()
    assert d_loss.item() > 0 and isinstance(d_log["d_loss"], float)


def test_gan_terms_start_at_disc_start(astronaut):
    generator = nn.Conv2d(3, 3, 3, padding=1)
    criterion = AutoencoderLoss(disc_start=10, discriminator=NLayerDiscriminator(ndf=8))
    crop = astronaut[:, :, :64, :64]
    loss, log = criterion.generator_loss(
        generator(crop), crop, torch.tensor(0.5), generator.weight, step=9
    )
    assert log["adaptive_weight"] == 0.0
    assert loss.item() == pytest.approx(log["rec"] + 0.5)
    d_loss, _ = criterion.discriminator_loss(generator(crop), crop, step=9)
    assert d_loss.item() == 0.0


def test_patch_grams_of_a_known_map() -> None:
    from training.losses import patch_grams

    f = torch.zeros(1, 2, 4, 6)
    f[0, 0] = 1.0  # channel 0 is 1 everywhere, channel 1 is 2 in the right 2x2 window only
    f[0, 1, :2, 4:] = 2.0
    g = patch_grams(f, 2)
    assert g.shape == (1, 6, 2, 2)  # 2 x 3 windows, a remainder-free map
    assert torch.allclose(g[0, 2], torch.tensor([[1.0, 2.0], [2.0, 4.0]]) / 2)  # sum over 4 cells / (C * 4)
    assert torch.allclose(g[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]) / 2)


def test_texture_loss_ranks_blur_and_sees_texture_anywhere():
    from training.losses import texture_loss

    gravel = to_tensor(np.stack([data.gravel() / 255.0] * 3, -1))  # a stationary texture, 512²
    crop = gravel[..., 100:196, 100:196]  # 96²
    zero = texture_loss(crop, crop)
    assert zero.shape == (1,) and zero.item() < 1e-6
    soft, softer = texture_loss(blur(crop, 1), crop).item(), texture_loss(blur(crop, 3), crop).item()
    assert 0 < soft < softer
    # the same texture displaced by half a Gram window scores far closer than its blur: texture, not
    # pixels (an L1 or LPIPS would call the displaced crop as different as any other)
    assert texture_loss(gravel[..., 100:196, 116:212], crop).item() < 0.5 * softer
    pred = blur(crop, 2).requires_grad_(True)
    texture_loss(pred, crop).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_texture_term_applies_to_the_chosen_crops_only(astronaut):
    loss = AutoencoderLoss(disc_start=10**9, texture_weight=1.0)
    target = torch.cat([astronaut[..., :96, :96], astronaut[..., 96:192, 96:192]])
    pred = torch.cat([blur(target[:1], 2), blur(target[1:], 2)])
    last = nn.Parameter(torch.ones(3))
    _, none = loss.generator_loss(pred, target, torch.zeros(()), last, 0, torch.tensor([False, False]))
    _, one = loss.generator_loss(pred, target, torch.zeros(()), last, 0, torch.tensor([True, False]))
    _, both = loss.generator_loss(pred, target, torch.zeros(()), last, 0, None)
    assert none["texture"] == 0 and 0 < one["texture"] < both["texture"]
    assert one["rec"] == pytest.approx(none["rec"] + one["texture"], rel=1e-5)
