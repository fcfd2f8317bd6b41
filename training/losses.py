"""Autoencoder training losses: L1 + LPIPS-VGG + regulariser + hinge PatchGAN, and a texture loss.

The recipe of the authors (their released training configuration): ``L1 + 1.0 * LPIPS + reg + 0.75 * w * L_gan`` where
``w = ||grad L_rec|| / (||grad L_gan|| + 1e-4)`` on the renderer's last conv weight, clamped
to [0, 1e4], and the discriminator is a 3-layer PatchGAN trained with the hinge loss.

LPIPS-VGG runs on offline weights (:mod:`infd_core.perceptual`).

The texture loss (EnhanceNet, Sajjadi et al. 2017) asks a render to have the photo's local
texture statistics instead of its exact pixels: the Gram matrices of VGG16 feature maps
(``relu1_2``, ``relu2_2``, ``relu3_3``: the first layers of the same offline network) over
non-overlapping patches. Above the latent's own scale a decoder cannot know where each hair or
needle lies; L1 and LPIPS then reward the mean (blur), while matching Gram matrices rewards
texture of the right contrast and grain wherever it lies.

Images are float tensors ``[B, 3, H, W]``, RGB in [-1, 1], everywhere in this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infd_core.perceptual import HED_PACKAGE, hed_weights_path, offline_lpips

__all__ = ["HED_PACKAGE", "hed_weights_path", "offline_lpips", "NLayerDiscriminator", "hinge_d_loss", "hinge_g_loss",
           "adaptive_weight", "patch_grams", "texture_loss", "AutoencoderLoss"]

TEXTURE_LAYERS = 3  # relu1_2, relu2_2, relu3_3 (full, 1/2 and 1/4 resolution)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix / taming-transformers.

    ``[B, in_channels, H, W]`` → logits ``[B, 1, H', W']``; for ``n_layers=3``,
    ``H' = H / 8 - 2`` (30×30 for 256², 14×14 for 128²). Conv biases are dropped before a
    normalisation; ``norm_layer=nn.Identity`` gives a norm-free network. Parameter names
    (``main.*``) match the authors' checkpoints (``disc.main.*``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        use_bias = norm_layer is nn.Identity
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = ndf
        for n in range(1, n_layers + 1):
            out_channels = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); norm scales N(1, 0.02), shifts 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``, a scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator loss of the hinge GAN, ``-mean(logits_fake)``, a scalar."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: Tensor, g_loss: Tensor, last_layer_weight: Tensor, max_weight: float = 1e4
) -> Tensor:
    """``||d rec_loss / dW|| / (||d g_loss / dW|| + 1e-4)`` for ``W = last_layer_weight``.

    Balances the GAN gradient against the reconstruction gradient at the generator's last
    layer (taming-transformers). Both losses are scalars whose graphs are kept; the result
    is a detached scalar clamped to ``[0, max_weight]``.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def vgg_features(x: Tensor, layers: int = TEXTURE_LAYERS) -> list[Tensor]:
    """The first ``layers`` ReLU outputs of the offline VGG16 for images ``[B, 3, H, W]`` in [-1, 1]:
    ``relu1_2 [B, 64, H, W]``, ``relu2_2 [B, 128, H/2, W/2]``, ``relu3_3 [B, 256, H/4, W/4]``."""
    net = offline_lpips(x.device)
    h = net.scaling_layer(x)
    out = []
    for piece in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5)[:layers]:
        h = piece(h)
        out.append(h)
    return out


def patch_grams(features: Tensor, patch: int) -> Tensor:
    """Gram matrices of ``features [B, C, H, W]`` over non-overlapping ``patch``² windows.

    Returns ``[B, N, C, C]`` (``N = (H // patch) * (W // patch)``; a remainder at the right and
    bottom is dropped), each entry ``sum_p f_i(p) f_j(p) / (C * patch²)``.
    """
    b, c, h, w = features.shape
    if h < patch or w < patch:
        raise ValueError(f"a {patch}² patch does not fit in a {w}x{h} feature map")
    f = features[:, :, :h // patch * patch, :w // patch * patch].float()
    f = f.unfold(2, patch, patch).unfold(3, patch, patch)  # [B, C, nh, nw, p, p]
    f = f.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c, patch * patch)
    return f @ f.transpose(-1, -2) / (c * patch * patch)


def texture_loss(pred: Tensor, target: Tensor, patch: int = 32, layers: int = TEXTURE_LAYERS) -> Tensor:
    """Per-image texture distance ``[B]`` between ``pred`` and ``target`` (``[B, 3, H, W]``, [-1, 1]).

    For each VGG layer ``l`` (patch ``patch / 2^l`` feature cells, i.e. ``patch`` image pixels), the
    squared Frobenius distance of the patches' Gram matrices divided by the target's squared norm
    (so each layer counts alike whatever its feature scale), averaged over patches, summed over
    layers. Gradients flow to ``pred``; the target's features are computed without them.
    """
    with torch.no_grad():
        wanted = vgg_features(target, layers)
    got = vgg_features(pred, layers)
    total = pred.new_zeros(pred.shape[0])
    for level, (g, t) in enumerate(zip(got, wanted)):
        cells = max(patch >> level, 1)
        gram_g, gram_t = patch_grams(g, cells), patch_grams(t, cells)
        total = total + ((gram_g - gram_t).square().sum((-1, -2)) / (gram_t.square().sum((-1, -2)) + 1e-8)).mean(1)
    return total


class AutoencoderLoss(nn.Module):
    """The autoencoder objective: L1 + LPIPS + regulariser + adaptively weighted hinge GAN.

    Holds the discriminator (move this module to the training device); LPIPS is the shared
    frozen :func:`offline_lpips` for the device of the images. The GAN terms are active
    from step ``disc_start`` on (the authors use 0).

    Use two optimisers: one over the autoencoder for :meth:`generator_loss`, one over
    ``self.discriminator`` for :meth:`discriminator_loss`. The generator loss also puts
    gradients into the discriminator: zero them before the discriminator's backward.
    """

    def __init__(
        self,
        lpips_weight: float = 1.0,
        disc_weight: float = 0.75,
        disc_start: int = 0,
        max_adaptive_weight: float = 1e4,
        discriminator: nn.Module | None = None,
        texture_weight: float = 0.0,
        texture_patch: int = 32,
    ) -> None:
        super().__init__()
        self.lpips_weight = lpips_weight
        self.texture_weight, self.texture_patch = texture_weight, texture_patch
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.max_adaptive_weight = max_adaptive_weight
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator()

    def generator_loss(
        self, pred: Tensor, target: Tensor, reg_loss: Tensor, last_layer: Tensor, step: int,
        textured: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of the autoencoder for rendered ``pred`` and ground truth ``target``.

        ``pred``, ``target``: ``[B, 3, H, W]`` in [-1, 1]; ``reg_loss``: scalar VQ or KL
        term, already weighted; ``last_layer``: weight of the renderer's last conv (for the
        adaptive GAN weight); ``textured``: ``[B]`` bool, the crops the texture loss applies to
        (with ``texture_weight > 0``; ``None``: all). The texture term is averaged over the whole
        batch, so its weight is per crop whatever the share of textured crops.
        Returns the scalar loss and a log of plain floats.
        """
        l1 = (pred - target).abs().mean()
        perceptual = offline_lpips(pred.device)(pred, target).mean()
        rec = l1 + self.lpips_weight * perceptual
        texture = pred.new_zeros(())
        if self.texture_weight > 0:
            pick = slice(None) if textured is None else textured
            if pred[pick].shape[0]:
                texture = texture_loss(pred[pick], target[pick], self.texture_patch).sum() / pred.shape[0]
            rec = rec + self.texture_weight * texture
        g_loss = hinge_g_loss(self.discriminator(pred))
        if step >= self.disc_start:
            weight = adaptive_weight(rec, g_loss, last_layer, self.max_adaptive_weight)
        else:
            weight = pred.new_zeros(())
        loss = rec + reg_loss + self.disc_weight * weight * g_loss
        log = {"l1": l1, "lpips": perceptual, "texture": texture, "reg": reg_loss, "rec": rec, "g_loss": g_loss,
               "adaptive_weight": weight, "loss": loss}
        return loss, {k: v.item() for k, v in log.items()}

    def discriminator_loss(
        self, pred: Tensor, target: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss of the discriminator on ``target`` (real) and ``pred`` (fake), both
        ``[B, 3, H, W]`` (detached here). Zero before ``disc_start``. Returns the scalar loss
        and a log of plain floats."""
        logits_real = self.discriminator(target.detach())
        logits_fake = self.discriminator(pred.detach())
        factor = 1.0 if step >= self.disc_start else 0.0
        loss = factor * hinge_d_loss(logits_real, logits_fake)
        log = {"d_loss": loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {k: v.item() for k, v in log.items()}
