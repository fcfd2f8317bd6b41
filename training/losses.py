"""Autoencoder training losses: L1 + LPIPS-VGG + regulariser + hinge PatchGAN.

The recipe of the authors (their released training configuration): ``L1 + 1.0 * LPIPS + reg + 0.75 * w * L_gan`` where
``w = ||grad L_rec|| / (||grad L_gan|| + 1e-4)`` on the renderer's last conv weight, clamped
to [0, 1e4], and the discriminator is a 3-layer PatchGAN trained with the hinge loss.

LPIPS-VGG runs on offline weights (:mod:`infd_core.perceptual`).

Images are float tensors ``[B, 3, H, W]``, RGB in [-1, 1], everywhere in this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infd_core.perceptual import HED_PACKAGE, hed_weights_path, offline_lpips

__all__ = ["HED_PACKAGE", "hed_weights_path", "offline_lpips", "NLayerDiscriminator", "hinge_d_loss", "hinge_g_loss",
           "adaptive_weight", "AutoencoderLoss"]


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
    ) -> None:
        super().__init__()
        self.lpips_weight = lpips_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.max_adaptive_weight = max_adaptive_weight
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator()

    def generator_loss(
        self, pred: Tensor, target: Tensor, reg_loss: Tensor, last_layer: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of the autoencoder for rendered ``pred`` and ground truth ``target``.

        ``pred``, ``target``: ``[B, 3, H, W]`` in [-1, 1]; ``reg_loss``: scalar VQ or KL
        term, already weighted; ``last_layer``: weight of the renderer's last conv (for the
        adaptive GAN weight). Returns the scalar loss and a log of plain floats.
        """
        l1 = (pred - target).abs().mean()
        perceptual = offline_lpips(pred.device)(pred, target).mean()
        rec = l1 + self.lpips_weight * perceptual
        g_loss = hinge_g_loss(self.discriminator(pred))
        if step >= self.disc_start:
            weight = adaptive_weight(rec, g_loss, last_layer, self.max_adaptive_weight)
        else:
            weight = pred.new_zeros(())
        loss = rec + reg_loss + self.disc_weight * weight * g_loss
        log = {"l1": l1, "lpips": perceptual, "reg": reg_loss, "rec": rec, "g_loss": g_loss,
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
